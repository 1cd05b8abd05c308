"""``mqlogging audit --es`` against records the collector delivered into noida-db (which speaks
the Elasticsearch REST API to the official client: point in time, ``search_after``): deleted
documents are named exactly as gaps, re-indexed copies as duplicates."""

from __future__ import annotations

import json
from typing import Any

import pytest

from harness.collector import amqp_queue_url, dataset_for, es_count, log_through_handler
from harness.helpers import wait_until
from mqlogging.cli import main

N = 2000


@pytest.fixture
def delivered(rabbitmq: Any, elasticsearch: Any, queue_name: str, service: Any) -> str:
    """``N`` records logged through MQHandler and delivered by the collector; yields the index."""
    url = amqp_queue_url(rabbitmq, queue_name)
    log_through_handler(url, N, f"audit.{queue_name}")
    dataset = dataset_for(queue_name)
    sink = {"type": "elasticsearch", "hosts": [elasticsearch.url], "dataset": dataset}
    svc = service(sources=[{"url": url}], sinks=[sink])
    index = f"logs-{dataset}-default"
    wait_until(lambda: es_count(elasticsearch.url, index) == N, timeout=60)
    wait_until(lambda: svc.metrics.value("acked") == N, timeout=20)
    return index


def _hits_by_seq(url: str, index: str, seqs: list[int]) -> list[dict[str, Any]]:
    from elasticsearch import Elasticsearch

    with Elasticsearch(url, request_timeout=10) as es:
        resp = es.search(index=index, query={"terms": {"mqlogging.seq": seqs}}, size=len(seqs))
        hits: list[dict[str, Any]] = resp["hits"]["hits"]
    assert sorted(seqs) == sorted(h["_source"]["mqlogging"]["seq"] for h in hits)
    return hits


def _audit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(["audit", *args, "--json", "--page-size", "300"])
    return code, json.loads(capsys.readouterr().out)


def test_deleted_documents_are_named_as_gaps(
    elasticsearch: Any, delivered: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Deleting known documents (by ``_id``) from the index makes audit name exactly their
    sequence numbers as gaps, and exit 1; before the deletion it finds every record, no gap,
    no duplicate, exit 0 (paging through several ``search_after`` pages)."""
    from elasticsearch import Elasticsearch

    code, report = _audit(capsys, "--es", elasticsearch.url, "--index", delivered)
    assert (
        code,
        report["totals"]["records"],
        report["totals"]["missing"],
        report["totals"]["duplicates"],
    ) == (0, N, 0, 0)
    gone = [1, 5, 6, 7, 1000, 1999]
    with Elasticsearch(elasticsearch.url, request_timeout=10) as es:
        for hit in _hits_by_seq(elasticsearch.url, delivered, gone):
            es.delete(index=hit["_index"], id=hit["_id"])
        es.indices.refresh(index=delivered)

    code, report = _audit(capsys, "--es", elasticsearch.url, "--index", delivered)
    assert code == 1
    [producer] = report["producers"]
    assert producer["gaps"] == [[1, 1], [5, 7], [1000, 1000], [1999, 1999]]
    assert (N - len(gone), len(gone), 0) == (
        producer["records"],
        producer["missing"],
        producer["dropped"],
    )


def test_a_record_indexed_twice_is_a_duplicate(
    elasticsearch: Any, delivered: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same record indexed again under another ``_id`` (what a re-publish with a new id
    would do) is reported as a duplicate of its seq; it is not a gap, so the exit is 0."""
    from elasticsearch import Elasticsearch

    [hit] = _hits_by_seq(elasticsearch.url, delivered, [42])
    with Elasticsearch(elasticsearch.url, request_timeout=10) as es:
        es.index(index=delivered, id="copy-of-42", document=hit["_source"], op_type="create")
        es.indices.refresh(index=delivered)

    code, report = _audit(capsys, "--es", elasticsearch.url, "--index", delivered)
    assert code == 0
    [producer] = report["producers"]
    assert (
        producer["records"],
        producer["duplicates"],
        producer["duplicate_seqs"],
        producer["gaps"],
    ) == (N + 1, 1, [[42, 42]], [])


def test_window_and_markers_outside_it(
    elasticsearch: Any, delivered: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--until`` before the records excludes them all; a marker indexed later names a range
    whose records are gone, and audit counts it as dropped (not a gap) although the marker's
    time is outside ``--since/--until``."""
    from elasticsearch import Elasticsearch

    code, report = _audit(
        capsys, "--es", elasticsearch.url, "--index", delivered, "--until", "2000-01-01T00:00:00Z"
    )
    assert (code, report["totals"]["records"]) == (0, 0)

    [first, *doomed] = _hits_by_seq(elasticsearch.url, delivered, [10, 11, 12])
    producer = first["_source"]["mqlogging"]["producer"]
    marker = dict(first["_source"])
    marker["@timestamp"] = "2099-01-01T00:00:00.000000Z"
    marker["mqlogging"] = {
        "schema": "ecs",
        "producer": producer,
        "seq": N + 1,
        "dropped": [{"producer": producer, "first": 11, "last": 12, "reason": "overflow"}],
    }
    with Elasticsearch(elasticsearch.url, request_timeout=10) as es:
        for hit in doomed:
            es.delete(index=hit["_index"], id=hit["_id"])
        es.index(index=delivered, id="marker", document=marker, op_type="create")
        es.indices.refresh(index=delivered)
    code, report = _audit(
        capsys, "--es", elasticsearch.url, "--index", delivered, "--until", "2098-01-01T00:00:00Z"
    )
    assert code == 0
    [entry] = report["producers"]
    assert (entry["records"], entry["dropped"], entry["gaps"]) == (N - 2, 2, [])
    assert entry["dropped_ranges"] == [{"first": 11, "last": 12, "reason": "overflow"}]


def test_since_sees_records_lost_at_the_windows_start(
    elasticsearch: Any, delivered: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seqs 998..1001 deleted and ``--since`` at seq 1001's time: the producer is checked from
    the seq after its highest before the window (one aggregation), so exactly the four are
    gaps; with ``--since`` before every record, nothing precedes the window and seqs 1..3,
    deleted too, are gaps as without ``--since``. Both used to start at the first seq in the
    window and exit 0."""
    from elasticsearch import Elasticsearch

    hits = _hits_by_seq(elasticsearch.url, delivered, [1, 2, 3, 998, 999, 1000, 1001])
    since = next(h for h in hits if h["_source"]["mqlogging"]["seq"] == 1001)["_source"]
    with Elasticsearch(elasticsearch.url, request_timeout=10) as es:
        for hit in hits:
            es.delete(index=hit["_index"], id=hit["_id"])
        es.indices.refresh(index=delivered)

    code, report = _audit(
        capsys, "--es", elasticsearch.url, "--index", delivered, "--since", since["@timestamp"]
    )
    [producer] = report["producers"]
    assert (code, producer["gaps"], producer["missing"]) == (1, [[998, 1001]], 4)
    assert producer["start"] == f"after seq {producer['checked_from'] - 1}"
    assert producer["checked_from"] <= 998
    assert producer["records"] == N - producer["checked_from"] + 1 - 4  # times follow seqs

    code, report = _audit(
        capsys, "--es", elasticsearch.url, "--index", delivered, "--since", "2000-01-01T00:00:00Z"
    )
    [producer] = report["producers"]
    assert (code, producer["gaps"], producer["missing"]) == (1, [[1, 3], [998, 1001]], 7)
    assert (producer["records"], producer["start"]) == (
        N - 7,
        "seq 1 (nothing precedes the window)",
    )
