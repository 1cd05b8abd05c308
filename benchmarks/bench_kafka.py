"""Kafka figures on the noida-db stand-in (docs/scaling.md, Kafka): clients, producer, collector.

All against one private noida-db process speaking the Kafka protocol (:mod:`harness.kafka`),
on this machine: stand-in figures, not Apache Kafka's. Records are ECS-shaped, ~400 bytes.

- client comparison: 500-record batches, each confirmed before the next (what
  ``publish_batch`` does), ``acks=all``, idempotence, zstd: confluent-kafka's delivery reports
  against kafka-python's futures;
- ``KafkaProducer.publish_batch`` (mqlogging's producer, 500 per batch, lz4);
- one process logging through ``MQHandler`` to a ``kafka://`` endpoint: from the first
  ``emit()`` until ``flush()`` returned with every record confirmed;
- the collector (in-process :class:`CollectorService`, one Kafka source, 3 partitions) draining
  a pre-filled topic into the null sink and into noida-db's Elasticsearch API: from its first
  delivery to its last ack.

Run: ``.venv/bin/python -m benchmarks.bench_kafka`` (``BENCH_KAFKA_N`` records, default 50000;
``BENCH_KAFKA_ES_N`` for the Elasticsearch run, default 20000).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from harness.brokers import NoidaES
from harness.kafka import NoidaKafka
from mqlogging._ids import new_id
from mqlogging._types import Message
from mqlogging.backends import open_producer
from mqlogging.collector.config import parse_config
from mqlogging.collector.service import CollectorService

N = int(os.environ.get("BENCH_KAFKA_N", "50000"))
ES_N = int(os.environ.get("BENCH_KAFKA_ES_N", "20000"))
BATCH = 500


def _record(i: int, producer: str = "benchhost:1:a") -> Message:
    rid = new_id()
    doc = {
        "@timestamp": "2024-05-01T12:00:00.000000Z",
        "event": {"id": rid, "dataset": "bench"},
        "log": {"level": "info", "logger": "bench.kafka"},
        "message": f"benchmark record {i} with a typical message length for a log line",
        "service": {"name": "bench"},
        "host": {"name": "benchhost"},
        "mqlogging": {"schema": "ecs", "producer": producer, "seq": i + 1},
    }
    return Message(rid, json.dumps(doc).encode())


def _confluent(bootstrap: str, topic: str, n: int) -> float:
    import confluent_kafka

    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "compression.type": "zstd",
        }
    )
    records = [_record(i) for i in range(n)]
    start = time.perf_counter()
    for first in range(0, n, BATCH):
        left = [0]

        def done(err: Any, _msg: Any, left: list[int] = left) -> None:
            left[0] -= 1
            assert err is None, err

        for m in records[first : first + BATCH]:
            left[0] += 1
            producer.produce(topic, m.body, b"benchhost:1:a", on_delivery=done)
        producer.flush(30)
        assert left[0] == 0
    return n / (time.perf_counter() - start)


def _kafka_python(bootstrap: str, topic: str, n: int) -> float:
    from kafka import KafkaProducer  # type: ignore[import-untyped]

    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        compression_type="zstd",
    )
    records = [_record(i) for i in range(n)]
    start = time.perf_counter()
    for first in range(0, n, BATCH):
        futures = [
            producer.send(topic, m.body, key=b"benchhost:1:a")
            for m in records[first : first + BATCH]
        ]
        producer.flush(30)
        assert all(f.succeeded() for f in futures)
    rate = n / (time.perf_counter() - start)
    producer.close()
    return rate


def _publish(url: str, n: int) -> float:
    records = [_record(i, f"benchhost:1:{i % 4}") for i in range(n)]
    with open_producer(url) as producer:
        producer.publish_batch(records[:BATCH])  # connect and the idempotence handshake
        start = time.perf_counter()
        for first in range(BATCH, n, BATCH):
            producer.publish_batch(records[first : first + BATCH])
        return (n - BATCH) / (time.perf_counter() - start)


def _handler(url: str, n: int) -> float:
    from mqlogging import MQHandler

    handler = MQHandler(url, spool=False, queue_size=n + 10, close_timeout=60.0)
    logger = logging.getLogger("bench.kafka.handler")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        start = time.perf_counter()
        for i in range(n):
            logger.info("benchmark record %d with a typical message length", i)
        assert handler.flush(120.0)
        return n / (time.perf_counter() - start)
    finally:
        logger.removeHandler(handler)
        handler.close()


def _collector(url: str, n: int, sink: dict[str, Any]) -> float:
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
    svc.start()
    try:
        deadline = time.perf_counter() + 300
        while svc.metrics.value("consumed") == 0 and time.perf_counter() < deadline:
            time.sleep(0.001)
        start = time.perf_counter()
        while svc.metrics.value("acked") < n:
            time.sleep(0.005)
            if time.perf_counter() > deadline:
                raise RuntimeError(f"collector stalled at {svc.metrics.value('acked')} of {n}")
        return n / (time.perf_counter() - start)
    finally:
        svc.close()


def _row(name: str, value: float, unit: str = "records/s", note: str = "") -> dict[str, Any]:
    return {"name": name, "value": round(value), "unit": unit, "note": note}


def run() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with NoidaKafka() as kafka, NoidaES() as es:
        kafka.start()
        es.start()
        for name, client in (("confluent-kafka", _confluent), ("kafka-python", _kafka_python)):
            topic = f"bench-{name}"
            kafka.create_topic(topic, partitions=3)
            rows.append(
                _row(
                    f"client {name}: 500-record batches, confirmed",
                    client(kafka.bootstrap, topic, min(N, 20_000)),
                )
            )
        kafka.create_topic("bench-producer", partitions=3)
        rows.append(
            _row(
                "KafkaProducer.publish_batch (500 per batch)",
                _publish(kafka.url("bench-producer"), N),
            )
        )
        kafka.create_topic("bench-handler", partitions=3)
        rows.append(
            _row(
                "one process: MQHandler emit -> all confirmed",
                _handler(kafka.url("bench-handler"), N),
            )
        )
        cases = [
            ("null", {"type": "null"}, N),
            (
                "noida-db ES",
                {"type": "elasticsearch", "hosts": [es.url], "dataset": "benchkafka"},
                ES_N,
            ),
        ]
        for name, sink, n in cases:
            topic = f"bench-collector-{name.split()[0]}"
            kafka.create_topic(topic, partitions=3)
            _publish(kafka.url(topic), n)
            rate = _collector(kafka.url(topic, group=topic), n, sink)
            rows.append(_row(f"collector drain -> {name} sink (3 partitions)", rate))
    return rows


def main() -> None:
    for r in run():
        print(f"{r['name']:58} {r['value']:>10,} {r['unit']}")


if __name__ == "__main__":
    main()
