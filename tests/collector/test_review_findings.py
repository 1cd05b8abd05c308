"""Loss paths an adversarial review found in the issue #11 fixes, each a regression test
against the real RabbitMQ and the ``_bulk`` stand-in (it answers like Elasticsearch: per-item
statuses, ``X-Elastic-Product``; see harness/collector.py).

- Documents of other producers (no ``mqlogging`` namespace, e.g. the DIRAC-style ``put()``)
  have no record id of ours: a user ``id`` field never becomes the ``_id``.
- Identical messages without a message id are two records, not one ``_id``.
- A record time that cannot be expressed in UTC does not stall the source.
- A configured ``local://`` dead-letter spool keeps its letters (not the spool's week).
- A logstash record's user ``@timestamp`` is not the record time.
- ``illegal_argument_exception`` about the cluster's configuration is an outage.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from harness.collector import BulkStandIn, amqp_queue_url, ecs_record, publish
from harness.helpers import wait_until
from mqlogging._ids import new_id
from mqlogging._types import Message
from mqlogging.backends import open_producer
from mqlogging.collector.config import parse_config
from mqlogging.collector.service import CollectorService
from mqlogging.collector.sinks import Outcome
from mqlogging.esbulk import classify
from mqlogging.formatting import JsonFormatter
from mqlogging.wire import read_meta
from tests.collector.test_loss_paths import _dead_letters


def test_foreign_documents_sharing_a_user_id_field(
    rabbitmq: Any, queue_name: str, service: Any
) -> None:
    """200 foreign JSON documents, each with its own AMQP message_id, sharing a user field
    ``id`` (10 distinct values, a job id): all 200 are stored, under their message ids
    (before: 10 stored, 190 acked as 409 "done")."""
    url = amqp_queue_url(rabbitmq, queue_name)
    messages = [
        Message(new_id(), json.dumps({"id": i % 10, "message": f"job event {i}"}).encode())
        for i in range(200)
    ]
    with open_producer(url) as producer:
        producer.publish_batch(messages)
    with BulkStandIn() as es:
        svc = service(sources=[{"url": url}], sinks=[{"type": "elasticsearch", "hosts": [es.url]}])
        wait_until(lambda: svc.metrics.value("acked") == 200, timeout=60)
        assert {m.id for m in messages} == set(es.docs)


def test_identical_foreign_messages_are_each_stored(
    rabbitmq: Any, queue_name: str, service: Any
) -> None:
    """A plain AMQP client publishes the same body 5 times without a message_id: 5 documents
    are stored (before: 1, the other 4 acked as 409 under one content-hash _id)."""
    url = amqp_queue_url(rabbitmq, queue_name)
    with rabbitmq.amqp_channel() as channel:
        channel.queue_declare(queue_name, durable=True)
        for _ in range(5):
            channel.basic_publish("", queue_name, b'{"message": "disk /data full"}')
    with BulkStandIn() as es:
        svc = service(sources=[{"url": url}], sinks=[{"type": "elasticsearch", "hosts": [es.url]}])
        wait_until(lambda: svc.metrics.value("acked") == 5, timeout=30)
        assert len(es.docs) == 5


def test_time_out_of_utc_range_does_not_stall_the_source(
    rabbitmq: Any, queue_name: str, service: Any
) -> None:
    """100 good records, one with ``"timestamp": "0001-01-01T00:00:00+05:00"`` (exists in its
    offset, not in UTC), 100 more, data stream mode: all 201 are stored, the hostile one
    under the receive time (before: its batch was retried forever, 100 never arrived)."""
    url = amqp_queue_url(rabbitmq, queue_name)
    hostile = json.dumps({"timestamp": "0001-01-01T00:00:00+05:00", "message": "hostile"})
    publish(url, [ecs_record(i) for i in range(100)])
    publish(url, [hostile.encode()])
    publish(url, [ecs_record(100 + i) for i in range(100)])
    with BulkStandIn() as es:
        svc = service(
            sources=[{"url": url}],
            sinks=[{"type": "elasticsearch", "hosts": [es.url]}],
            pipeline={"batch_max_wait": 0.2, "retry_initial": 0.1, "retry_max": 1.0},
        )
        wait_until(lambda: svc.metrics.value("acked") == 201, timeout=30)
        assert len(es.docs) == 201


def _run_with_dead_letters(url: str, dl: Path, tmp_path: Path, acked: int) -> None:
    svc = CollectorService(
        parse_config(
            {
                "sources": [{"url": url}],
                "sinks": [{"type": "file", "path": str(tmp_path / "out.jsonl")}],
                "dead_letter": {"url": f"local://{dl}"},
                "http": {"listen": ""},
                "pipeline": {"batch_max_wait": 0.2},
                "collector": {"state_dir": str(tmp_path / "state"), "shutdown_timeout": 5.0},
            },
            env={},
        )
    )
    svc.start()
    try:
        wait_until(lambda: svc.metrics.value("acked") == acked, timeout=60)
    finally:
        svc.close()


def test_configured_local_dead_letters_survive_a_week(
    rabbitmq: Any, queue_name: str, tmp_path: Path
) -> None:
    """5 poison messages dead-lettered to ``[dead_letter] url = "local://DIR"`` (the form the
    examples use); the segment ages 8 days; one more poison message arrives: all 6 dead
    letters are still there (before: the first 5 deleted by the spool's default max_age)."""
    url = amqp_queue_url(rabbitmq, queue_name)
    dl = tmp_path / "dead"
    publish(url, [b"{not json %d" % i for i in range(5)])
    _run_with_dead_letters(url, dl, tmp_path, 5)
    assert len(_dead_letters(dl)) == 5
    old = time.time() - 8 * 86400
    for f in dl.iterdir():
        os.utime(f, (old, old))
    publish(url, [b"{not json again", json.dumps(ecs_record(1)).encode()])
    _run_with_dead_letters(url, dl, tmp_path, 2)
    assert len(_dead_letters(dl)) == 6


def test_logstash_user_timestamp_is_not_the_record_time() -> None:
    """A user ``@timestamp`` (extra or context) in the ``logstash`` schema is moved under
    ``extra``; the record's own time stays first, so the index and the audit see the real
    time (before: the user's 2020 date replaced it)."""
    formatter = JsonFormatter(schema="logstash")
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "m", (), None)
    record.__dict__["@timestamp"] = "2020-01-01T00:00:00Z"
    doc = json.loads(formatter.format_message(record).body)
    assert next(iter(doc)) == "@timestamp"
    assert doc["@timestamp"].startswith(time.strftime("%Y-", time.gmtime(record.created)))
    assert doc["extra"]["@timestamp"] == "2020-01-01T00:00:00Z"
    assert read_meta(doc).timestamp == doc["@timestamp"]


def test_configuration_errors_reported_per_item_are_outages() -> None:
    """Per-item ``illegal_argument_exception`` about the cluster (no write index, missing
    pipeline) is retried as an outage; about the document (too many fields) it is a dead
    letter."""

    def item(reason: str) -> dict[str, Any]:
        error = {"type": "illegal_argument_exception", "reason": reason}
        return {"create": {"status": 400, "error": error}}

    assert classify(item("no write index is defined for alias [logs]")).outcome is Outcome.RETRY
    assert classify(item("pipeline with id [geo] does not exist")).outcome is Outcome.RETRY
    too_many = item("Limit of total fields [1000] has been exceeded")
    assert classify(too_many).outcome is Outcome.REJECT
