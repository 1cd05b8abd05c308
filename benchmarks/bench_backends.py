"""Transport throughput: our producers/consumers against the raw client libraries.

All figures come from one run on a private RabbitMQ node (:mod:`harness.brokers`), with ~323-byte
persistent JSON records, each measurement on a fresh durable queue. Publish figures are
interleaved over several rounds and the median is reported, because the machine is shared.

AMQP section (``amqp_rows``):

- baseline: raw pika ``BlockingChannel.basic_publish`` without confirms (the client-side rate;
  nothing is known to be stored), and for reference raw pika waiting for each confirm;
- ours: ``AMQPProducer.publish_batch`` with batches of 500 and 100 — every message confirmed,
  confirms pipelined per batch. Goal: >= 0.8x the unconfirmed baseline for batches of 500;
- info: the raw unconfirmed publish measured until the broker *stored* every message (queue
  depth), i.e. the broker's own ingestion rate, which bounds any confirmed publisher;
- consume: raw pika (prefetch 1000, ``basic_ack(multiple=True)`` every 500) against
  ``AMQPConsumer.fetch(500)`` + ``ack`` with the same prefetch.

STOMP section (``stomp_rows``): owned by the STOMP backend; same row format.

Run: ``.venv/bin/python -m benchmarks.bench_backends [messages] [rounds]`` (default 10000 3,
about a minute including the broker boot).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from harness.brokers import RabbitMQ
from harness.helpers import unique_name
from mqlogging._ids import new_id
from mqlogging._types import Message
from mqlogging.backends.amqp import AMQPConsumer, AMQPProducer

Row = dict[str, object]


def make_messages(n: int) -> list[Message]:
    """~323-byte ECS-like JSON bodies with their record ids."""
    out = []
    for i in range(n):
        rid = new_id()
        doc = {
            "@timestamp": "2026-11-21T23:49:48.123456Z",
            "log": {"level": "info", "logger": "app.worker"},
            "message": f"processed job {i:08d} in 12.500 ms, ok",
            "event": {"id": rid},
            "host": {"name": "worker-node-017.example.org"},
            "service": {"name": "bench"},
            "process": {"pid": 4242, "thread": {"name": "MainThread"}},
        }
        out.append(Message(rid, json.dumps(doc, separators=(",", ":")).encode()))
    return out


def _row(name: str, value: float, unit: str, bname: str, bvalue: float, goal: str = "") -> Row:
    return {
        "name": name,
        "value": round(value),
        "unit": unit,
        "baseline_name": bname,
        "baseline_value": round(bvalue) if bvalue else "",
        "ratio": round(value / bvalue, 3) if bvalue else "",
        "goal": goal,
    }


# -- AMQP -----------------------------------------------------------------------------------


class _AMQPBench:
    def __init__(self, rabbitmq: RabbitMQ, messages: list[Message]) -> None:
        import pika

        self.pika = pika
        self.rabbitmq = rabbitmq
        self.messages = messages
        self.props = pika.BasicProperties(delivery_mode=2, content_type="application/json")

    def _queue(self) -> str:
        name = unique_name("bench-amqp")
        with self.rabbitmq.amqp_channel() as ch:
            ch.queue_declare(name, durable=True)
        return name

    def _url(self, queue: str, **extra: object) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"exchange": "", "queue": queue, **extra}.items())
        return f"{self.rabbitmq.amqp_url}?{query}"

    def _timed_raw(self, publish: Callable[[Any, str], None], until_stored: bool) -> float:
        queue = self._queue()
        conn = self.pika.BlockingConnection(self.pika.URLParameters(self.rabbitmq.amqp_url))
        try:
            ch = conn.channel()
            start = time.perf_counter()
            publish(ch, queue)
            conn.process_data_events(0)
            if until_stored:
                n = len(self.messages)
                while ch.queue_declare(queue, passive=True).method.message_count < n:
                    pass
            seconds = time.perf_counter() - start
        finally:
            conn.close()
            self.rabbitmq.delete_queue(queue)
        return seconds

    def raw_publish(self, until_stored: bool = False) -> float:
        """Raw pika, no confirms, persistent: the client-side publish rate."""

        def publish(ch: Any, queue: str) -> None:
            for m in self.messages:
                ch.basic_publish("", queue, m.body, self.props)

        return len(self.messages) / self._timed_raw(publish, until_stored)

    def raw_publish_confirm_each(self, n: int) -> float:
        """Raw pika in confirm mode: ``basic_publish`` blocks until each confirm arrives."""
        messages = self.messages[:n]

        def publish(ch: Any, queue: str) -> None:
            ch.confirm_delivery()
            for m in messages:
                ch.basic_publish("", queue, m.body, self.props)

        return n / self._timed_raw(publish, False)

    def ours_publish(self, batch: int) -> float:
        queue = self._queue()
        try:
            with AMQPProducer(self._url(queue)) as producer:
                producer.publish_batch(self.messages[:1])  # connect and declare outside timing
                start = time.perf_counter()
                for i in range(0, len(self.messages), batch):
                    producer.publish_batch(self.messages[i : i + batch])
                seconds = time.perf_counter() - start
            stored = self.rabbitmq.queue_depth(queue)
            assert stored == len(self.messages) + 1, f"{stored} stored"
        finally:
            self.rabbitmq.delete_queue(queue)
        return len(self.messages) / seconds

    def _filled_queue(self) -> str:
        queue = self._queue()
        with AMQPProducer(self._url(queue)) as producer:
            for i in range(0, len(self.messages), 1000):
                producer.publish_batch(self.messages[i : i + 1000])
        return queue

    def raw_consume(self) -> float:
        """Raw pika consumer: prefetch 1000, ack multiple every 500."""
        queue = self._filled_queue()
        n = len(self.messages)
        count = 0
        conn = self.pika.BlockingConnection(self.pika.URLParameters(self.rabbitmq.amqp_url))
        try:
            ch = conn.channel()
            ch.basic_qos(prefetch_count=1000)

            def on_message(ch: Any, method: Any, _props: Any, _body: bytes) -> None:
                nonlocal count
                count += 1
                if count % 500 == 0 or count == n:
                    ch.basic_ack(method.delivery_tag, multiple=True)

            start = time.perf_counter()
            ch.basic_consume(queue, on_message)
            while count < n:
                conn.process_data_events(1.0)
            seconds = time.perf_counter() - start
        finally:
            conn.close()
            self.rabbitmq.delete_queue(queue)
        return n / seconds

    def ours_consume(self) -> float:
        queue = self._filled_queue()
        n = len(self.messages)
        count = 0
        try:
            with AMQPConsumer(self._url(queue, prefetch=1000)) as consumer:
                start = time.perf_counter()
                while count < n:
                    batch = consumer.fetch(500, 1.0)
                    consumer.ack(batch)
                    count += len(batch)
                seconds = time.perf_counter() - start
            assert self.rabbitmq.queue_depth(queue) == 0
        finally:
            self.rabbitmq.delete_queue(queue)
        return n / seconds


def amqp_rows(rabbitmq: RabbitMQ, n: int = 10_000, rounds: int = 3) -> list[Row]:
    """AMQP publish and consume rates, ours against raw pika, medians over ``rounds``."""
    bench = _AMQPBench(rabbitmq, make_messages(n))
    bench.raw_publish()  # warm-up: broker allocations, file handles
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        # Interleaved, so that a noisy neighbour hurts every variant alike.
        for key, fn in (
            ("raw", bench.raw_publish),
            ("b500", lambda: bench.ours_publish(500)),
            ("b100", lambda: bench.ours_publish(100)),
            ("stored", lambda: bench.raw_publish(until_stored=True)),
        ):
            samples.setdefault(key, []).append(fn())
    med = {k: statistics.median(v) for k, v in samples.items()}
    each = bench.raw_publish_confirm_each(min(n, 2000))
    raw_consume = statistics.median(bench.raw_consume() for _ in range(max(1, rounds - 1)))
    ours_consume = statistics.median(bench.ours_consume() for _ in range(max(1, rounds - 1)))
    raw_name = "raw pika publish, no confirms"
    return [
        _row("amqp publish_batch(500), confirmed", med["b500"], "msg/s", raw_name, med["raw"],
             ">= 0.8x baseline"),
        _row("amqp publish_batch(100), confirmed", med["b100"], "msg/s", raw_name, med["raw"]),
        _row("raw pika, confirm per message (ref)", each, "msg/s", raw_name, med["raw"]),
        _row("raw pika no confirms, until stored (info)", med["stored"], "msg/s", raw_name,
             med["raw"]),
        _row("amqp publish_batch(500) vs broker ingest", med["b500"], "msg/s",
             "raw pika no confirms, until stored", med["stored"]),
        _row("amqp fetch(500)+ack, prefetch 1000", ours_consume, "msg/s",
             "raw pika consume, ack multiple/500", raw_consume, ">= 0.8x baseline"),
    ]  # fmt: skip


# -- STOMP ----------------------------------------------------------------------------------


class _StompBench:
    """Raw stomp.py against ``STOMPProducer``/``STOMPConsumer`` on one broker.

    ``stomp_url`` is the broker's ``stomp://user:pass@host:port`` (no destination).
    """

    def __init__(
        self, stomp_url: str, messages: list[Message], cleanup: Callable[[str], None]
    ) -> None:
        import stomp

        self.stomp = stomp
        self.url = stomp_url
        rest = stomp_url.split("://", 1)[1]
        creds, _, hostport = rest.rpartition("@")
        self.user, _, self.password = creds.partition(":")
        host, _, port = hostport.partition(":")
        self.host_port = (host, int(port))
        self.messages = messages
        self.cleanup = cleanup  # drop a queue (and its messages) after a measurement

    def _conn(self, listener: Any = None) -> Any:
        conn = self.stomp.StompConnection12([self.host_port], vhost="/", auto_decode=False)
        if listener is not None:
            conn.set_listener("bench", listener)
        conn.connect(self.user, self.password, wait=True)
        return conn

    def raw_publish(self, *, receipt_each: bool = False, until_stored: bool = False,
                    n: int | None = None) -> float:  # fmt: skip
        """Raw ``conn.send`` with ``persistent:true``; no receipts unless ``receipt_each``.

        ``until_stored`` adds one final SEND with a receipt and stops the clock when it comes:
        the broker's own persistent ingestion rate, which bounds any confirmed publisher.
        """
        import threading

        messages = self.messages[: n or len(self.messages)]
        queue = unique_name("bench-stomp")
        dest = f"/queue/{queue}"
        receipts: set[str] = set()
        cond = threading.Condition()

        class Listener:
            def on_receipt(self, frame: Any) -> None:
                with cond:
                    receipts.add(frame.headers["receipt-id"])
                    cond.notify_all()

        def wait_receipt(rid: str) -> None:
            with cond:
                if not cond.wait_for(lambda: rid in receipts, 60):
                    raise RuntimeError(f"no receipt {rid}")

        conn = self._conn(Listener())
        try:
            start = time.perf_counter()
            for i, m in enumerate(messages):
                headers = {"persistent": "true", "mqlogging-id": m.id}
                if receipt_each:
                    headers["receipt"] = f"r{i}"
                conn.send(dest, m.body, content_type="application/json", headers=headers)
                if receipt_each:
                    wait_receipt(f"r{i}")
            if until_stored:
                conn.send(dest, b"{}", headers={"persistent": "true", "receipt": "last"})
                wait_receipt("last")
            seconds = time.perf_counter() - start
        finally:
            conn.disconnect()
            self.cleanup(queue)
        return len(messages) / seconds

    def ours_publish(self, batch: int) -> float:
        from mqlogging.backends.stomp import STOMPProducer

        queue = unique_name("bench-stomp")
        try:
            with STOMPProducer(f"{self.url}/queue/{queue}?timeout=30") as producer:
                producer.publish_batch(self.messages[:1])  # connect outside the timing
                start = time.perf_counter()
                for i in range(0, len(self.messages), batch):
                    producer.publish_batch(self.messages[i : i + batch])
                seconds = time.perf_counter() - start
        finally:
            self.cleanup(queue)
        return len(self.messages) / seconds

    def _filled_queue(self) -> str:
        from mqlogging.backends.stomp import STOMPProducer

        queue = unique_name("bench-stomp")
        with STOMPProducer(f"{self.url}/queue/{queue}?timeout=30") as producer:
            for i in range(0, len(self.messages), 1000):
                producer.publish_batch(self.messages[i : i + 1000])
        return queue

    def raw_consume(self) -> float:
        """Raw stomp.py: ``ack:client-individual``, prefetch 1000, ACK per message from the
        listener (the usual stomp.py idiom)."""
        import threading

        queue = self._filled_queue()
        n = len(self.messages)
        done = threading.Event()
        count = 0

        class Listener:
            def on_message(self, frame: Any) -> None:
                nonlocal count
                bench_conn.ack(frame.headers["ack"])
                count += 1
                if count == n:
                    done.set()

        bench_conn = self._conn(Listener())
        try:
            start = time.perf_counter()
            bench_conn.subscribe(f"/queue/{queue}", "s", ack="client-individual",
                                 headers={"prefetch-count": "1000",
                                          "activemq.prefetchSize": "1000"})  # fmt: skip
            if not done.wait(120):
                raise RuntimeError(f"raw consumer got {count} of {n}")
            seconds = time.perf_counter() - start
        finally:
            bench_conn.disconnect()
            self.cleanup(queue)
        return n / seconds

    def ours_consume(self) -> float:
        from mqlogging.backends.stomp import STOMPConsumer

        queue = self._filled_queue()
        n = len(self.messages)
        count = 0
        try:
            with STOMPConsumer(f"{self.url}/queue/{queue}?prefetch=1000&timeout=30") as consumer:
                start = time.perf_counter()
                while count < n:
                    batch = consumer.fetch(500, 1.0)
                    consumer.ack(batch)
                    count += len(batch)
                seconds = time.perf_counter() - start
        finally:
            self.cleanup(queue)
        return n / seconds


def _activemq_drain(stomp_url: str) -> Callable[[str], None]:
    """ActiveMQ has no purge over STOMP: drain a benchmark queue completely (cumulative acks),
    so that the 256 MB broker does not fill up and throttle the next measurement with producer
    flow control (it then stops reading the socket, and receipts stop coming)."""

    def drain(queue: str) -> None:
        from mqlogging.backends.stomp import STOMPConsumer

        url = f"{stomp_url}/queue/{queue}?prefetch=1000&ack=client&timeout=30"
        with STOMPConsumer(url) as consumer:
            idle_until = time.monotonic() + 3.0  # the broker may still be storing a backlog
            while time.monotonic() < idle_until:
                batch = consumer.fetch(1000, 0.5)
                if batch:
                    consumer.ack(batch[-1:])  # cumulative: acks the whole fetched prefix
                    idle_until = time.monotonic() + 3.0

    return drain


def _stomp_broker_rows(label: str, bench: _StompBench, rounds: int, n: int) -> list[Row]:
    samples: dict[str, list[float]] = {}
    bench.raw_publish(n=min(n, 2000))  # warm-up
    for _ in range(rounds):
        for key, fn in (
            ("raw", bench.raw_publish),
            ("b500", lambda: bench.ours_publish(500)),
            ("stored", lambda: bench.raw_publish(until_stored=True)),
        ):
            samples.setdefault(key, []).append(fn())
    med = {k: statistics.median(v) for k, v in samples.items()}
    each = bench.raw_publish(receipt_each=True, n=min(n, 1000))
    raw_consume = statistics.median(bench.raw_consume() for _ in range(max(1, rounds - 1)))
    ours_consume = statistics.median(bench.ours_consume() for _ in range(max(1, rounds - 1)))
    raw_name = f"raw stomp.py {label}, no receipts"
    stored_name = f"raw stomp.py {label}, until stored"
    return [
        _row(f"stomp {label} publish_batch(500), receipt", med["b500"], "msg/s", raw_name,
             med["raw"], ">= 0.8x baseline"),
        _row(f"raw stomp.py {label}, receipt per msg (ref)", each, "msg/s", raw_name, med["raw"]),
        _row(f"raw stomp.py {label}, until stored (info)", med["stored"], "msg/s", raw_name,
             med["raw"]),
        _row(f"stomp {label} publish_batch(500) vs ingest", med["b500"], "msg/s", stored_name,
             med["stored"]),
        _row(f"stomp {label} fetch(500)+ack, prefetch 1000", ours_consume, "msg/s",
             f"raw stomp.py {label} consume, ACK each", raw_consume, ">= 0.8x baseline"),
    ]  # fmt: skip


def stomp_rows(rabbitmq: RabbitMQ, n: int = 10_000, rounds: int = 3) -> list[Row]:
    """STOMP publish and consume rates on RabbitMQ (given) and a private ActiveMQ (started
    here), ours against raw stomp.py, medians over ``rounds``.

    Publish: baseline raw ``conn.send`` without receipts (client-side rate, nothing known to be
    stored); reference: a receipt per message; info: raw sends until a final receipt (the
    broker's persistent ingestion rate); ours: ``STOMPProducer.publish_batch(500)``, confirmed
    by one receipt per batch. Consume: raw stomp.py ``client-individual`` with an ACK per
    message from the listener against ``STOMPConsumer.fetch(500)`` + ``ack`` (one receipt per
    ack call), both with prefetch 1000.
    """
    from harness.brokers import ActiveMQ

    messages = make_messages(n)
    rows = _stomp_broker_rows(
        "RabbitMQ", _StompBench(rabbitmq.stomp_url, messages, rabbitmq.delete_queue), rounds, n
    )
    # Capped: the fixture's ActiveMQ (256 MB heap, default memory limit) stops reading producer
    # sockets (flow control / GC) under repeated 10k-message floods, and receipts then stall.
    n_amq = min(n, 4000)
    with ActiveMQ() as activemq:
        activemq.start()
        drain = _activemq_drain(activemq.stomp_url)
        bench = _StompBench(activemq.stomp_url, messages[:n_amq], drain)
        rows += _stomp_broker_rows("ActiveMQ", bench, rounds, n_amq)
    return rows


# -- driver ---------------------------------------------------------------------------------


def run(n: int = 10_000, rounds: int = 3) -> list[Row]:
    """Start a private RabbitMQ, measure every section, stop it; return the rows."""
    with RabbitMQ() as rabbitmq:
        rabbitmq.start()
        rows = amqp_rows(rabbitmq, n, rounds)
        rows += stomp_rows(rabbitmq, n, rounds)
    return rows


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    rows = run(n, rounds)
    print(f"{'benchmark':44} {'value':>9} {'baseline':>9} {'ratio':>6}  baseline name / goal")
    for r in rows:
        print(
            f"{r['name']!s:44} {r['value']!s:>9} {r['baseline_value']!s:>9} {r['ratio']!s:>6}  "
            f"{r['baseline_name']}{' / ' + str(r['goal']) if r['goal'] else ''}"
        )
    print(
        f"unit: msg/s; {n} messages of ~{len(make_messages(1)[0].body)} bytes, median of {rounds}"
    )


if __name__ == "__main__":
    main()
