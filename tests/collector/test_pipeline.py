"""End-to-end collector tests with real brokers, in-process service.

Every test publishes its own records to its own queue, runs a :class:`CollectorService`, and
counts what arrived: nothing lost, nothing duplicated. Elasticsearch is noida-db (the fixture),
fault injection uses :class:`BulkStandIn`, Logstash uses the stand-ins in ``support``.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.collector import (
    BulkStandIn,
    LogstashHttpStandIn,
    LogstashTcpStandIn,
    amqp_queue_url,
    dataset_for,
    ecs_record,
    es_count,
    es_search,
    log_through_handler,
    metric_sum,
    publish,
)
from harness.helpers import wait_until
from mqlogging.collector.service import CollectorService

Make = Callable[..., CollectorService]


def es_sink(url: str, queue: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "elasticsearch",
        "hosts": [url],
        "dataset": dataset_for(queue),
        "request_timeout": 5.0,
        **extra,
    }


def _index(queue: str) -> str:
    return f"logs-{dataset_for(queue)}-default"


def _get(svc: CollectorService, path: str) -> tuple[int, str]:
    assert svc.http is not None
    _, port = svc.http.address
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class TestElasticsearchEndToEnd:
    @pytest.mark.parametrize("transport", ["amqp", "stomp"])
    def test_rabbitmq_records_land_searchable(
        self, rabbitmq: Any, elasticsearch: Any, queue_name: str, service: Make, transport: str
    ) -> None:
        """Records logged through ``MQHandler`` to RabbitMQ (AMQP and STOMP) land in noida-db
        once each, with their fields, the record id as ``_id``, ``event.ingested`` added, and
        are searchable; the queue is empty afterwards (every message acked)."""
        if transport == "amqp":
            url = amqp_queue_url(rabbitmq, queue_name)
        else:
            url = f"{rabbitmq.stomp_url}/queue/{queue_name}"
        log_through_handler(url, 1500, f"e2e.{queue_name}")
        svc = service(sources=[{"url": url}], sinks=[es_sink(elasticsearch.url, queue_name)])
        index = _index(queue_name)
        wait_until(lambda: es_count(elasticsearch.url, index) == 1500, timeout=60)
        wait_until(lambda: svc.metrics.value("acked") == 1500, timeout=20)
        assert rabbitmq.queue_depth(queue_name) == 0
        hits = es_search(elasticsearch.url, index, {"match": {"message": "number 777"}})
        hit = next(h for h in hits if h["seq"] == 777)
        assert hit["event"]["id"] == hit["_id"]
        assert hit["message"] == "record number 777"
        assert hit["log"]["level"] == "info"
        assert f"e2e.{queue_name}" == hit["log"]["logger"]
        assert hit["service"]["name"] == "collector-tests"
        assert hit["event"]["ingested"].endswith("Z")
        assert svc.metrics.value("sink_items", status="ok") == 1500
        seqs = es_search(elasticsearch.url, index, {"range": {"seq": {"gte": 1490}}}, size=50)
        assert list(range(1490, 1500)) == sorted(h["seq"] for h in seqs)

    def test_activemq_records_land(
        self, activemq: Any, elasticsearch: Any, queue_name: str, service: Make
    ) -> None:
        """Records logged through ``MQHandler`` to ActiveMQ over STOMP land in noida-db
        exactly once each and are searchable by field."""
        url = f"{activemq.stomp_url}/queue/{queue_name}"
        log_through_handler(url, 1000, f"e2e.{queue_name}")
        svc = service(sources=[{"url": url}], sinks=[es_sink(elasticsearch.url, queue_name)])
        wait_until(lambda: es_count(elasticsearch.url, _index(queue_name)) == 1000, timeout=60)
        wait_until(lambda: svc.metrics.value("acked") == 1000, timeout=20)
        hits = es_search(elasticsearch.url, _index(queue_name), {"term": {"seq": 42}})
        assert [h["seq"] for h in hits] == [42]

    def test_date_based_index_and_template(
        self, rabbitmq: Any, elasticsearch: Any, queue_name: str, service: Make
    ) -> None:
        """``mode = "index"`` writes to the strftime-expanded index of each record's
        ``@timestamp`` (within the configured window), and ``install_template`` installs the template (noida-db stores and
        applies index templates)."""
        url = amqp_queue_url(rabbitmq, queue_name)
        publish(url, (ecs_record(i) for i in range(200)))
        sink = es_sink(
            elasticsearch.url,
            queue_name,
            mode="index",
            index=f"{queue_name}-%Y.%m.%d",
            install_template=True,
            index_window_days_back=36500,  # the records are dated 2024-05-01
        )
        service(sources=[{"url": url}], sinks=[sink])
        index = f"{queue_name}-2024.05.01"
        wait_until(lambda: es_count(elasticsearch.url, index) == 200, timeout=60)
        from elasticsearch import Elasticsearch

        with Elasticsearch(elasticsearch.url) as es:
            name = f"mqlogging-{dataset_for(queue_name)}"
            templates = es.indices.get_index_template(name=name)["index_templates"]
            assert [f"{queue_name}-*"] == templates[0]["index_template"]["index_patterns"]
            mapping = es.indices.get_mapping(index=index)[index]["mappings"]
            assert mapping["properties"]["event"]["properties"]["id"]["type"] == "keyword"


class TestFaults:
    def test_429_and_503_retried_without_loss(
        self, rabbitmq: Any, queue_name: str, service: Make
    ) -> None:
        """A ``_bulk`` peer answering whole-request 503, then per-item 429 for the first
        requests: every record ends up stored exactly once, and the retries are counted."""

        def fault(request: int, item: int) -> int | None:
            if request <= 3 and item == -1:
                return 503
            if request <= 8 and item >= 0 and item % 3 == 0:
                return 429
            return None

        url = amqp_queue_url(rabbitmq, queue_name)
        docs = [ecs_record(i) for i in range(3000)]
        publish(url, docs)
        with BulkStandIn(fault) as es:
            svc = service(sources=[{"url": url}], sinks=[es_sink(es.url, queue_name)])
            wait_until(lambda: svc.metrics.value("acked") == 3000, timeout=60)
            assert {d["event"]["id"] for d in docs} == set(es.docs)
            assert len(es.docs) == 3000
            assert svc.metrics.value("retried") > 0
            assert svc.metrics.value("sink_items", status="503") > 0
            assert svc.metrics.value("sink_items", status="429") > 0
        assert rabbitmq.queue_depth(queue_name) == 0

    def test_poison_messages_dead_lettered_with_reasons(
        self, rabbitmq: Any, queue_name: str, service: Make, tmp_path: Path
    ) -> None:
        """Undecodable messages (invalid JSON, invalid UTF-8, non-object, oversize, too deep)
        and a mapping conflict (400 from ``_bulk``) go to the dead-letter spool with their
        reasons and original bytes; every other record lands; all messages are acked."""
        url = amqp_queue_url(rabbitmq, queue_name)
        good = [ecs_record(i) for i in range(300)]
        conflict = ecs_record(999, seq="not-a-number")
        deep: Any = {}
        for _ in range(80):
            deep = {"x": deep}
        poison = [
            b"{not json",
            b"\xff\xfe{}",
            b"[1, 2]",
            b"{" + b'"a":"' + b"x" * 5000 + b'"}',
            json.dumps({"deep": deep}).encode(),
        ]
        publish(url, [*good[:150], *poison, conflict, *good[150:]])
        dead_dir = tmp_path / "dead"
        with BulkStandIn() as es:
            svc = service(
                sources=[{"url": url}],
                sinks=[es_sink(es.url, queue_name)],
                pipeline={"batch_max_wait": 0.2, "max_message_bytes": 4096, "max_depth": 32},
                dead_letter={"url": f"local://{dead_dir}"},
            )
            wait_until(lambda: svc.metrics.value("acked") == 306, timeout=60)
            assert {d["event"]["id"] for d in good} == set(es.docs)
        assert svc.metrics.value("dead_lettered") == 6
        letters = []
        for segment in sorted(dead_dir.rglob("*")):
            if segment.is_file() and segment.suffix in (".jsonl", ".open"):
                for line in segment.read_bytes().splitlines():
                    try:
                        outer = json.loads(line)
                    except ValueError:
                        continue
                    letters.append(outer)
        reasons = sorted(_letter(x)["reason"].split(":")[0] for x in letters)
        assert len(reasons) == 6, letters[:2]
        assert any(r.startswith("invalid JSON") for r in reasons)
        assert any(r.startswith("invalid UTF-8") for r in reasons)
        assert any(r.startswith("not a JSON object") for r in reasons)
        assert any(r.startswith("oversize") for r in reasons)
        assert any(r.startswith("nested too deeply") for r in reasons)
        sink_letter = next(_letter(x) for x in letters if _letter(x)["stage"] == "sink")
        assert "400" in sink_letter["reason"]
        assert conflict["event"]["id"] == sink_letter["record_id"]
        utf8 = next(_letter(x) for x in letters if _letter(x)["reason"].startswith("invalid UTF"))
        assert "message_base64" in utf8

    def test_elasticsearch_down_then_back(
        self, rabbitmq: Any, elasticsearch: Any, queue_name: str, service: Make
    ) -> None:
        """noida-db stopped while records keep arriving, for several retry rounds at the capped
        backoff: messages stay in the broker (at most the prefetch is held), the collector
        recovers on its own, nothing is lost and nothing is duplicated."""
        url = amqp_queue_url(rabbitmq, queue_name)
        index = _index(queue_name)
        svc = service(
            sources=[{"url": url, "prefetch": 200}],
            sinks=[es_sink(elasticsearch.url, queue_name, request_timeout=2.0)],
            pipeline={"batch_max_wait": 0.2, "retry_initial": 0.2, "retry_max": 1.0},
        )
        publish(url, (ecs_record(i) for i in range(500)))
        wait_until(lambda: es_count(elasticsearch.url, index) == 500, timeout=60)
        elasticsearch.stop()
        try:
            publish(url, (ecs_record(i) for i in range(500, 2500)))
            wait_until(lambda: svc.metrics.value("retried") > 0, timeout=30)
            wait_until(lambda: rabbitmq.queue_depth(queue_name) >= 1500, timeout=30)
            ready, _ = svc.readiness()
            assert not ready
            # keep it down for a while: retries go on, visibly, the broker keeps the rest; 200
            # held records a round, so > 1200 is 7 rounds: backoff 0.2, 0.4, 0.8, then at the cap
            wait_until(lambda: svc.metrics.value("retried") > 1200, timeout=30)
        finally:
            elasticsearch.start()
        wait_until(lambda: es_count(elasticsearch.url, index) == 2500, timeout=90)
        wait_until(lambda: svc.metrics.value("acked") == 2500, timeout=30)
        assert rabbitmq.queue_depth(queue_name) == 0


def _letter(raw: dict[str, Any]) -> dict[str, Any]:
    """A spool line is the published body: the dead-letter document itself."""
    return raw


class TestLogstashAndFile:
    def test_logstash_http(self, rabbitmq: Any, queue_name: str, service: Make) -> None:
        """Records reach a peer that accepts exactly what Logstash's http input accepts
        (JSON array, application/json); its initial 429 "busy" answers are retried."""
        url = amqp_queue_url(rabbitmq, queue_name)
        docs = [ecs_record(i) for i in range(1200)]
        publish(url, docs)
        with LogstashHttpStandIn(busy_requests=3) as peer:
            svc = service(
                sources=[{"url": url}], sinks=[{"type": "logstash", "url": f"{peer.url}/"}]
            )
            wait_until(lambda: svc.metrics.value("acked") == 1200, timeout=60)
            assert peer.problems == []
            assert sorted(d["seq"] for d in docs) == sorted(e["seq"] for e in peer.events)
            assert peer.busy_answers == 3
            assert svc.metrics.value("sink_items", status="429") > 0

    def test_logstash_tcp(self, rabbitmq: Any, queue_name: str, service: Make) -> None:
        """Records reach a json_lines TCP peer as one JSON object per line."""
        url = amqp_queue_url(rabbitmq, queue_name)
        publish(url, (ecs_record(i) for i in range(1000)))
        with LogstashTcpStandIn() as peer:
            svc = service(
                sources=[{"url": url}],
                sinks=[{"type": "logstash", "url": f"tcp://127.0.0.1:{peer.port}"}],
            )
            wait_until(lambda: svc.metrics.value("acked") == 1000, timeout=60)
            wait_until(lambda: len(peer.events) == 1000, timeout=10)
            assert peer.problems == []
            assert list(range(1000)) == sorted(e["seq"] for e in peer.events)

    def test_file_sink_rotation_and_fan_out(
        self, rabbitmq: Any, queue_name: str, service: Make, tmp_path: Path
    ) -> None:
        """With two sinks (a rotated file and a null sink), every record is in the file set
        exactly once and acked once; the file rotates by size (a batch is never split across
        files) and SIGHUP-style reopen starts a fresh file."""
        url = amqp_queue_url(rabbitmq, queue_name)
        publish(url, (ecs_record(i) for i in range(2000)))
        path = tmp_path / "out.jsonl"
        svc = service(
            sources=[{"url": url}],
            sinks=[
                {"type": "file", "path": str(path), "max_bytes": 100_000, "backups": 50},
                {"type": "null"},
            ],
            pipeline={"batch_max_count": 100, "batch_max_wait": 0.2},
        )
        wait_until(lambda: svc.metrics.value("acked") == 2000, timeout=60)
        files = sorted(tmp_path.glob("out.jsonl*"))
        assert len(files) > 2
        seqs = [json.loads(line)["seq"] for f in files for line in f.read_text().splitlines()]
        assert list(range(2000)) == sorted(seqs)
        path.rename(tmp_path / "moved.jsonl")
        svc.reopen()
        publish(url, (ecs_record(i) for i in range(2000, 2010)))
        wait_until(lambda: path.exists() and len(path.read_text().splitlines()) == 10, timeout=30)


class TestObservability:
    def test_metrics_healthz_readyz(
        self, rabbitmq: Any, elasticsearch: Any, queue_name: str, service: Make
    ) -> None:
        """``/healthz`` is 200, ``/readyz`` is 200 once the source is connected and the sink
        reachable, ``/metrics`` exposes the counters, and no password appears in it."""
        url = amqp_queue_url(rabbitmq, queue_name)
        publish(url, (ecs_record(i) for i in range(100)))
        svc = service(sources=[{"url": url}], sinks=[es_sink(elasticsearch.url, queue_name)])
        wait_until(lambda: svc.metrics.value("acked") == 100, timeout=30)
        assert _get(svc, "/healthz")[0] == 200
        _, body = wait_until(lambda: (s := _get(svc, "/readyz"))[0] == 200 and s, timeout=10)
        assert json.loads(body)["ready"] is True
        _, text = _get(svc, "/metrics")
        assert metric_sum(text, "consumed") == 100
        assert metric_sum(text, "acked") == 100
        assert "mqlogging_collector_batch_seconds_bucket" in text
        assert "mqlogging_collector_in_flight" in text
        assert ":guest@" not in text
        assert _get(svc, "/nope")[0] == 404

    def test_readyz_fails_when_sink_unreachable(
        self, rabbitmq: Any, queue_name: str, service: Make
    ) -> None:
        """``/readyz`` answers 503 naming the sink when the sink cannot be reached."""
        url = amqp_queue_url(rabbitmq, queue_name)
        svc = service(
            sources=[{"url": url}], sinks=[{"type": "logstash", "url": "tcp://127.0.0.1:1"}]
        )
        status, body = _get(svc, "/readyz")
        assert status == 503
        assert json.loads(body)["sinks"] == {"logstash:tcp://127.0.0.1:1": False}


class TestSpoolSource:
    def test_local_spool_directory_drained(self, tmp_path: Path, service: Make) -> None:
        """A ``local://`` spool directory (as shipped from an offline node) is a source: its
        records reach the file sink exactly once and are acked in the spool."""
        spool = tmp_path / "spool"
        url = f"local://{spool}"
        log_through_handler(url, 700, "e2e.spool")
        out = tmp_path / "out.jsonl"
        svc = service(
            sources=[{"url": url}], sinks=[{"type": "file", "path": str(out), "fsync": False}]
        )
        wait_until(lambda: svc.metrics.value("acked") == 700, timeout=60)
        seqs = sorted(json.loads(line)["seq"] for line in out.read_text().splitlines())
        assert list(range(700)) == seqs
