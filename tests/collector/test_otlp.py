"""The OTLP sink (issue #16): record mapping, answers of the receiver, and records counted end
to end (MQHandler -> RabbitMQ -> collector -> OTLP receiver).

The receiver is :class:`harness.otlp.OtlpReceiver`, built on the official
``opentelemetry-proto`` messages; it stands in for an OpenTelemetry Collector. Set
``MQLOGGING_OTLP_URL`` (e.g. ``http://127.0.0.1:4318``) to also run against a real one.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace

from harness.collector import (
    CollectorProcess,
    amqp_queue_url,
    ecs_record,
    log_through_handler,
    publish,
    write_config,
)
from harness.helpers import free_port, wait_until
from harness.otlp import OtlpReceiver
from mqlogging import JsonFormatter
from mqlogging._types import Outcome
from mqlogging.backends.endpoints import Secret
from mqlogging.collector.config import parse_config
from mqlogging.collector.service import CollectorService
from mqlogging.collector.sinks import SINK_TYPES, Record
from mqlogging.collector.sinks.otlp import OtlpSink, OtlpSinkConfig, parse_retry_after
from mqlogging.collector.sinks.otlp_records import build_request, to_log_record
from mqlogging.errors import ConfigurationError

Make = Callable[..., CollectorService]


def _record(i: int) -> Record:
    doc = ecs_record(i)
    return Record(doc["event"]["id"], doc, len(json.dumps(doc)))


def _formatted(schema: str, **kwargs: Any) -> dict[str, Any]:
    """A WARNING record with an exception, extras and a trace id, as ``schema`` writes it."""
    formatter = JsonFormatter(schema=schema, static_fields={"service": "billing"}, **kwargs)
    record = logging.LogRecord("app.db", logging.WARNING, "/x.py", 10, "job %d done", (3,), None)
    record.count = 5
    try:
        raise KeyError("k")
    except KeyError:
        record.exc_info = sys.exc_info()
    # The trace ids come from the active span (captured when formatting on the caller); a user
    # field named trace_id would be moved under `extra`.
    context = trace.SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False, trace.TraceFlags(1)
    )
    with trace.use_span(trace.NonRecordingSpan(context)):
        doc: dict[str, Any] = json.loads(formatter.format(record))
    return doc


class TestMapping:
    @pytest.mark.parametrize("schema", ["ecs", "logstash"])
    def test_schema_fields_land_where_otel_wants_them(self, schema: str) -> None:
        """Time (unix ns), severity number/text, body, scope = logger, resource (service,
        host, pid), extras as attributes, the exception as exception.* and the record id as
        log.record.uid, for the ecs and logstash schemas."""
        doc = _formatted(schema)
        record, resource, scope = to_log_record(doc, "rid-1")
        attributes = {kv.key: kv.value for kv in record.attributes}
        assert scope == "app.db"
        assert (record.severity_number, record.severity_text) == (13, "WARNING")
        assert record.body.string_value == "job 3 done"
        assert record.time_unix_nano > 1_700_000_000 * 10**9
        assert dict(resource)["service.name"] == "billing"
        assert os.getpid() == dict(resource)["process.pid"]
        assert "host.name" in dict(resource)
        assert attributes["count"].int_value == 5
        assert attributes["log.record.uid"].string_value == "rid-1"
        assert "KeyError" in attributes["exception.stacktrace"].string_value

    def test_logstash_trace_ids_become_bytes(self) -> None:
        """A lower-hex trace id field becomes LogRecord.trace_id (16 bytes)."""
        record, _, _ = to_log_record(_formatted("logstash"), "rid")
        assert record.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"

    def test_time_is_exact_to_the_microsecond(self) -> None:
        """@timestamp with microseconds converts to unix nanoseconds without float error."""
        doc = ecs_record(0, **{"@timestamp": "2024-05-01T12:00:00.123456Z"})
        record, _, _ = to_log_record(doc, "rid")
        assert record.time_unix_nano == 1714564800_123456000

    def test_otel_shaped_record_maps_directly(self) -> None:
        """A record already in OpenTelemetry's data model (the ``otel`` schema, attributes as
        an object or as OTLP/JSON key-value lists) keeps its fields."""
        doc = {
            "timeUnixNano": "1714564800123456789",
            "severityNumber": 17,
            "severityText": "ERROR",
            "body": "boom",
            "attributes": [{"key": "user", "value": {"stringValue": "bob"}}],
            "resource": {"service.name": "api", "host.name": "h1"},
            "scope": {"name": "app"},
            "traceId": "0af7651916cd43dd8448eb211c80319c",
            "spanId": "b7ad6b7169203331",
            "flags": 1,
            "mqlogging": {"schema": "otel"},
        }
        record, resource, scope = to_log_record(doc, "rid")
        attributes = {kv.key: kv.value.string_value for kv in record.attributes}
        assert record.time_unix_nano == 1714564800123456789
        assert (
            record.severity_number,
            record.severity_text,
            record.body.string_value,
        ) == (17, "ERROR", "boom")
        assert attributes == {"user": "bob", "log.record.uid": "rid"}
        assert dict(resource) == {"service.name": "api", "host.name": "h1"}
        assert (scope, record.span_id.hex(), record.flags) == ("app", "b7ad6b7169203331", 1)

    @pytest.mark.parametrize(
        ("doc", "kept"),
        [
            (ecs_record(0, **{"@timestamp": "1969-12-31T23:59:59Z"}), "@timestamp"),
            (ecs_record(0, **{"@timestamp": "9999-12-31T23:59:59-23:59"}), "@timestamp"),
            ({"timestamp": "0001-01-01T00:00:00", "message": "m"}, "timestamp"),
            ({"mqlogging": {"schema": "otel"}, "timeUnixNano": 2**70}, None),
            ({"mqlogging": {"schema": "otel"}, "timeUnixNano": "9" * 30}, None),
            ({"mqlogging": {"schema": "otel"}, "timeUnixNano": "\u00b2"}, None),
            ({"mqlogging": {"schema": "otel"}, "severityNumber": True}, None),
            (
                {
                    "mqlogging": {"schema": "otel"},
                    "attributes": [{"key": "a", "value": {"intValue": "x"}}],
                },
                None,
            ),
        ],
    )
    def test_values_otel_cannot_hold_do_not_fail_the_record(
        self, doc: dict[str, Any], kept: str | None
    ) -> None:
        """A time before 1970 or after 2554 (OTel's fixed64 nanoseconds), an out-of-range or
        non-ASCII timeUnixNano, a boolean severityNumber, an intValue that is no integer: the
        record still maps (time 0 = unknown, the time as written kept as an attribute) instead
        of raising, which failed the whole batch's request on every retry (review2). The
        observed time is set, so a backend still has a time to show."""
        record, _, _ = to_log_record(doc, "rid")
        request = build_request([(doc, "rid")])
        assert request.SerializeToString()
        assert record.time_unix_nano == 0
        # OTel's observed time (when the collector read it) says when it was seen, at least.
        assert record.observed_time_unix_nano >= time.time_ns() - 60 * 10**9
        attributes = {kv.key: kv.value.string_value for kv in record.attributes}
        if kept is not None:
            assert attributes[kept] == doc[kept]

    @pytest.mark.parametrize("schema", ["ecs", "logstash", "otel"])
    def test_custom_level_keeps_its_severity_number(self, schema: str) -> None:
        """A level between the standard ones (25, or a named custom level) gets the severity
        number the ``otel`` schema gives it (INFO + 5 -> 12), in every schema, not 0
        (UNSPECIFIED) for ecs and logstash, which a backend cannot filter on (review2)."""
        formatter = JsonFormatter(schema=schema)
        record = logging.LogRecord("app", 25, "/x.py", 1, "m", None, None)
        record, _, _ = to_log_record(json.loads(formatter.format(record)), "rid")
        assert record.severity_number == 12

    def test_json_null_is_an_empty_value_not_the_text_none(self) -> None:
        """A null inside a list or as the message is an empty AnyValue, not the string
        "None" (Python's repr leaking into the data; review2)."""
        doc = ecs_record(0, items=[1, None], message=None)
        record, _, _ = to_log_record(doc, "rid")
        items = next(kv.value for kv in record.attributes if kv.key == "items")
        assert [v.WhichOneof("value") for v in items.array_value.values] == ["int_value", None]
        assert record.body.WhichOneof("value") is None

    def test_grouped_by_resource_and_scope(self) -> None:
        """Records of two services and two loggers make two ResourceLogs, scopes per logger."""
        docs = [
            ecs_record(i, service={"name": f"s{i % 2}"}, log={"logger": f"l{i % 4}"})
            for i in range(8)
        ]
        request = build_request([(d, d["event"]["id"]) for d in docs])
        assert len(request.resource_logs) == 2
        assert [len(r.scope_logs) for r in request.resource_logs] == [2, 2]


class TestConfig:
    def test_registered_and_defaults(self) -> None:
        """``type = "otlp"`` is in the sink table; a bare host URL gets /v1/logs."""
        config = parse_config(
            {
                "sources": [{"url": "local:///tmp/x"}],
                "sinks": [{"type": "otlp", "url": "http://c:4318"}],
            },
            env={},
        )
        (sink,) = config.sinks
        assert "otlp" in SINK_TYPES
        assert isinstance(sink, OtlpSinkConfig)
        assert sink.endpoint == "http://c:4318/v1/logs"
        assert (sink.encoding, sink.compression, sink.verify) == ("protobuf", "gzip", True)

    def test_headers_from_env_never_shown(self) -> None:
        """MQLOGGING_OTLP_HEADERS sets the headers; neither repr nor a bad-entry message shows
        their value."""
        config = parse_config(
            {"sources": [{"url": "local:///tmp/x"}], "sinks": [{"type": "otlp"}]},
            env={"MQLOGGING_OTLP_HEADERS": "Authorization=Bearer%20s3cret"},
        )
        assert "s3cret" not in repr(config)
        with pytest.raises(ConfigurationError) as info:
            OtlpSinkConfig(headers=Secret("Authorization: s3cret"))
        assert "s3cret" not in str(info.value)

    def test_bad_option_one_line(self) -> None:
        """A misspelt encoding is refused in one line naming the choices."""
        with pytest.raises(ConfigurationError, match="protobuf"):
            parse_config(
                {"sources": [{"url": "local:///x"}], "sinks": [{"type": "otlp", "encoding": "pb"}]},
                env={},
            )

    def test_retry_after_forms(self) -> None:
        """Retry-After in seconds or as an HTTP date; capped; junk means no wish."""
        assert parse_retry_after("3") == 3.0
        assert parse_retry_after("86400") == 300.0
        assert parse_retry_after("soon") == 0.0
        # A non-ASCII digit (latin-1, so httpx passes it through) raised ValueError (review2).
        assert parse_retry_after("\u00b2") == 0.0
        assert parse_retry_after("-5") == 0.0
        assert parse_retry_after("1" * 400) == 300.0
        assert (
            pytest.approx(parse_retry_after("Thu, 01 Jan 1970 00:00:20 GMT", now=10.0), abs=0.01)
            == 10.0
        )


class TestAnswers:
    """The sink against the receiver, without a broker: one write, its per-record results."""

    @pytest.mark.parametrize("encoding", ["protobuf", "json"])
    @pytest.mark.parametrize("compression", ["gzip", "none"])
    def test_encodings_and_headers(self, encoding: str, compression: str) -> None:
        """Both encodings (and gzip or not) reach the receiver intact, with the configured
        headers."""
        with OtlpReceiver() as rx:
            config = OtlpSinkConfig(
                url=rx.url,
                encoding=encoding,  # type: ignore[arg-type]
                compression=compression,  # type: ignore[arg-type]
                headers=Secret("Authorization=Bearer%20tok"),
            )
            sink = OtlpSink(config)
            records = [_record(i) for i in range(50)]
            assert all(r.outcome is Outcome.DONE for r in sink.write(records))
            sink.close()
            assert sorted(r.id for r in records) == sorted(rx.uids)
            assert rx.headers_seen[0]["authorization"] == "Bearer tok"
            assert ("gzip" if compression == "gzip" else "") in rx.encodings

    def test_503_retried_with_retry_after(self) -> None:
        """503 with Retry-After: every record RETRY, carrying the wait."""
        with OtlpReceiver() as rx:
            rx.fail_next(1, 503, retry_after="2")
            sink = OtlpSink(OtlpSinkConfig(url=rx.url))
            results = sink.write([_record(i) for i in range(3)])
            assert {(Outcome.RETRY, "503", 2.0)} == {
                (r.outcome, r.status, r.retry_after) for r in results
            }
            assert all(r.outcome is Outcome.DONE for r in sink.write([_record(9)]))

    @pytest.mark.parametrize(
        ("policy", "outcome"), [("dead_letter", Outcome.REJECT), ("accept", Outcome.DONE)]
    )
    def test_partial_success_policy(self, policy: str, outcome: Outcome) -> None:
        """A partial success (2 of 10 rejected, which ones unknown): the whole request is
        dead-lettered by default, counted as done with ``accept``; never retried."""
        with OtlpReceiver() as rx:
            rx.partial_next(2)
            sink = OtlpSink(OtlpSinkConfig(url=rx.url, partial_success=policy))  # type: ignore[arg-type]
            results = sink.write([_record(i) for i in range(10)])
            assert {outcome} == {r.outcome for r in results}
            assert "rejected 2 of 10" in results[0].reason
            assert rx.requests == 1

    def test_400_finds_the_refused_record_and_outage_when_all_refused(self) -> None:
        """A blanket 400 for every request is an outage (retried, not ready), not 64 dead
        letters, found in at most 15 requests; other 4xx are dead-lettered."""
        with OtlpReceiver() as rx:
            rx.fail_next(1000, 400)
            sink = OtlpSink(OtlpSinkConfig(url=rx.url))
            results = sink.write([_record(i) for i in range(64)])
            assert {Outcome.RETRY} == {r.outcome for r in results}
            assert all(r.reason.startswith("outage: ") for r in results)
            assert rx.requests <= 15
            assert not sink.check()
            with rx.lock:
                rx.script.fail.clear()
            rx.fail_next(1, 422)
            assert {Outcome.REJECT} == {r.outcome for r in sink.write([_record(1)])}
            assert sink.check() is True

    def test_poison_records_in_both_halves_are_dead_lettered_alone(self) -> None:
        """Two records the receiver refuses (400), one in each half of the batch: both are
        found and dead-lettered, the 14 others delivered. Before: both halves refused read as
        an outage, so the whole batch was retried forever (review2)."""
        with OtlpReceiver() as rx:
            records = [_record(i) for i in range(16)]
            rx.refuse({records[3].id, records[12].id})
            sink = OtlpSink(OtlpSinkConfig(url=rx.url))
            results = sink.write(records)
            rejected = [i for i, r in enumerate(results) if r.outcome is Outcome.REJECT]
            assert rejected == [3, 12]
            assert {Outcome.DONE} == {r.outcome for i, r in enumerate(results) if i not in (3, 12)}
            assert rx.count == 14
            assert sink.check() is True

    def test_unmappable_record_dead_lettered_alone(self) -> None:
        """A record protobuf cannot hold (a lone surrogate, which the collector's JSON
        fallback decoder lets through) is dead-lettered alone; the others are delivered in
        the same write instead of the whole batch failing on every retry (review2)."""
        with OtlpReceiver() as rx:
            records = [_record(i) for i in range(5)]
            bad = ecs_record(99, note="\ud800")
            records.insert(2, Record(bad["event"]["id"], bad, 100))
            results = OtlpSink(OtlpSinkConfig(url=rx.url)).write(records)
            assert [r.outcome for r in results] == [Outcome.DONE] * 2 + [Outcome.REJECT] + [
                Outcome.DONE
            ] * 3
            assert results[2].status == "unmappable"
            assert rx.count == 5

    @pytest.mark.parametrize(
        ("content_type", "body"),
        [
            ("text/html", b"<html><body>Please log in</body></html>"),
            ("application/json", b"<html>not json</html>"),
            ("application/x-protobuf", b"\xff\xff\xff garbage"),
        ],
    )
    def test_2xx_that_is_not_an_otlp_answer_is_not_an_ack(
        self, content_type: str, body: bytes
    ) -> None:
        """A 2xx whose body is not an ExportLogsServiceResponse (a proxy's login page, a wrong
        service at the URL) does not say the records were stored: RETRY as an outage, not
        ready, never DONE (the broker would drop them: silent loss); a JSON content type with
        a body that does not parse no longer raises out of write (review2)."""
        with OtlpReceiver() as rx:
            rx.answer_next(1, 200, {"Content-Type": content_type}, body)
            sink = OtlpSink(OtlpSinkConfig(url=rx.url))
            results = sink.write([_record(i) for i in range(4)])
            assert {Outcome.RETRY} == {r.outcome for r in results}
            assert results[0].reason.startswith("outage: ")
            assert sink.check() is False
            assert {Outcome.DONE} == {r.outcome for r in sink.write([_record(i) for i in range(4)])}

    def test_redirect_is_an_outage_naming_the_new_url(self) -> None:
        """A 3xx (e.g. http -> https, 308) is not followed (a POST body must not go to a place
        the configuration does not name): every record RETRY as an outage that names the
        Location, and /readyz not ready. Before: retried forever with the sink ready (review2)."""
        with OtlpReceiver() as rx:
            rx.answer_next(1, 308, {"Location": "https://otel.example:4318/v1/logs"})
            sink = OtlpSink(OtlpSinkConfig(url=rx.url))
            results = sink.write([_record(i) for i in range(3)])
            assert {Outcome.RETRY} == {r.outcome for r in results}
            assert results[0].reason.startswith("outage: ")
            assert "https://otel.example:4318/v1/logs" in results[0].reason
            assert sink.check() is False

    def test_receiver_down_is_retry_and_not_ready(self) -> None:
        """Connection refused: RETRY ("unavailable") and check() false."""
        rx = OtlpReceiver()
        rx.down()
        sink = OtlpSink(OtlpSinkConfig(url=rx.url, timeout=2.0))
        assert {"unavailable"} == {r.status for r in sink.write([_record(0)])}
        assert sink.check() is False


class TestEndToEnd:
    def test_handler_to_receiver_down_then_up(
        self, rabbitmq: Any, queue_name: str, service: Make
    ) -> None:
        """2,000 records logged through MQHandler to RabbitMQ reach the receiver through the
        collector while the receiver starts down, then comes up, then answers 503 with
        Retry-After once (honoured: the next request waits for it): lost 0, duplicates 0, the
        queue drained (all acked)."""
        n = 2000
        url = amqp_queue_url(rabbitmq, queue_name)
        log_through_handler(url, n, f"otlp.{queue_name}")
        rx = OtlpReceiver()
        try:
            rx.down()
            svc = service(
                sources=[{"url": url}],
                sinks=[{"type": "otlp", "url": rx.url, "timeout": 5.0}],
                pipeline={"batch_max_wait": 0.2, "retry_initial": 0.1, "retry_max": 0.5},
            )
            wait_until(
                lambda: svc.metrics.value("sink_items", status="unavailable") > 0, timeout=20
            )
            rx.fail_next(1, 503, retry_after="1")
            rx.up()
            wait_until(lambda: svc.metrics.value("acked") == n, timeout=60)
            assert n == len(rx.uids)
            assert rx.duplicates() == 0
            assert list(range(n)) == sorted(log.attributes["seq"] for log in rx.logs)
            assert {"collector-tests"} == {log.resource["service.name"] for log in rx.logs}
            assert rx.statuses[503] == 1
            # Retry-After: 1 was honoured although retry_max is 0.5 s.
            after = [t for t, status in rx.answered]
            i = next(i for i, (_, status) in enumerate(rx.answered) if status == 503)
            assert after[i + 1] - after[i] >= 0.9
        finally:
            rx.down()

    def test_partial_success_dead_lettered_and_counted(
        self, rabbitmq: Any, queue_name: str, service: Make
    ) -> None:
        """A partial success dead-letters the whole request's records (counted), acks them,
        and the rest of the stream still arrives: every record refused by the receiver is in
        the dead letters, none is retried (OTLP forbids it), none duplicated at the receiver."""
        url = amqp_queue_url(rabbitmq, queue_name)
        publish(url, (ecs_record(i) for i in range(300)))
        with OtlpReceiver() as rx:
            rx.partial_next(5)
            svc = service(sources=[{"url": url}], sinks=[{"type": "otlp", "url": rx.url}])
            wait_until(lambda: svc.metrics.value("acked") == 300, timeout=30)
            dead = svc.metrics.value("dead_lettered")
            assert svc.metrics.value("sink_rejected_records") == 5
            # The receiver kept all but the 5 it refused; the whole refused request (those 5
            # and the ones kept with them) is in the dead letters: a superset, nothing lost.
            assert len(rx.uids) == 300 - 5
            assert 5 <= dead <= 300  # 300 when the whole stream was one request
            assert rx.duplicates() == 0


def test_record_before_1970_does_not_stall_the_source(
    rabbitmq: Any, queue_name: str, service: Make
) -> None:
    """One record timed before 1970 among 50: all 50 reach the receiver and are acked, none
    dead-lettered. Before: protobuf refused the negative time, the whole request raised, and
    the batch was retried forever (review2)."""
    url = amqp_queue_url(rabbitmq, queue_name)
    docs = [ecs_record(i) for i in range(50)]
    docs[7]["@timestamp"] = "1969-07-20T20:17:40Z"
    publish(url, docs)
    with OtlpReceiver() as rx:
        svc = service(sources=[{"url": url}], sinks=[{"type": "otlp", "url": rx.url}])
        wait_until(lambda: svc.metrics.value("acked") == 50, timeout=20)
        assert len(rx.uids) == 50
        assert svc.metrics.value("dead_lettered") == 0


def test_collector_log_shows_no_url_password_nor_a_line_per_request(
    rabbitmq: Any, queue_name: str, tmp_path: Any
) -> None:
    """``mqlogging-collector`` at its default INFO level with an OTLP sink whose URL carries a
    password: the log never shows the password, nor one "HTTP Request" line per POST (httpx
    logs each request, full URL included, at INFO; review2)."""
    url = amqp_queue_url(rabbitmq, queue_name)
    publish(url, (ecs_record(i) for i in range(20)))
    with OtlpReceiver() as rx:
        sink_url = rx.url.replace("http://", "http://otel:s3cret-pw@")
        port = free_port()
        config = write_config(
            tmp_path / "collector.toml",
            sources=[{"url": url}],
            sinks=[{"type": "otlp", "url": sink_url}],
            pipeline={"batch_max_wait": 0.2},
            http={"listen": f"127.0.0.1:{port}"},
        )
        proc = CollectorProcess(config, port, tmp_path / "collector.log")
        try:
            wait_until(lambda: len(rx.uids) == 20, timeout=30)
            assert proc.terminate() == 0
            log = proc.log()
        finally:
            proc.close()
    assert "s3cret-pw" not in log
    assert "HTTP Request" not in log


def test_long_retry_after_does_not_hold_up_shutdown(
    rabbitmq: Any, queue_name: str, service: Make
) -> None:
    """A receiver asking for Retry-After: 120 is honoured, but a stop during that wait ends
    at the shutdown deadline (not 120 s later) and gives every message back to the broker."""
    url = amqp_queue_url(rabbitmq, queue_name)
    publish(url, (ecs_record(i) for i in range(50)))
    with OtlpReceiver() as rx:
        rx.fail_next(1000, 503, retry_after="120")
        svc = service(
            sources=[{"url": url}],
            sinks=[{"type": "otlp", "url": rx.url}],
            collector={"shutdown_timeout": 2.0},
        )
        wait_until(lambda: rx.statuses[503] >= 1, timeout=20)
        started = time.monotonic()
        svc.close()
        assert time.monotonic() - started < 20  # generous: far below the 120 s asked for
        assert rx.statuses[503] == 1  # no second request within the Retry-After
        wait_until(lambda: rabbitmq.queue_depth(queue_name) == 50, timeout=20)


@pytest.mark.skipif(not os.environ.get("MQLOGGING_OTLP_URL"), reason="MQLOGGING_OTLP_URL not set")
def test_real_collector() -> None:
    """Opt-in: records written to a real OpenTelemetry Collector are accepted (2xx, no
    partial success) in both encodings."""
    for encoding in ("protobuf", "json"):
        sink = OtlpSink(OtlpSinkConfig(url=os.environ["MQLOGGING_OTLP_URL"], encoding=encoding))  # type: ignore[arg-type]
        try:
            results = sink.write([_record(i) for i in range(20)])
        finally:
            sink.close()
        assert {Outcome.DONE} == {r.outcome for r in results}, results[0].reason
