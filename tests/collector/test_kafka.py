"""Handler -> Kafka -> collector -> Elasticsearch, end to end, with faults.

Kafka is the noida-db Kafka stand-in (``kafka`` fixture, :mod:`harness.kafka`), not Apache
Kafka; Elasticsearch is the noida-db Elasticsearch stand-in. Records are counted in the index
by id: every emitted id present means nothing was lost, as many documents as ids means nothing
was stored twice (``_id`` = record id, ``op_type=create``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.collector import (
    CollectorProcess,
    dataset_for,
    ecs_record,
    es_count,
    publish,
    write_config,
)
from harness.helpers import free_port, wait_until
from harness.kafka import KafkaAdmin
from mqlogging import MQHandler
from mqlogging.collector.service import CollectorService


@pytest.fixture
def procs() -> Iterator[list[CollectorProcess]]:
    started: list[CollectorProcess] = []
    yield started
    for proc in started:
        proc.close()


def _collector(
    tmp_path: Path, procs: list[CollectorProcess], name: str, url: str, es_url: str, topic: str
) -> CollectorProcess:
    port = free_port()
    config = write_config(
        tmp_path / f"{name}.toml",
        sources=[{"url": url, "prefetch": 1000}],
        sinks=[
            {
                "type": "elasticsearch",
                "hosts": [es_url],
                "dataset": dataset_for(topic),
                "request_timeout": 30.0,
            }
        ],
        pipeline={
            "batch_max_count": 500,
            "batch_max_wait": 0.2,
            "retry_initial": 0.1,
            "retry_max": 1.0,
        },
        collector={"shutdown_timeout": 5.0, "log_level": "info"},
        http={"listen": f"127.0.0.1:{port}"},
    )
    proc = CollectorProcess(config, port, tmp_path / f"{name}.log")
    procs.append(proc)
    proc.wait_http()
    return proc


def _stored_ids(es_url: str, topic: str) -> list[str]:
    """The ``_id`` of every document of the topic's index (a scan)."""
    from elasticsearch import Elasticsearch, helpers

    index = f"logs-{dataset_for(topic)}-default"
    with Elasticsearch(es_url, request_timeout=30) as es:
        es.indices.refresh(index=index)
        return [hit["_id"] for hit in helpers.scan(es, index=index, _source=False, size=5000)]


def _log(handler: MQHandler, first: int, count: int, ids: list[str]) -> None:
    """Log records ``first``.. through ``handler`` as ``emit`` does, keeping each record id."""
    logger = logging.getLogger("tests.kafka.app")
    for seq in range(first, first + count):
        record = logger.makeRecord(
            logger.name,
            logging.INFO,
            __file__,
            0,
            "kafka record %d",
            (seq,),
            None,
            extra={"seq": seq},
        )
        message = handler.prepare(record)
        ids.append(message.id)
        handler.enqueue(message)


def test_handler_to_collector_to_elasticsearch(
    kafka: KafkaAdmin, elasticsearch: Any, queue_name: str, tmp_path: Path, procs: list[Any]
) -> None:
    """Against the noida-db Kafka and Elasticsearch stand-ins: 2,000 records logged through
    MQHandler to a 3-partition topic are drained by a collector (consumer group) into the
    index: every record id is stored, once."""
    kafka.create_topic(queue_name, partitions=3)
    url = kafka.url(queue_name, group=queue_name)
    _collector(tmp_path, procs, "c", url, elasticsearch.url, queue_name)
    handler = MQHandler(url, spool=str(tmp_path / "spool"), close_timeout=30.0)
    ids: list[str] = []
    try:
        _log(handler, 0, 2000, ids)
    finally:
        handler.close()
    assert not any(handler.stats()["dropped"].values())
    wait_until(
        lambda: es_count(elasticsearch.url, f"logs-{dataset_for(queue_name)}-default") >= 2000,
        timeout=60,
        interval=0.3,
    )
    stored = _stored_ids(elasticsearch.url, queue_name)
    assert sorted(ids) == sorted(stored)


def test_stand_in_killed_and_restarted_mid_stream(
    kafka: Any, elasticsearch: Any, queue_name: str, tmp_path: Path, procs: list[Any]
) -> None:
    """Against the noida-db Kafka stand-in: the broker is SIGKILLed after 40 % of 2,500
    records, more records are logged while it is down, then it is restarted. The handler
    spools what was not confirmed and replays it, the collector reconnects: lost 0, and
    every record is stored once."""
    kafka.create_topic(queue_name, partitions=2)
    url = kafka.url(queue_name, group=queue_name)
    collector = _collector(tmp_path, procs, "c", url, elasticsearch.url, queue_name)
    handler = MQHandler(
        url,
        spool=str(tmp_path / "spool"),
        close_timeout=60.0,
        retry_max=1.0,
        connect_timeout=1.0,
        timeout=3.0,
    )
    ids: list[str] = []
    try:
        _log(handler, 0, 1000, ids)
        kafka.kill()
        _log(handler, 1000, 900, ids)
        wait_until(lambda: handler.stats()["spooled"] > 0, timeout=30, message="spooling")
        kafka.start()
        _log(handler, 1900, 600, ids)
        assert handler.flush(60.0)
    finally:
        handler.close()
    index = f"logs-{dataset_for(queue_name)}-default"
    wait_until(
        lambda: es_count(elasticsearch.url, index) >= 2500,
        timeout=90,
        interval=0.5,
        message="2500 records in the index",
    )
    stored = _stored_ids(elasticsearch.url, queue_name)
    assert sorted(ids) == sorted(stored)
    assert collector.metric("reconnects") >= 1


def test_collector_killed_9_loses_nothing_and_stores_nothing_twice(
    kafka: KafkaAdmin, elasticsearch: Any, queue_name: str, tmp_path: Path, procs: list[Any]
) -> None:
    """Against the noida-db Kafka stand-in: a collector is SIGKILLed while draining 4,000
    records, with offsets committed only for what reached the index, and restarted under
    the same ``group_instance`` (the stand-in never evicts a member that died without leaving,
    so only a static member's restart takes its partitions back); it reads the uncommitted
    rest again. The index ends with exactly the 4,000 ids."""
    kafka.create_topic(queue_name, partitions=3)
    url = kafka.url(queue_name, group=queue_name, group_instance="collector-1")
    docs = [ecs_record(i) for i in range(4000)]
    publish(url, docs, batch=1000)
    index = f"logs-{dataset_for(queue_name)}-default"
    first = _collector(tmp_path, procs, "first", url, elasticsearch.url, queue_name)
    wait_until(lambda: es_count(elasticsearch.url, index) >= 1000, timeout=60, interval=0.1)
    first.kill()
    assert es_count(elasticsearch.url, index) < 4000
    _collector(tmp_path, procs, "second", url, elasticsearch.url, queue_name)
    wait_until(
        lambda: kafka.lag(queue_name, queue_name) == 0,
        timeout=90,
        interval=0.5,
        message="group caught up",
    )
    stored = _stored_ids(elasticsearch.url, queue_name)
    assert sorted(d["event"]["id"] for d in docs) == sorted(stored)


def test_sink_outage_longer_than_max_poll_interval_keeps_the_group(
    kafka: KafkaAdmin,
    queue_name: str,
    tmp_path: Path,
    service: Callable[..., CollectorService],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Against the noida-db Kafka stand-in: a file sink (which does not dedupe) cannot write
    for longer than the consumer's ``max_poll_interval`` (6 s) while the collector holds its
    whole in-flight bound. The collector keeps polling its paused consumer, so the member
    never leaves the group (librdkafka never says the poll interval was exceeded): when the
    sink comes back, every record is written exactly once and the group commits them all."""
    kafka.create_topic(queue_name, partitions=2)
    url = kafka.url(queue_name, group=queue_name, max_poll_interval="6")
    out_dir, away = tmp_path / "out", tmp_path / "away"
    out_dir.mkdir()
    caplog.set_level(logging.INFO, logger="confluent_kafka")
    svc = service(
        sources=[{"url": url, "prefetch": 200}],
        sinks=[{"type": "file", "path": str(out_dir / "records.jsonl")}],
        pipeline={"batch_max_count": 100, "batch_max_wait": 0.1, "retry_max": 0.5},
    )
    out_dir.rename(away)  # the file sink cannot open its file: an outage
    sent = [ecs_record(i) for i in range(1000)]
    publish(kafka.url(queue_name), sent)
    wait_until(lambda: svc.metrics.value("in_flight") >= 200, timeout=20, message="bound held")
    time.sleep(8.0)  # the outage itself: longer than max_poll_interval
    away.rename(out_dir)
    wait_until(lambda: kafka.lag(queue_name, queue_name) == 0, timeout=20, message="lag 0")
    lines = (out_dir / "records.jsonl").read_bytes().splitlines()
    written = [json.loads(line)["event"]["id"] for line in lines]
    assert sorted(written) == sorted(doc["event"]["id"] for doc in sent)
    assert "maximum poll interval" not in caplog.text
