"""Packed messages end to end (issue #13): handler or producer -> real broker -> collector ->
Elasticsearch stand-in, counted by record id; poison lines and zip bombs; tail; restarts."""

from __future__ import annotations

import gzip
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.collector import BulkStandIn, amqp_queue_url, dataset_for, ecs_record, publish
from harness.helpers import wait_until
from mqlogging._types import Delivery
from mqlogging.backends import TapOptions, UnpackingConsumer, open_consumer, open_tap
from mqlogging.backends.services import create_consumer
from mqlogging.backends.unpacking import Unpacked
from mqlogging.collector.service import CollectorService
from mqlogging.handlers import MQHandler
from mqlogging.packing import CONTENT_TYPE, COUNT_HEADER, UNPACK_ERROR_HEADER
from mqlogging.wire import read_meta

Make = Callable[..., CollectorService]


def _es_sink(url: str, queue: str) -> dict[str, Any]:
    return {"type": "elasticsearch", "hosts": [url], "dataset": dataset_for(queue)}


def _url(broker: Any, transport: str, queue: str, query: str) -> str:
    if transport == "amqp":
        return f"{amqp_queue_url(broker, queue)}&{query}"
    return f"{broker.stomp_url}/queue/{queue}?{query}"


def _dead_letters(directory: Path) -> list[dict[str, Any]]:
    out = []
    for segment in sorted(directory.rglob("*")):
        if segment.is_file() and segment.suffix in (".jsonl", ".open"):
            out.extend(json.loads(line) for line in segment.read_bytes().splitlines() if line)
    return out


@dataclass
class _Ref:
    """A record handed out by ``fetch_unpacked``, as ``ack_records`` takes it."""

    source: Delivery | Unpacked
    index: int


def _refs(entries: list[Delivery | Unpacked]) -> list[_Ref]:
    """One ref per record of what ``fetch_unpacked`` handed out."""
    return [_Ref(e, k) for e in entries for k in range(len(e) if isinstance(e, Unpacked) else 1)]


def _as_delivery(ref: _Ref) -> Delivery:
    source = ref.source
    return source.delivery(ref.index) if isinstance(source, Unpacked) else source


class TestPackedEndToEnd:
    @pytest.mark.parametrize(
        ("transport", "query"),
        [
            ("amqp", "pack=200"),
            ("amqp", "pack=300&compress=gzip"),
            ("stomp", "pack=200&compress=zstd"),
        ],
    )
    def test_records_land_once_each(
        self, rabbitmq: Any, queue_name: str, service: Make, transport: str, query: str
    ) -> None:
        """3,000 records published packed (plain, gzip, zstd; AMQP and STOMP to RabbitMQ)
        land in the Elasticsearch stand-in exactly once each (by record id: lost 0, dup 0),
        and every broker message is acked once all its records are."""
        url = _url(rabbitmq, transport, queue_name, query)
        docs = [ecs_record(i) for i in range(3000)]
        publish(url, docs, batch=1000)
        assert rabbitmq.queue_depth(queue_name) <= 30  # packed: few broker messages
        with BulkStandIn() as es:
            svc = service(sources=[{"url": url}], sinks=[_es_sink(es.url, queue_name)])
            wait_until(lambda: svc.metrics.value("acked") == 3000, timeout=60)
            assert {d["event"]["id"] for d in docs} == set(es.docs)
            assert svc.metrics.value("sink_items", status="ok") == 3000
        wait_until(lambda: rabbitmq.queue_depth(queue_name) == 0, timeout=10)

    def test_activemq_handler_packed(self, activemq: Any, queue_name: str, service: Make) -> None:
        """Records logged through MQHandler with ``pack=100&compress=gzip`` over STOMP to
        ActiveMQ land once each, in order of their sequence numbers."""
        url = _url(activemq, "stomp", queue_name, "pack=100&compress=gzip")
        _log(url, 2000, spool=False)
        with BulkStandIn() as es:
            svc = service(sources=[{"url": url}], sinks=[_es_sink(es.url, queue_name)])
            wait_until(lambda: svc.metrics.value("acked") == 2000, timeout=60)
            seqs = sorted(doc["seq"] for doc in es.docs.values())
        assert list(range(2000)) == seqs

    def test_poison_line_dead_lettered_alone(
        self, rabbitmq: Any, queue_name: str, service: Make, tmp_path: Path
    ) -> None:
        """A line that is not JSON inside a packed message is dead-lettered alone, with its
        own bytes; its siblings land and the message is acked."""
        url = _url(rabbitmq, "amqp", queue_name, "pack=50&compress=gzip")
        good = [ecs_record(i) for i in range(200)]
        publish(url, [*good[:120], b"{not json", *good[120:]])
        dead = tmp_path / "dead"
        with BulkStandIn() as es:
            svc = service(
                sources=[{"url": url}],
                sinks=[_es_sink(es.url, queue_name)],
                dead_letter={"url": f"local://{dead}"},
            )
            wait_until(lambda: svc.metrics.value("acked") == 201, timeout=60)
            assert {d["event"]["id"] for d in good} == set(es.docs)
        assert svc.metrics.value("dead_lettered") == 1
        [letter] = _dead_letters(dead)
        assert "{not json" in json.dumps(letter)
        wait_until(lambda: rabbitmq.queue_depth(queue_name) == 0, timeout=10)

    def test_zip_bomb_dead_lettered_without_harm(
        self, rabbitmq: Any, queue_name: str, service: Make, tmp_path: Path
    ) -> None:
        """A packed message that inflates beyond the reader's limit (64 MiB by default) is
        dead-lettered whole, as it came; the records around it land."""
        url = _url(rabbitmq, "amqp", queue_name, "pack=100")
        before, after = [ecs_record(i) for i in range(100)], [ecs_record(i) for i in range(100)]
        publish(url, before)
        bomb = gzip.compress(b"{}\n" * (30 << 20), compresslevel=1)  # 90 MiB of lines
        with rabbitmq.amqp_channel() as ch:
            ch.basic_publish(
                "",
                queue_name,
                bomb,
                _pika_properties(content_type="application/x-ndjson", content_encoding="gzip"),
            )
        publish(url, after)
        dead = tmp_path / "dead"
        with BulkStandIn() as es:
            svc = service(
                sources=[{"url": url}],
                sinks=[_es_sink(es.url, queue_name)],
                dead_letter={"url": f"local://{dead}"},
            )
            wait_until(lambda: svc.metrics.value("acked") == 201, timeout=60)
            assert {d["event"]["id"] for d in before + after} == set(es.docs)
        [letter] = _dead_letters(dead)
        assert "packed message refused" in json.dumps(letter)

    def test_a_producers_unpack_error_header_is_not_a_refusal(
        self, rabbitmq: Any, queue_name: str, service: Make, tmp_path: Path
    ) -> None:
        """A message that arrives with ``mqlogging-unpack-error`` already set (by a producer:
        only the unpacking reader may set it) but unpacks fine -- packed, or a single record
        -- lands record by record; nothing is dead-lettered."""
        packed, single = [ecs_record(i) for i in range(50)], [ecs_record(i) for i in range(3)]
        spoof = {UNPACK_ERROR_HEADER: "spoofed", COUNT_HEADER: len(packed)}
        url = amqp_queue_url(rabbitmq, queue_name)
        first = ecs_record(0)
        publish(url, [first])  # declares the queue as the collector does
        with rabbitmq.amqp_channel() as ch:
            ch.basic_publish(
                "",
                queue_name,
                b"\n".join(json.dumps(doc).encode() for doc in packed),
                _pika_properties(content_type=CONTENT_TYPE, headers=spoof),
            )
            for doc in single:
                ch.basic_publish(
                    "",
                    queue_name,
                    json.dumps(doc).encode(),
                    _pika_properties(
                        content_type="application/json",
                        headers={UNPACK_ERROR_HEADER: "spoofed"},
                        message_id=doc["event"]["id"],
                    ),
                )
        dead = tmp_path / "dead"
        with BulkStandIn() as es:
            svc = service(
                sources=[{"url": url}],
                sinks=[_es_sink(es.url, queue_name)],
                dead_letter={"url": f"local://{dead}"},
            )
            wait_until(lambda: svc.metrics.value("acked") == 54, timeout=60)
            assert {d["event"]["id"] for d in [first, *packed, *single]} == set(es.docs)
        assert svc.metrics.value("dead_lettered") == 0
        assert _dead_letters(dead) == []
        wait_until(lambda: rabbitmq.queue_depth(queue_name) == 0, timeout=10)


class TestPackedReaders:
    def test_tail_shows_single_records(self, rabbitmq: Any, queue_name: str) -> None:
        """A tap (what ``mqlogging tail`` reads) shows each record of a packed message."""
        exchange = f"x-{queue_name}"
        url = f"{rabbitmq.amqp_url}?exchange={exchange}&queue={queue_name}&pack=20&compress=zstd"
        docs = [ecs_record(i) for i in range(50)]
        with open_tap(url, TapOptions()) as tap:
            publish(url, docs)
            bodies: list[bytes] = []
            wait_until(lambda: bool(bodies.extend(tap.poll(0.2))) or len(bodies) >= 50, 20)
        assert [d["event"]["id"] for d in docs] == [read_meta(json.loads(b)).id for b in bodies]

    def test_consumer_api_gets_single_records_and_acks_per_message(
        self, rabbitmq: Any, queue_name: str
    ) -> None:
        """Through UnpackingConsumer a packed message is one delivery per record; it is acked
        at the broker only once all its records are, and requeued whole if one is nacked;
        when it comes back, this reader hands out only the record it nacked (the others
        were done)."""
        url = _url(rabbitmq, "amqp", queue_name, "pack=10")
        publish(url, [ecs_record(i) for i in range(20)])
        with UnpackingConsumer(open_consumer(url)) as consumer:
            got = []
            wait_until(lambda: bool(got.extend(consumer.fetch(20, 0.2))) or len(got) == 20, 20)
            consumer.ack(got[:15])  # the first message is done, the second half done
            consumer.nack(got[15:16])
            consumer.ack(got[16:])
            again: list[Any] = []
            wait_until(lambda: bool(again.extend(consumer.fetch(20, 0.2))) or len(again) == 1, 20)
            assert [d.body for d in got[15:16]] == [d.body for d in again]
            assert all(d.redelivered for d in again)
            consumer.ack(again)
        wait_until(lambda: rabbitmq.queue_depth(queue_name) == 0, timeout=10)

    def test_fetch_unpacked_hands_out_what_fetch_does(self, rabbitmq: Any, queue_name: str) -> None:
        """``fetch_unpacked`` (the collector's cheaper read, no Delivery per record) hands out
        the records ``fetch`` does, in order, cut where a fetch's count ends (7 at a time over
        messages of 10): each record's id, body and headers are those of the delivery
        ``fetch`` makes of it (another reader's, after a requeue), and ``ack_records`` /
        ``nack_records`` settle them by the same rules: the message holding the one nacked
        record comes back with only that record, the rest are acked at the broker."""
        url = _url(rabbitmq, "amqp", queue_name, "pack=10")
        publish(url, [ecs_record(i) for i in range(25)])
        with UnpackingConsumer(open_consumer(url)) as consumer:
            refs: list[_Ref] = []

            def take() -> bool:
                entries = consumer.fetch_unpacked(7, 0.2)
                assert sum(len(e) if isinstance(e, Unpacked) else 1 for e in entries) <= 7
                refs.extend(_refs(entries))
                return len(refs) >= 25

            wait_until(take, 20)
            records = [_as_delivery(r) for r in refs]
            consumer.nack_records(refs, requeue=True)  # all back, for the plain reader below
        with UnpackingConsumer(open_consumer(url)) as consumer:
            plain: list[Any] = []
            wait_until(lambda: bool(plain.extend(consumer.fetch(25, 0.2))) or len(plain) == 25, 20)
            consumer.nack(plain)
        assert [(d.id, d.body, dict(d.headers)) for d in plain] == [
            (d.id, d.body, dict(d.headers)) for d in records
        ]
        with UnpackingConsumer(open_consumer(url)) as consumer:
            refs = []
            wait_until(take, 20)
            consumer.ack_records(refs[:12] + refs[13:])
            consumer.nack_records(refs[12:13])
            again: list[_Ref] = []

            def take_again() -> bool:
                entries = consumer.fetch_unpacked(25, 0.2)
                again.extend(_refs(entries))
                return len(again) >= 1

            wait_until(take_again, 20)
            assert [_as_delivery(refs[12]).body] == [_as_delivery(r).body for r in again]
            assert _as_delivery(again[0]).redelivered
            consumer.ack_records(again)
        wait_until(lambda: rabbitmq.queue_depth(queue_name) == 0, timeout=10)

    def test_window_follows_records_not_messages(self, rabbitmq: Any, queue_name: str) -> None:
        """A window of 1,000 records over packed messages of 100 records is about 10 messages:
        after the first fetches the broker keeps the rest of a 50-message queue (ready), rather
        than pushing all 5,000 records to this consumer."""
        url = _url(rabbitmq, "amqp", queue_name, "pack=100&prefetch=1000")
        publish(url, [ecs_record(i) for i in range(5000)], batch=1000)
        with UnpackingConsumer(open_consumer(url)) as consumer:
            got: list[Any] = []
            wait_until(lambda: bool(got.extend(consumer.fetch(100, 0.2))) or len(got) >= 200, 20)
            wait_until(lambda: rabbitmq.queue_depth(queue_name) >= 30, timeout=10)
            consumer.ack(got)

    def test_nothing_pushed_before_the_records_per_message_are_known(
        self, rabbitmq: Any, queue_name: str
    ) -> None:
        """Before its first delivery a reader cannot know how many records a message holds,
        so it takes one message, not a window of 1,000 (which over packed messages of 100
        records pushed the whole 50-message queue, 5,000 records, to it at once, to be
        handed back to the broker on the first fetch and come again flagged redelivered)."""
        url = _url(rabbitmq, "amqp", queue_name, "pack=100&prefetch=1000")
        publish(url, [ecs_record(i) for i in range(5000)], batch=1000)
        got: list[Any] = []
        with UnpackingConsumer(open_consumer(url)) as consumer:
            consumer.set_window(1000)  # in records, as the collector asks
            wait_until(lambda: bool(got.extend(consumer.fetch(100, 0.2))) or len(got) >= 100, 20)
            assert rabbitmq.queue_depth(queue_name) >= 30
            consumer.ack(got)

            def more() -> bool:
                batch = consumer.fetch(500, 0.2)
                consumer.ack(batch)
                got.extend(batch)
                return len(got) >= 5000

            wait_until(more, 20)
        assert len(got) == 5000
        assert not [d for d in got if d.redelivered]

    def test_activemq_requeue_keeps_a_packed_message_whole(
        self, activemq: Any, queue_name: str
    ) -> None:
        """On ActiveMQ a requeue re-sends a copy of the message: a packed, compressed one comes
        back with its encoding and count, so its records read the same the second time (by
        another reader: all of them; by the one that requeued it: the record it nacked)."""
        url = _url(activemq, "stomp", queue_name, "pack=10&compress=gzip")
        publish(url, [ecs_record(i) for i in range(20)])
        with UnpackingConsumer(open_consumer(url)) as consumer:
            first: list[Any] = []
            wait_until(lambda: bool(first.extend(consumer.fetch(20, 0.2))) or len(first) == 20, 20)
            consumer.ack(first[:9] + first[10:19])
            consumer.nack([first[9], first[19]])  # both messages requeued
            again: list[Any] = []
            wait_until(lambda: bool(again.extend(consumer.fetch(10, 0.2))) or len(again) == 1, 20)
            consumer.ack(again)  # one of the two; the other goes to the next reader
        with UnpackingConsumer(open_consumer(url)) as consumer:
            other: list[Any] = []
            wait_until(lambda: bool(other.extend(consumer.fetch(10, 0.2))) or len(other) == 10, 20)
            consumer.ack(other)
        assert len(again) == 1
        assert again[0].body in (first[9].body, first[19].body)
        rest = first[:10] if again[0].body == first[19].body else first[10:]
        assert [d.body for d in rest] == [d.body for d in other]


class TestPackedFaults:
    def test_fan_out_retries_only_the_sink_that_lacks_them(
        self, rabbitmq: Any, queue_name: str, service: Make, tmp_path: Path
    ) -> None:
        """Packed records fanned out to a file and to a ``_bulk`` peer that answers its first
        requests with 503: they are retried to the peer only (the file gets each record
        once), and every message is acked once both sinks have all its records."""

        def fault(request: int, item: int) -> int | None:
            return 503 if request <= 3 and item == -1 else None

        url = _url(rabbitmq, "amqp", queue_name, "pack=100")
        docs = [ecs_record(i) for i in range(1000)]
        publish(url, docs)
        path = tmp_path / "out.jsonl"
        with BulkStandIn(fault) as es:
            svc = service(
                sources=[{"url": url}],
                sinks=[
                    {"type": "file", "path": str(path), "name": "file"},
                    _es_sink(es.url, queue_name),
                ],
                pipeline={"batch_max_count": 300, "retry_initial": 0.05, "retry_max": 0.2},
            )
            wait_until(lambda: svc.metrics.value("acked") == 1000, timeout=30)
            assert {d["event"]["id"] for d in docs} == set(es.docs)
            assert svc.metrics.value("sink_items", status="503") > 0
        ids = [json.loads(line)["event"]["id"] for line in path.read_text().splitlines()]
        assert sorted(d["event"]["id"] for d in docs) == sorted(ids)
        assert svc.metrics.value("retried", sink="file") == 0
        assert svc.metrics.value("retried") > 0
        assert rabbitmq.queue_depth(queue_name) == 0

    def test_broker_restarted_mid_stream(
        self, rabbitmq: Any, queue_name: str, service: Make, tmp_path: Path
    ) -> None:
        """RabbitMQ is killed in the middle of a stream of 10,000 records from a handler with
        ``pack=200&compress=gzip`` (spool on) and restarted: the records sent meanwhile are
        spooled and replayed packed, and every record lands in the stand-in once (lost 0,
        dup 0 by sequence number)."""
        url = _url(rabbitmq, "amqp", queue_name, "pack=200&compress=gzip")
        handler = MQHandler(
            url, spool=str(tmp_path / "spool"), batch_size=1000, retry_max=1.0,
            close_timeout=60.0, queue_size=20_000,
        )  # fmt: skip
        logger = _logger(queue_name, handler)
        for i in range(3000):
            logger.info("record %d", i, extra={"seq": i})
        assert handler.flush(30)
        rabbitmq.sync_definitions()  # the queue is new: see RabbitMQ.sync_definitions
        rabbitmq.kill()
        for i in range(3000, 10_000):
            logger.info("record %d", i, extra={"seq": i})
        wait_until(lambda: handler.stats()["spooled"] > 0, timeout=30, message="spooled")
        rabbitmq.start()
        assert handler.flush(60)
        [endpoint] = handler.stats()["endpoints"].values()
        assert endpoint["failures"] > 0
        handler.close()
        with BulkStandIn() as es:
            svc = service(sources=[{"url": url}], sinks=[_es_sink(es.url, queue_name)])
            wait_until(lambda: len(es.docs) >= 10_000, timeout=90)
            wait_until(lambda: rabbitmq.queue_depth(queue_name) == 0, timeout=30)
            by_seq = Counter(doc["seq"] for doc in es.docs.values())
        assert set(range(10_000)) == set(by_seq)
        assert all(n == 1 for n in by_seq.values())
        assert svc.metrics.value("dead_lettered") == 0


def _pika_properties(**kwargs: Any) -> Any:
    import pika

    return pika.BasicProperties(delivery_mode=2, **kwargs)


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"packed.{name}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.handlers = [handler]
    return logger


def _log(url: str, count: int, *, spool: bool) -> None:
    handler = MQHandler(url, spool=spool, queue_size=count + 10, close_timeout=60.0)
    logger = _logger(url, handler)
    try:
        for i in range(count):
            logger.info("record number %d", i, extra={"seq": i})
    finally:
        logger.removeHandler(handler)
        handler.close()


class TestConsumerAPIWithPacking:
    @pytest.mark.parametrize("broker", ["rabbitmq", "activemq"])
    def test_poison_record_loops_alone(
        self, broker: str, request: pytest.FixtureRequest, queue_name: str
    ) -> None:
        """A consumer-API callback that always fails on one record of a packed message makes
        the message go round (requeued whole), but its siblings, already done by this
        consumer, are not handed out again each round: only the failing record loops, as it
        would with one record per message (they used to be re-dispatched every round)."""
        server = request.getfixturevalue(broker)
        transport = "amqp" if broker == "rabbitmq" else "stomp"
        url = _url(server, transport, queue_name, "pack=10")
        docs = [ecs_record(i) for i in range(10)]
        publish(url, docs)
        poison = docs[3]["event"]["id"]
        calls: Counter[str] = Counter()

        def callback(headers: Any, message: Any) -> None:
            rid = read_meta(message).id
            calls[rid] += 1
            if rid == poison:
                raise RuntimeError("poison")

        consumer = create_consumer(url, callback)
        try:
            wait_until(lambda: calls[poison] >= 4, timeout=20, message="4 rounds of the poison")
        finally:
            consumer.close()
        assert {d["event"]["id"]: 1 for d in docs if d["event"]["id"] != poison} == {
            rid: n for rid, n in calls.items() if rid != poison
        }

    @pytest.mark.parametrize("transport", ["amqp", "stomp"])
    def test_consumer_api_headers_name_each_record(
        self, transport: str, rabbitmq: Any, queue_name: str
    ) -> None:
        """The consumer API's callback gets, for a record of a packed message, the same
        headers as for a record sent alone: its own id under ``mqlogging-id`` (the packed
        message's id headers describe the message and are not passed on)."""
        url = _url(rabbitmq, transport, queue_name, "pack=5")
        docs = [ecs_record(i) for i in range(10)]
        publish(url, docs)
        seen: list[tuple[Any, str]] = []

        def callback(headers: Any, message: Any) -> None:
            seen.append((headers.get("mqlogging-id"), read_meta(message).id))

        consumer = create_consumer(url, callback)
        try:
            wait_until(lambda: len(seen) >= 10, timeout=20, message="10 callbacks")
        finally:
            consumer.close()
        assert [d["event"]["id"] for d in docs] == [header for header, _ in seen]
        assert [rid for _, rid in seen] == [header for header, _ in seen]

    def test_amqp_packed_content_type_with_parameters(self, rabbitmq: Any, queue_name: str) -> None:
        """Another producer's packed message typed ``application/x-ndjson; charset=utf-8``
        (parameters are legal in a media type) with ``content_encoding=gzip`` is unpacked
        like ours: the encoding is passed on (it was dropped, so the gzip body was read as
        plain lines and refused)."""
        pika = pytest.importorskip("pika")
        url = amqp_queue_url(rabbitmq, queue_name)
        with UnpackingConsumer(open_consumer(url)) as consumer:
            consumer.fetch(1, 0.1)  # declares the queue
            docs = [ecs_record(i) for i in range(3)]
            body = gzip.compress(b"\n".join(json.dumps(d).encode() for d in docs))
            connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.amqp_url))
            try:
                connection.channel().basic_publish(
                    "",
                    queue_name,
                    body,
                    pika.BasicProperties(
                        content_type="application/x-ndjson; charset=utf-8",
                        content_encoding="gzip",
                        headers={"mqlogging-count": 3},
                    ),
                )
            finally:
                connection.close()
            got: list[Any] = []
            wait_until(lambda: bool(got.extend(consumer.fetch(3, 0.2))) or len(got) >= 3, 20)
            consumer.ack(got)
        assert [d["event"]["id"] for d in docs] == [read_meta(json.loads(d.body)).id for d in got]
