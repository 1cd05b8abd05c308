"""Packed against single-record messages: MQHandler records/s per process (issue #13).

Each contender runs in a fresh process: an ``MQHandler`` (spool on, the default durability)
logs ``n`` records with the same ``logger.info`` call in a tight loop and flushes; the figure
is ``n`` over the time from the first call to the last broker confirm. The records are then
counted **at the destination**: the queue is drained through
:class:`~mqlogging.backends.UnpackingConsumer` (what the collector reads through) and each
record id counted once; ``delivered / emitted`` is reported beside the rate, and a contender
that did not deliver every record is marked.

The public entry point is :func:`packed_rows` (``contenders`` picks rows by name, see
:data:`CONTENDERS`); :func:`run` runs them all for ``benchmarks/run.py``.

:func:`producer_rows` measures the publish path alone (``publish_batch`` of pre-formatted
records), which shows what the transport sustains when the caller's formatting is not the limit.

:func:`collector_rows` drains packed messages through the collector (null and file sinks)
against single-record messages.

Run: ``.venv/bin/python -m benchmarks.bench_packed [n] [contender,...] [--producer|--collector]``
(default 50,000 records per contender, every contender).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from harness.brokers import ActiveMQ, RabbitMQ
from harness.collector import REPO
from harness.helpers import unique_name
from mqlogging.backends import UnpackingConsumer, open_consumer
from mqlogging.wire import decode, read_meta

Row = dict[str, object]

CONTENDERS: dict[str, tuple[str, str, str]] = {
    # name: (broker, transport, extra URL query; "" = one record per message)
    "amqp-rabbitmq-single": ("rabbitmq", "amqp", ""),
    "amqp-rabbitmq-packed": ("rabbitmq", "amqp", "pack=500"),
    "amqp-rabbitmq-packed-gzip": ("rabbitmq", "amqp", "pack=500&compress=gzip"),
    "stomp-rabbitmq-single": ("rabbitmq", "stomp", ""),
    "stomp-rabbitmq-packed": ("rabbitmq", "stomp", "pack=500"),
    "stomp-activemq-single": ("activemq", "stomp", ""),
    "stomp-activemq-packed": ("activemq", "stomp", "pack=500"),
}
"""Every contender :func:`packed_rows` knows."""

_CHILD = """
import json, logging, sys, tempfile, time
from mqlogging.handlers import MQHandler
url, n = sys.argv[1], int(sys.argv[2])
spool = tempfile.mkdtemp(prefix="bench-packed-")
handler = MQHandler(url, spool=spool, queue_size=n + 10, batch_size=2000, close_timeout=120)
logger = logging.getLogger("bench.packed")
logger.propagate = False
logger.setLevel(logging.INFO)
logger.addHandler(handler)
logger.info("warm up")
handler.flush(30)
cpu0, t0 = time.process_time(), time.time()
for i in range(n):
    logger.info("job %d done in %.3f ms", i, 12.5, extra={"job": i, "queue": "default"})
emitted = time.time()
ok = handler.flush(300)
t1, cpu1 = time.time(), time.process_time()
stats = handler.stats()
handler.close()
print(json.dumps({"t0": t0, "emitted": emitted, "t1": t1, "cpu": cpu1 - cpu0, "ok": ok,
                  "confirmed": stats["confirmed"], "spooled": stats["spooled"]}))
"""


def _url(broker: RabbitMQ | ActiveMQ, transport: str, queue: str, query: str) -> str:
    if transport == "amqp":
        base = f"{broker.amqp_url}?exchange=&queue={queue}"  # type: ignore[union-attr]
    else:
        base = f"{broker.stomp_url}/queue/{queue}?"
    return f"{base}&{query}" if query else base.rstrip("?")


def _count_at_destination(url: str, expected: int, idle: float = 2.0) -> int:
    """Drain ``url`` and return how many distinct record ids arrived (the warm-up record of
    the child is not counted)."""
    seen: set[str] = set()
    last = time.monotonic()
    with UnpackingConsumer(open_consumer(url, prefetch=2000)) as consumer:
        while time.monotonic() - last < idle:
            batch = consumer.fetch(2000, 0.2)
            if not batch:
                continue
            last = time.monotonic()
            for delivery in batch:
                doc = decode(delivery.body)
                if isinstance(doc, dict) and doc.get("message") != "warm up":
                    seen.add(read_meta(doc).id or delivery.id)
            consumer.ack(batch)
            if len(seen) >= expected:
                idle = 0.3  # all there: only wait for duplicates a little
    return len(seen)


def _one(broker: RabbitMQ | ActiveMQ, name: str, n: int) -> Row:
    _, transport, query = CONTENDERS[name]
    queue = unique_name("bench-packed")
    url = _url(broker, transport, queue, query)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, url, str(n)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    delivered = _count_at_destination(url, n)
    took = figures["t1"] - figures["t0"]
    rate = n / took
    print(
        f"{name}: {n} records confirmed in {took:.2f}s ({rate:,.0f}/s), emit loop "
        f"{figures['emitted'] - figures['t0']:.2f}s, CPU {figures['cpu'] / n * 1e6:.1f} us/record, "
        f"delivered {delivered}/{n}, spooled {figures['spooled']}",
        file=sys.stderr,
    )
    return {
        "name": f"MQHandler {name}: first call to last confirm, counted at destination",
        "value": round(rate),
        "unit": "records/s",
        "baseline_name": "",
        "baseline_value": "",
        "ratio": "",
        "goal": ">= 50,000 records/s" if "packed" in name else "",
        "delivered": delivered,
        "emitted": n,
        "cpu_us_per_record": round(figures["cpu"] / n * 1e6, 2),
    }


def _with_baselines(rows: Sequence[Row], names: Sequence[str]) -> list[Row]:
    """Each packed row gets the single-record row of its transport and broker as baseline."""
    by_name = dict(zip(names, rows, strict=True))
    for name, row in by_name.items():
        single = by_name.get(name.split("-packed")[0] + "-single")
        if single is not None and single is not row:
            row["baseline_name"] = f"single-record messages ({name.split('-packed')[0]})"
            row["baseline_value"] = single["value"]
            row["ratio"] = round(float(row["value"]) / float(single["value"]), 2)  # type: ignore[arg-type]
        if row["delivered"] != row["emitted"]:
            row["goal"] = f"{row['goal']} (DELIVERED {row['delivered']} of {row['emitted']})"
    return list(by_name.values())


def packed_rows(
    contenders: Iterable[str] = tuple(CONTENDERS),
    n: int = 50_000,
    rabbitmq: RabbitMQ | None = None,
    activemq: ActiveMQ | None = None,
) -> list[Row]:
    """Rows for ``contenders`` (names of :data:`CONTENDERS`), each in a fresh process.

    Brokers not given are started privately for the run (and stopped after it). Each row has
    the usual ``name``/``value``/``unit``/``baseline_*``/``ratio``/``goal`` plus ``delivered``,
    ``emitted`` and ``cpu_us_per_record`` (the child process's CPU from first call to last
    confirm, per record).
    """
    names = list(contenders)
    unknown = [c for c in names if c not in CONTENDERS]
    if unknown:
        msg = f"unknown contender {unknown[0]!r} (known: {', '.join(CONTENDERS)})"
        raise ValueError(msg)
    needs = {CONTENDERS[c][0] for c in names}
    own: list[Any] = []
    try:
        if rabbitmq is None and "rabbitmq" in needs:
            rabbitmq = RabbitMQ()
            own.append(rabbitmq)
            rabbitmq.start()
        if activemq is None and "activemq" in needs:
            activemq = ActiveMQ()
            own.append(activemq)
            activemq.start()
        brokers: dict[str, Any] = {"rabbitmq": rabbitmq, "activemq": activemq}
        rows = [_one(brokers[CONTENDERS[c][0]], c, n) for c in names]
    finally:
        for broker in own:
            broker.close()
    return _with_baselines(rows, names)


_PRODUCER_CHILD = """
import json, sys, time
from benchmarks.bench_backends import make_messages
from mqlogging.backends import open_producer
url, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
messages = make_messages(n)
with open_producer(url) as producer:
    producer.publish_batch(messages[:10])
    cpu0, t0 = time.process_time(), time.time()
    for i in range(10, n, batch):
        producer.publish_batch(messages[i:i + batch])
    t1, cpu1 = time.time(), time.process_time()
print(json.dumps({"t0": t0, "t1": t1, "cpu": cpu1 - cpu0, "n": n - 10}))
"""


def producer_rows(
    contenders: Iterable[str] = (
        "amqp-rabbitmq-single",
        "amqp-rabbitmq-packed",
        "stomp-rabbitmq-single",
        "stomp-rabbitmq-packed",
        "stomp-activemq-single",
        "stomp-activemq-packed",
    ),
    n: int = 50_000,
    batch: int = 2000,
    rabbitmq: RabbitMQ | None = None,
    activemq: ActiveMQ | None = None,
) -> list[Row]:
    """The publish path alone: ``Producer.publish_batch`` of pre-formatted ~323-byte records
    in batches of ``batch``, confirmed, in a fresh process; counted at the destination.

    Shows what the transport sustains without the caller's formatting (which bounds the
    handler rows of :func:`packed_rows`). Brokers not given are started for the run.
    """
    names = list(contenders)
    needs = {CONTENDERS[c][0] for c in names}
    own: list[Any] = []
    rows: list[Row] = []
    try:
        if rabbitmq is None and "rabbitmq" in needs:
            rabbitmq = RabbitMQ()
            own.append(rabbitmq)
            rabbitmq.start()
        if activemq is None and "activemq" in needs:
            activemq = ActiveMQ()
            own.append(activemq)
            activemq.start()
        brokers: dict[str, Any] = {"rabbitmq": rabbitmq, "activemq": activemq}
        for name in names:
            broker_name, transport, query = CONTENDERS[name]
            url = _url(brokers[broker_name], transport, unique_name("bench-producer"), query)
            env = dict(os.environ, PYTHONPATH=str(REPO))
            out = subprocess.run(
                [sys.executable, "-c", _PRODUCER_CHILD, url, str(n), str(batch)],
                check=True, capture_output=True, text=True, env=env, timeout=900,
            )  # fmt: skip
            figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
            delivered = _count_at_destination(url, n) - 10
            rate = figures["n"] / (figures["t1"] - figures["t0"])
            rows.append({
                "name": f"publish_batch({batch}) {name}: confirmed, counted at destination",
                "value": round(rate), "unit": "records/s",
                "baseline_name": "", "baseline_value": "", "ratio": "",
                "goal": ">= 50,000 records/s" if "packed" in name else "",
                "delivered": delivered, "emitted": figures["n"],
                "cpu_us_per_record": round(figures["cpu"] / figures["n"] * 1e6, 2),
            })  # fmt: skip
    finally:
        for broker in own:
            broker.close()
    return _with_baselines(rows, names)


def _collector_rate(url: str, n: int, sink: dict[str, Any]) -> float:
    """Records/s of an in-process collector draining ``n`` records from ``url`` into
    ``sink``: from the first delivery to the last record acked. The process's GC is set up as
    ``mqlogging collect`` sets up its own, unless ``MQLOGGING_BENCH_DEFAULT_GC`` is set (see
    :func:`benchmarks.bench_collector.collector_gc`)."""
    from benchmarks.bench_collector import collector_gc, drain_rate
    from mqlogging.collector.config import parse_config
    from mqlogging.collector.service import CollectorService

    config = parse_config(
        {
            "sources": [{"url": url, "prefetch": 2000}],
            "sinks": [sink],
            "pipeline": {"batch_max_count": 1000, "batch_max_wait": 0.2},
            "http": {"listen": ""},
        },
        env={},
    )
    svc = CollectorService(config)
    with collector_gc():
        return drain_rate(svc, n, deadline=time.perf_counter() + 300)


def collector_rows(n: int = 100_000, rabbitmq: RabbitMQ | None = None) -> list[Row]:
    """The collector on packed input (``pack=500``, plain and gzip) into the null sink and a
    file sink, against the same records as single-record messages into the null sink."""
    import tempfile

    from benchmarks.bench_backends import make_messages
    from mqlogging.backends import open_producer

    own = rabbitmq is None
    broker = rabbitmq or RabbitMQ()
    rows: list[Row] = []
    messages = make_messages(n)
    try:
        if own:
            broker.start()
        with tempfile.TemporaryDirectory() as tmp:
            cases = [
                ("single-record -> null sink", "", {"type": "null"}),
                ("packed pack=500 -> null sink", "pack=500", {"type": "null"}),
                ("packed pack=500&compress=gzip -> null sink", "pack=500&compress=gzip",
                 {"type": "null"}),
                ("packed pack=500 -> file sink (fsync per batch)", "pack=500",
                 {"type": "file", "path": f"{tmp}/out.jsonl", "max_bytes": 0}),
            ]  # fmt: skip
            base = 0.0
            for name, query, sink in cases:
                url = _url(broker, "amqp", unique_name("bench-coll"), query)
                with open_producer(url) as producer:
                    for i in range(0, n, 2000):
                        producer.publish_batch(messages[i : i + 2000])
                rate = _collector_rate(url, n, sink)
                base = base or rate
                print(f"collector {name}: {rate:,.0f} records/s", file=sys.stderr)
                rows.append({
                    "name": f"collector, {name}", "value": round(rate), "unit": "records/s",
                    "baseline_name": "collector, single-record -> null sink",
                    "baseline_value": round(base), "ratio": round(rate / base, 2),
                    "goal": ">= 100,000 records/s" if "packed" in name and "null" in name else "",
                    "delivered": n, "emitted": n, "cpu_us_per_record": "",
                })  # fmt: skip
    finally:
        if own:
            broker.close()
    return rows


def run(n: int = 50_000) -> list[Row]:
    """Every contender, handler, publish path and collector (for ``benchmarks/run.py``)."""
    return packed_rows(CONTENDERS, n) + producer_rows(n=n) + collector_rows(2 * n)


def main() -> None:
    flags = {a for a in sys.argv[1:] if a.startswith("--")}
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 50_000
    names = args[1].split(",") if len(args) > 1 else list(CONTENDERS)
    if "--collector" in flags:
        rows = collector_rows(n)
    elif "--producer" in flags:
        rows = producer_rows(names, n)
    else:
        rows = packed_rows(names, n)
    for row in rows:
        print(
            f"{row['name']:<90} {row['value']:>8} {row['unit']}  vs {row['baseline_value']!s:>6} "
            f"x{row['ratio']!s:<5} delivered {row['delivered']}/{row['emitted']} "
            f"cpu {row['cpu_us_per_record']} us/rec"
        )


if __name__ == "__main__":
    main()
