"""Unit tests without brokers: decoding, the Elasticsearch sink's per-item classification
(against the fault-injecting ``_bulk`` stand-in), dead-letter documents, the file sink."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.collector import BulkStandIn, ecs_record
from mqlogging._types import Delivery
from mqlogging.collector.config import ElasticsearchSinkConfig, FileSinkConfig
from mqlogging.collector.service import Decoder, decode
from mqlogging.collector.sinks import Outcome, Record
from mqlogging.collector.sinks.deadletter import DeadLetter, dead_letter_body
from mqlogging.collector.sinks.elasticsearch import ElasticsearchSink
from mqlogging.collector.sinks.file import FileSink


def _d(body: bytes, id: str = "t-1") -> Delivery:
    return Delivery(id=id, body=body, tag=None)


def _records(n: int) -> list[Record]:
    out = []
    for i in range(n):
        doc = ecs_record(i)
        out.append(Record(doc["event"]["id"], doc, 100))
    return out


class TestDecode:
    def test_ecs_id_and_enrichment(self) -> None:
        """The record id comes from ``event.id``; enrichment sets absent dotted fields only."""
        doc = ecs_record(1)
        record, reason = decode(
            _d(json.dumps(doc).encode()),
            max_bytes=10_000,
            max_depth=10,
            enrich=[("event.ingested", "NOW"), ("log.level", "x")],
        )
        assert record is not None
        assert reason == ""
        assert doc["event"]["id"] == record.id
        assert record.doc["event"]["ingested"] == "NOW"
        assert record.doc["log"]["level"] == "info"

    def test_id_fallbacks(self) -> None:
        """A record of ours has its schema's id; another producer's ``id`` is a user field
        (a job id many records share), so the transport id is used."""
        ours = b'{"id": "abc", "mqlogging": {"schema": "flat"}}'
        r1, _ = decode(_d(ours, id="transport"), max_bytes=100, max_depth=5)
        r2, _ = decode(_d(b'{"id": "abc"}', id="transport"), max_bytes=100, max_depth=5)
        assert r1 is not None
        assert r2 is not None
        assert (r1.id, r2.id) == ("abc", "transport")

    def test_poison_reasons(self) -> None:
        """Each kind of undecodable message gets its own reason."""
        deep = b'{"a":' * 40 + b"1" + b"}" * 40
        cases = {
            b"{nope": "invalid JSON",
            b"\xff{}": "invalid UTF-8",
            b"[1]": "not a JSON object",
            b"{}" + b" " * 200: "oversize",
            deep: "nested too deeply",
        }
        for body, expected in cases.items():
            record, reason = decode(
                _d(body), max_bytes=150 if expected == "oversize" else 10_000, max_depth=20
            )
            assert record is None
            assert reason.startswith(expected), (body[:20], reason)

    @pytest.mark.parametrize("max_fields", [1, 2, 3, 7, 20])
    def test_field_limit_holds_for_the_densest_bodies(self, max_fields: int) -> None:
        """A body of at most 3 * max_fields bytes is not scanned for colons (each key takes
        3 bytes at least, ``"":``): the densest documents with one key too many (nested
        empty keys, an array of one-key objects, one-letter keys) are still refused, and one
        with exactly the limit is taken."""
        n = max_fields + 1
        dense = [
            b'{"":' * n + b"0" + b"}" * n,
            b'{"":[' + b",".join([b'{"":0}'] * max_fields) + b"]}",
            b"{" + b",".join(b'"%c":0' % (97 + i) for i in range(n)) + b"}",
        ]
        decoder = Decoder(max_bytes=10_000, max_depth=100, max_fields=max_fields)
        for body in dense:
            record, reason = decoder(_d(body))
            assert record is None, body
            assert reason.startswith("too many fields"), (body, reason)
        at_limit = b"{" + b",".join(b'"%c":0' % (97 + i) for i in range(max_fields)) + b"}"
        record, reason = decoder(_d(at_limit))
        assert record is not None
        assert reason == ""

    def test_decoder_enrichment_replaced_and_never_overwrites(self) -> None:
        """A :class:`Decoder` sets the fields given last to :meth:`Decoder.enrich` (a worker
        refreshes the received-at time per fetch), creates missing parents, and leaves alone
        a field that exists or a path through a value that is not an object."""
        decoder = Decoder(max_bytes=10_000, max_depth=10, enrich=[("event.ingested", "T1")])
        body = json.dumps({"message": "text", "event": {"kind": "x"}}).encode()
        first, _ = decoder(_d(body))
        decoder.enrich([("event.ingested", "T2"), ("message.sub", 1), ("a.b.c", 2)])
        second, _ = decoder(_d(body))
        assert first is not None
        assert second is not None
        assert first.doc["event"] == {"kind": "x", "ingested": "T1"}
        assert second.doc == {
            "message": "text",
            "event": {"kind": "x", "ingested": "T2"},
            "a": {"b": {"c": 2}},
        }

    def test_decoder_limits_cannot_drift_from_its_prepared_checks(self) -> None:
        """A :class:`Decoder` prepares its cheap pre-checks from its limits once (the colon
        count is skipped below 3 x ``max_fields`` bytes): the limits it shows are the ones it
        enforces, so they are read-only (an assignment would leave the prepared skip at the
        old limit and let a 60-key record through a limit of 10)."""
        decoder = Decoder(max_bytes=10_000, max_depth=10, max_fields=1000)
        body = json.dumps({f"k{i}": i for i in range(60)}).encode()
        for name in ("max_bytes", "max_depth", "max_fields"):
            with pytest.raises(AttributeError):
                setattr(decoder, name, 10)
        assert (decoder.max_bytes, decoder.max_depth, decoder.max_fields) == (10_000, 10, 1000)
        assert Decoder(max_bytes=10_000, max_depth=10, max_fields=10)(_d(body))[0] is None

    def test_enrichment_keeps_a_null_parent(self) -> None:
        """A parent of an enrichment path that the record set to ``null`` is the record's
        own field like any other value: it stays ``null`` (not replaced by an object holding
        the enrichment), as a ``null`` leaf stays ``null``."""
        decoder = Decoder(
            max_bytes=10_000, max_depth=10, enrich=[("event.ingested", "T"), ("host.name", "h")]
        )
        body = json.dumps({"message": "m", "event": None, "host": {"name": None}}).encode()
        record, _ = decoder(_d(body))
        assert record is not None
        assert record.doc == {"message": "m", "event": None, "host": {"name": None}}

    def test_tune_gc_in_a_process_of_its_own(self) -> None:
        """``tune_gc`` (what ``mqlogging collect`` runs once its service is built) freezes
        what is alive and raises the young-generation threshold; run in a child process,
        because it is process-wide (an embedding application keeps its own GC)."""
        code = (
            "import gc; from mqlogging.collector import GC_YOUNG_THRESHOLD, tune_gc; "
            "before = gc.get_threshold(); tune_gc(); after = gc.get_threshold(); "
            "assert after == (GC_YOUNG_THRESHOLD, *before[1:]), (before, after); "
            "assert gc.get_freeze_count() > 0"
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

    def test_run_leaves_an_embedding_process_gc_alone(self, tmp_path: Path) -> None:
        """:func:`mqlogging.collector.run` is documented as a way to embed the collector: it
        must not freeze the application's objects nor change its GC thresholds (only the
        ``mqlogging collect`` command, whose process is the collector's own, tunes the GC).
        Run in a child process that stops the collector with SIGTERM once it answers HTTP."""
        source, state = tmp_path / "in", tmp_path / "state"
        code = f"""
import gc, os, signal, threading, urllib.request
from harness.helpers import free_port, wait_until
from mqlogging.collector import run
from mqlogging.collector.config import parse_config

port = free_port()
config = parse_config({{
    "sources": [{{"url": "local://{source}"}}],
    "sinks": [{{"type": "null"}}],
    "http": {{"listen": f"127.0.0.1:{{port}}"}},
    "collector": {{"state_dir": "{state}", "shutdown_timeout": 2.0}},
}}, env={{}})

def answers() -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{{port}}/healthz", timeout=1)
    except OSError as exc:
        return hasattr(exc, "code")  # an HTTP error status is an answer too
    return True

def stop_when_up() -> None:
    wait_until(answers, timeout=30)
    os.kill(os.getpid(), signal.SIGTERM)

before = (gc.get_threshold(), gc.get_freeze_count())
threading.Thread(target=stop_when_up, daemon=True).start()
assert run(config) == 0
after = (gc.get_threshold(), gc.get_freeze_count())
assert after == before, (before, after)
"""
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


class TestElasticsearchSink:
    def test_413_splits_until_it_fits(self) -> None:
        """A 413 for the whole request splits the batch; everything is stored."""
        with BulkStandIn(max_items=30) as es:
            sink = ElasticsearchSink(ElasticsearchSinkConfig(hosts=(es.url,)))
            results = sink.write(_records(100))
            assert [r.outcome for r in results] == [Outcome.DONE] * 100
            assert len(es.docs) == 100

    def test_per_item_classification(self) -> None:
        """Per-item 201 → done, 409 → done ("conflict"), 429/503 → retry, 400 → reject with
        Elasticsearch's error text; results keep the request order."""
        statuses = {0: 409, 1: 429, 2: 503, 3: 400}
        with BulkStandIn(lambda req, item: statuses.get(item) if item >= 0 else None) as es:
            sink = ElasticsearchSink(ElasticsearchSinkConfig(hosts=(es.url,)))
            results = sink.write(_records(5))
        assert [r.outcome for r in results] == [
            Outcome.DONE,
            Outcome.RETRY,
            Outcome.RETRY,
            Outcome.REJECT,
            Outcome.DONE,
        ]
        assert results[0].status == "conflict"
        assert "document_parsing_exception" in results[3].reason

    def test_request_level_errors_retry_and_report_not_ready(self) -> None:
        """Per-item 404 (index missing), per-item 403 and a whole-request 400
        ``index_closed_exception`` are ``RETRY`` for every record (never ``REJECT``, never
        bisected), and make ``check()`` false until a write succeeds again."""
        mode = {"now": "item404"}

        def fault(request: int, item: int) -> int | None:
            if mode["now"] == "item404" and item >= 0:
                return 404 if item % 2 else 403
            if mode["now"] == "closed" and item == -1:
                return 400
            return None

        with BulkStandIn(fault) as es:
            sink = ElasticsearchSink(ElasticsearchSinkConfig(hosts=(es.url,)))
            results = sink.write(_records(6))
            assert {Outcome.RETRY} == {r.outcome for r in results}
            assert {"403", "404"} == {r.status for r in results}
            assert not sink.check()
            mode["now"] = "closed"
            before = es.requests
            results = sink.write(_records(6))
            assert [r.outcome for r in results] == [Outcome.RETRY] * 6
            assert "index_closed_exception" in results[0].reason
            assert es.requests - before == 1
            assert not sink.check()
            mode["now"] = "ok"
            assert {Outcome.DONE} == {r.outcome for r in sink.write(_records(6))}
            assert sink.check()

    def test_record_time_picks_the_index_within_the_window(self) -> None:
        """The index comes from ``@timestamp``, else the flat schema's ``timestamp``; a time
        outside [now - 30 days, now + 1 day] or missing picks today's index, counted."""
        from datetime import datetime, timedelta, timezone

        counted: list[float] = []
        sink = ElasticsearchSink(
            ElasticsearchSinkConfig(
                hosts=("http://127.0.0.1:1",), mode="index", index="l-%Y.%m.%d"
            ),
            out_of_window=counted.append,
        )
        now = datetime.now(timezone.utc)
        old = now - timedelta(days=10)
        today = now.strftime("l-%Y.%m.%d")
        cases = [
            ({"@timestamp": old.isoformat().replace("+00:00", "Z")}, old.strftime("l-%Y.%m.%d")),
            ({"timestamp": old.isoformat()}, old.strftime("l-%Y.%m.%d")),
            ({"@timestamp": "1970-01-01T00:00:00Z"}, today),
            ({"@timestamp": (now + timedelta(days=3)).isoformat()}, today),
            ({"@timestamp": "garbage"}, today),
            ({}, today),
        ]
        for doc, expected in cases:
            assert expected == sink.index_for(doc), doc
        assert len(counted) == 4
        sink.close()

    def test_unreachable_is_retry(self) -> None:
        """Connection refused: every item is ``RETRY`` (not an exception)."""
        sink = ElasticsearchSink(
            ElasticsearchSinkConfig(hosts=("http://127.0.0.1:1",), request_timeout=2.0)
        )
        results = sink.write(_records(3))
        assert {Outcome.RETRY} == {r.outcome for r in results}
        assert not sink.check()


class TestDeadLetterBody:
    def test_binary_body_is_base64(self) -> None:
        """A non-UTF-8 original is kept as base64; reason and source are recorded."""
        body = dead_letter_body(
            DeadLetter(_d(b"\xff\x00"), "invalid UTF-8: x", "decode"),
            source="amqp://h/",
            collector="c1",
        )
        assert body["message_base64"] == "/wA="
        assert (body["reason"], body["stage"], body["source"], body["collector"]) == (
            "invalid UTF-8: x",
            "decode",
            "amqp://h/",
            "c1",
        )


class TestFileSink:
    def test_rotation_keeps_backups(self, tmp_path: Path) -> None:
        """Size rotation keeps at most ``backups`` old files and never splits a batch."""
        path = tmp_path / "o.jsonl"
        sink = FileSink(FileSinkConfig(path=str(path), max_bytes=2000, backups=2, fsync=False))
        for _ in range(10):
            sink.write(_records(5))
        sink.close()
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == ["o.jsonl", "o.jsonl.1", "o.jsonl.2"]
        for p in tmp_path.iterdir():
            assert len(p.read_text().splitlines()) % 5 == 0
