"""Record ids and producer sequence numbers, end to end (issue #11, defect 1 and "audit").

A user field can never pass for the record id: every reader takes it from
:func:`mqlogging.wire.read_meta`, which knows where each schema keeps it. Elasticsearch is the
noida-db stand-in (it speaks the REST API to the official client; see harness/brokers.py).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.collector import amqp_queue_url, dataset_for, es_count, es_search
from harness.drain import drain_amqp
from harness.helpers import wait_until
from mqlogging.collector.service import CollectorService
from mqlogging.handlers import MQHandler
from mqlogging.wire import read_meta

Make = Callable[..., CollectorService]


def _log(url: str, schema: str, count: int, name: str, **extra: Any) -> MQHandler:
    handler = MQHandler(url, spool=False, schema=schema, queue_size=count + 10, close_timeout=30)
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        for i in range(count):
            logger.info("record %d", i, extra={"n": i, **extra})
    finally:
        logger.removeHandler(handler)
        handler.close()
    return handler


@pytest.mark.parametrize("schema", ["ecs", "logstash", "flat", "otel"])
def test_user_event_id_never_becomes_the_document_id(
    rabbitmq: Any, elasticsearch: Any, queue_name: str, service: Make, schema: str
) -> None:
    """200 records that all carry ``extra={"event": {"id": "signup"}}`` (and a user ``id``)
    are stored as 200 documents, each under its own record id: no 409 conflict turns a
    record into a silently acked duplicate (before the fix: 101 of 200 stored)."""
    url = amqp_queue_url(rabbitmq, queue_name)
    _log(url, schema, 200, f"ident.{queue_name}", event={"id": "signup"}, id="user-id")
    sink = {
        "type": "elasticsearch",
        "hosts": [elasticsearch.url],
        "dataset": dataset_for(queue_name),
    }
    svc = service(sources=[{"url": url}], sinks=[sink])
    index = f"logs-{dataset_for(queue_name)}-default"
    wait_until(lambda: svc.metrics.value("acked") == 200, timeout=60)
    wait_until(lambda: es_count(elasticsearch.url, index) == 200, timeout=30)
    hits = es_search(elasticsearch.url, index, {"match_all": {}}, size=500)
    assert len({h["_id"] for h in hits}) == 200
    assert all(h["_id"] == read_meta(h).id for h in hits)  # es_search returns _source+_id
    assert all(h["_id"] not in ("signup", "user-id") for h in hits)


def test_local_spool_reader_uses_the_record_id(tmp_path: Path, service: Make) -> None:
    """The ``local://`` consumer gives each record its own id as delivery id, not a user's
    ``event.id``: 50 logstash records with the same user ``event.id`` reach a file sink
    as 50 distinct ids."""
    url = f"local://{tmp_path / 'q'}"
    _log(url, "logstash", 50, "ident.local", event={"id": "signup"})
    out = tmp_path / "out.jsonl"
    svc = service(sources=[{"url": url}], sinks=[{"type": "file", "path": str(out)}])
    wait_until(lambda: svc.metrics.value("acked") == 50, timeout=30)
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len({read_meta(d).id for d in docs}) == 50


def test_every_record_carries_producer_and_gap_free_sequence(
    rabbitmq: Any, queue_name: str
) -> None:
    """Four threads log 2,000 records through one handler: all carry the handler's producer
    id, and the sequence numbers are exactly 1..2000, each once."""
    url = amqp_queue_url(rabbitmq, queue_name)
    handler = MQHandler(url, spool=False, queue_size=5000, close_timeout=30)
    logger = logging.getLogger(f"ident.seq.{queue_name}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)

    def work() -> None:
        for i in range(500):
            logger.info("r %d", i)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logger.removeHandler(handler)
    handler.close()
    docs = drain_amqp(rabbitmq, queue_name, 2000)
    metas = [read_meta(d) for d in docs]
    assert {handler.producer} == {m.producer for m in metas}
    assert list(range(1, 2001)) == sorted(m.seq for m in metas if m.seq is not None)
