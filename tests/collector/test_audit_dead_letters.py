"""``mqlogging audit --dead-letters``: records set aside instead of stored are explained, not lost.

Real RabbitMQ and the collector in process (file sink, default dead-letter spool under
``state_dir``); records nested deeper than the pipeline's ``max_depth`` are poison. The
Elasticsearch endpoint's rejected spool is exercised against noida-db (which speaks the
Elasticsearch REST API and answers a real per-document 400 for a mapping conflict).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.collector import amqp_queue_url, dataset_for, es_count
from harness.helpers import unique_name, wait_until
from mqlogging.cli import main
from mqlogging.collector.service import CollectorService
from mqlogging.handlers import MQHandler
from mqlogging.spool import segments

Make = Callable[..., CollectorService]

N = 500
POISON = (7, 200, 201, 450)  # the i of the records nested too deeply (their seq is i + 1)
MAX_DEPTH = 8


def _nested(levels: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"leaf": 1}
    for _ in range(levels):
        doc = {"down": doc}
    return doc


def _log(handler: MQHandler, name: str, count: int, extra: Callable[[int], dict[str, Any]]) -> None:
    """Log ``count`` records through ``handler`` (``extra(i)`` for record i), then close it."""
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        for i in range(count):
            logger.info("record number %d", i, extra=extra(i))
    finally:
        logger.removeHandler(handler)
        handler.close()


def _audit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(["audit", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture
def collected(rabbitmq: Any, queue_name: str, service: Make, tmp_path: Path) -> tuple[Path, Path]:
    """``N`` records logged through MQHandler, ``POISON`` of them too deep: the collector writes
    the others to a file sink and dead-letters those; yields (sink file, dead-letter dir)."""
    url = amqp_queue_url(rabbitmq, queue_name)
    handler = MQHandler(url, spool=False, queue_size=N + 10, close_timeout=60.0)
    deep = _nested(MAX_DEPTH + 4)
    _log(handler, f"auditdl.{queue_name}", N, lambda i: {"deep": deep} if i in POISON else {})
    out = tmp_path / "out.jsonl"
    svc = service(
        sources=[{"url": url}],
        sinks=[{"type": "file", "path": str(out), "fsync": False}],
        pipeline={"batch_max_wait": 0.2, "max_depth": MAX_DEPTH},
    )
    wait_until(lambda: svc.metrics.value("acked") == N, timeout=60)
    assert svc.metrics.value("dead_lettered") == len(POISON)
    return out, tmp_path / "state" / "dead-letters"


def _kept(directory: Path) -> list[tuple[str, int, bytes]]:
    """What a spool directory holds: each segment's path, confirmed offset and bytes."""
    return [(v.path, v.confirmed, Path(v.path).read_bytes()) for v in segments(str(directory))]


class TestCollectorDeadLetters:
    def test_dead_letters_explain_the_gaps_of_the_sink(
        self, collected: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Over the file sink alone the poison records are unexplained gaps (exit 1); with
        ``--dead-letters`` over the collector's dead-letter spool there is no gap, they are
        counted as dead-lettered with the collector's reason (exit 0), in JSON and in text."""
        out, letters = collected
        code, report = _audit(capsys, "--file", str(out))
        (producer,) = report["producers"]
        assert (code, producer["gaps"]) == (1, [[8, 8], [201, 202], [451, 451]])
        code, report = _audit(capsys, "--file", str(out), "--dead-letters", str(letters))
        (producer,) = report["producers"]
        assert (code, report["ok"], producer["gaps"]) == (0, True, [])
        assert producer["records"] == N - len(POISON)
        assert producer["dead_lettered"] == len(POISON)
        assert producer["dead_lettered_ranges"] == [[8, 8], [201, 202], [451, 451]]
        (reason,) = producer["dead_letter_reasons"]
        assert reason["count"] == len(POISON)
        assert "nested too deeply" in reason["reason"]
        assert report["totals"]["dead_lettered"] == len(POISON)
        assert report["totals"]["dead_lettered_unattributed"] == 0
        capsys.readouterr()
        assert main(["audit", "--file", str(out), "--dead-letters", str(letters)]) == 0
        text = capsys.readouterr().out
        assert "dead-lettered 4: 8, 201-202, 451" in text
        assert "OK: no unexplained gap" in text

    def test_a_dead_letter_spool_read_through_a_tap_is_not_consumed(
        self, collected: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``--dead-letters local://DIR`` reads the dead letters through a tap: the same
        verdict as over the directory, and the spool holds exactly what it held before (no
        claim, no confirmation: the dead letters stay there for a human to replay)."""
        out, letters = collected
        before = _kept(letters)
        assert before
        code, report = _audit(capsys, "--file", str(out), "--dead-letters", f"local://{letters}")
        assert (code, report["totals"]["dead_lettered"], report["totals"]["dead_letters"]) == (
            0,
            len(POISON),
            len(POISON),
        )
        assert before == _kept(letters)


def test_a_dead_letter_queue_browsed_on_activemq_is_not_consumed(
    activemq: Any, queue_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--dead-letters stomp://.../queue/DLQ`` on ActiveMQ reads the waiting dead letters with
    a queue browser: they explain the gap, and the queue holds as many messages after the
    audit as before (nothing consumed, nothing acked)."""
    from mqlogging._types import Message
    from mqlogging.backends import open_producer
    from mqlogging.deadletters import envelope

    record = {"@timestamp": "2026-12-01T12:00:00Z", "message": "m"}

    def doc(seq: int) -> str:
        return json.dumps({**record, "mqlogging": {"schema": "ecs", "producer": "p", "seq": seq}})

    sink = tmp_path / "sink.jsonl"
    sink.write_text("".join(doc(s) + "\n" for s in (1, 4)))
    url = f"{activemq.stomp_url}/queue/{queue_name}"
    letters = [
        envelope(doc(s).encode(), reason="too large", stage="decode", source="x", record_id=str(s))
        for s in (2, 3)
    ]
    with open_producer(url) as producer:
        producer.publish_batch(
            [Message(str(i), json.dumps(x).encode()) for i, x in enumerate(letters)]
        )
    assert activemq.queue_depth(queue_name) == 2
    code, report = _audit(capsys, "--file", str(sink), "--dead-letters", url)
    (producer_report,) = report["producers"]
    assert (code, producer_report["gaps"], producer_report["dead_lettered"]) == (0, [], 2)
    assert activemq.queue_depth(queue_name) == 2


def test_a_queue_that_cannot_be_browsed_is_refused(
    rabbitmq: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An AMQP queue cannot be read without consuming it, so ``--dead-letters amqp://...`` is
    refused in one line naming the way out (exit 2) instead of reading nothing and passing."""
    sink = tmp_path / "sink.jsonl"
    sink.write_text("")
    capsys.readouterr()
    code = main(
        ["audit", "--file", str(sink), "--dead-letters", f"{rabbitmq.amqp_url}?exchange=logs"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot show the dead letters already waiting without consuming them" in err


def test_the_es_endpoints_rejected_spool_explains_its_gaps(
    elasticsearch: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Records Elasticsearch refused with a document-level 400 (a mapping conflict) are kept in
    the endpoint's rejected spool: ``audit --es`` alone names them as gaps (exit 1); with
    ``--dead-letters`` over the rejected spool they are dead-lettered with Elasticsearch's
    reason and nothing is unexplained (exit 0)."""
    dataset = dataset_for(unique_name("auditdl"))
    rejected = tmp_path / "rejected"
    netloc = elasticsearch.url.split("://", 1)[1].rstrip("/")
    url = f"elasticsearch+http://{netloc}/?dataset={dataset}&rejected={rejected}"
    handler = MQHandler(url, spool=False, close_timeout=30)
    logger = logging.getLogger(f"auditdl.{dataset}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    conflicts = {30, 31, 77}
    try:
        logger.info("typed", extra={"size": 0})
        assert handler.flush(30)  # the index now maps "size" as a number
        for i in range(1, 100):
            logger.info(
                "record %d", i, extra={"size": {"not": "a number"} if i in conflicts else i}
            )
    finally:
        logger.removeHandler(handler)
        handler.close()
    index = f"logs-{dataset}-default"
    wait_until(lambda: es_count(elasticsearch.url, index) == 100 - len(conflicts), timeout=30)
    code, report = _audit(capsys, "--es", elasticsearch.url, "--index", index)
    assert (code, report["producers"][0]["gaps"]) == (1, [[31, 32], [78, 78]])
    code, report = _audit(
        capsys, "--es", elasticsearch.url, "--index", index, "--dead-letters", str(rejected)
    )
    (producer,) = report["producers"]
    assert (code, producer["gaps"], producer["dead_lettered"]) == (0, [], len(conflicts))
    assert "document_parsing_exception" in producer["dead_letter_reasons"][0]["reason"]
