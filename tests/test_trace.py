"""Trace correlation, message templates and the ``otel`` schema (issue #16).

OpenTelemetry is the real ``opentelemetry-api``/``-sdk``: spans are started with the SDK's
tracer and made current as an application would.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import logging
import subprocess
import sys
import types
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from mqlogging import JsonFormatter, MQHandler
from mqlogging.cli import main
from mqlogging.esbulk import record_time
from mqlogging.formatting import SCHEMAS
from mqlogging.tail import normalise
from mqlogging.wire import read_meta

TRACER = TracerProvider().get_tracer("tests.trace")


def make_record(msg: Any = "job %d done", args: tuple[Any, ...] = (7,), **kw: Any) -> Any:
    record = logging.LogRecord(
        "tests.trace",
        kw.pop("level", logging.ERROR),
        "/a/b.py",
        12,
        msg,
        args,
        kw.pop("exc_info", None),
    )
    record.__dict__.update(kw)
    return record


def fmt(schema: str, record: logging.LogRecord, **options: Any) -> dict[str, Any]:
    doc = orjson.loads(JsonFormatter(schema=schema, **options).format_message(record).body)
    assert isinstance(doc, dict)
    return doc


def trace_fields(doc: dict[str, Any], schema: str) -> tuple[Any, Any, Any] | None:
    """Where each schema keeps the trace id, span id and flags (None: not there)."""
    if schema == "ecs":
        if "trace" not in doc:
            return None
        return doc["trace"]["id"], doc["span"]["id"], doc["trace"]["flags"]
    if schema == "otel":
        return (doc["traceId"], doc["spanId"], doc["flags"]) if "traceId" in doc else None
    return (doc["trace_id"], doc["span_id"], doc["trace_flags"]) if "trace_id" in doc else None


def expected(span: Any, schema: str) -> tuple[str, str, Any]:
    ctx = span.get_span_context()
    flags = int(ctx.trace_flags)
    return (
        f"{ctx.trace_id:032x}",
        f"{ctx.span_id:016x}",
        flags if schema == "otel" else f"{flags:02x}",
    )


@pytest.mark.parametrize("schema", SCHEMAS)
class TestTraceCorrelation:
    def test_active_span_ids_in_every_schema(self, schema: str) -> None:
        """Inside a span, the record carries its trace id, span id and flags, lower hex."""
        with TRACER.start_as_current_span("work") as span:
            doc = fmt(schema, make_record())
        assert trace_fields(doc, schema) == expected(span, schema)

    def test_no_span_no_fields(self, schema: str) -> None:
        """Outside any span (OpenTelemetry imported), no trace field is written."""
        assert trace_fields(fmt(schema, make_record()), schema) is None

    def test_user_field_of_that_name_is_kept_aside(self, schema: str) -> None:
        """A user field named like a trace field never replaces the span's: it goes to extra."""
        name = {"ecs": "trace.id", "otel": "traceId"}.get(schema, "trace_id")
        with TRACER.start_as_current_span("work") as span:
            doc = fmt(schema, make_record(**{name: "forged"}))
        assert trace_fields(doc, schema) == expected(span, schema)
        assert "forged" in json.dumps(doc)

    def test_broken_tracer_never_costs_the_record(
        self, schema: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A tracer implementation that raises leaves the record without trace fields."""
        broken = types.ModuleType("opentelemetry.trace")

        def get_current_span() -> Any:
            raise RuntimeError("broken tracer")

        broken.get_current_span = get_current_span  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "opentelemetry.trace", broken)
        doc = fmt(schema, make_record())
        assert trace_fields(doc, schema) is None
        assert read_meta(doc).id is not None


def test_asyncio_tasks_each_carry_their_own_span() -> None:
    """Two tasks interleaving in their own spans: each record names the span of its task."""
    formatter = JsonFormatter()
    seen: dict[str, tuple[str, str]] = {}

    async def job(name: str) -> None:
        with TRACER.start_as_current_span(name) as span:
            await asyncio.sleep(0)
            doc = orjson.loads(formatter.format_message(make_record(name, ())).body)
            ctx = span.get_span_context()
            assert (doc["trace"]["id"], doc["span"]["id"]) == (
                f"{ctx.trace_id:032x}",
                f"{ctx.span_id:016x}",
            )
            seen[name] = (doc["trace"]["id"], doc["span"]["id"])

    async def both() -> None:
        await asyncio.gather(job("a"), job("b"))

    asyncio.run(both())
    assert seen["a"] != seen["b"]


def test_captured_on_the_caller_not_the_sender(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """Through MQHandler, the ids are those of the span the application logged in, although
    the sender thread (which has no span) publishes the record after the span ended."""
    queue = tmp_path / "queue"
    handler = MQHandler(f"local://{queue}", spool=str(tmp_path / "spool"))
    logger = logging.getLogger("tests.trace.caller")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with TRACER.start_as_current_span("request") as span:
            logger.warning("in the span")
        logger.warning("after it")
        handler.flush()
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert main(["spool", "export", str(queue)]) == 0
    docs = [json.loads(line) for line in capsysbinary.readouterr().out.splitlines()]
    ctx = span.get_span_context()
    assert docs[0]["message"] == "in the span"
    assert docs[0]["trace"]["id"] == f"{ctx.trace_id:032x}"
    assert docs[0]["span"]["id"] == f"{ctx.span_id:016x}"
    assert "trace" not in docs[1]


def test_import_mqlogging_does_not_import_opentelemetry() -> None:
    """No hard dependency: ``import mqlogging`` (and formatting a record) leaves
    ``opentelemetry`` unimported."""
    code = (
        "import logging, sys, mqlogging;"
        "mqlogging.JsonFormatter(schema='otel').format(logging.makeLogRecord({'msg': 'x'}));"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class TestTemplates:
    @pytest.mark.parametrize(
        ("schema", "path"),
        [
            ("ecs", ("log", "template")),
            ("logstash", ("message_template",)),
            ("flat", ("message_template",)),
            ("otel", ("attributes", "log.record.template")),
        ],
    )
    def test_template_beside_the_message(self, schema: str, path: tuple[str, ...]) -> None:
        """The unformatted template (record.msg) is kept next to the formatted message."""
        value: Any = fmt(schema, make_record("job %d done", (7,)))
        for key in path:
            value = value[key]
        assert value == "job %d done"

    def test_no_template_for_a_dict_message(self) -> None:
        """A dict message has no template; a user ``log.template`` goes under extra."""
        doc = fmt("ecs", make_record({"order": 7}, ()))
        assert "template" not in doc["log"]
        doc = fmt("ecs", make_record(**{"log.template": "forged"}))
        assert doc["log"]["template"] == "job %d done"
        assert doc["extra"] == {"log_template": "forged"}


class TestOtelSchema:
    def test_log_data_model_fields(self) -> None:
        """Time in unix nanos, severity, body, scope, resource, attributes of ours and the user's."""
        record = make_record(level=logging.WARNING, user_id=42)
        doc = fmt(
            "otel", record, static_fields={"service": "billing", "site": "CERN"}, hostname="node1"
        )
        # The same instant as the ISO schemas write it (cut to the microsecond): compare with
        # ecs's @timestamp, not with float arithmetic that may round the other way.
        stamp = datetime.strptime(fmt("ecs", record)["@timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z")
        nanos = calendar.timegm(stamp.utctimetuple()) * 10**9 + stamp.microsecond * 1000
        assert doc["timeUnixNano"] == nanos
        assert doc["observedTimeUnixNano"] >= doc["timeUnixNano"]
        assert (doc["severityNumber"], doc["severityText"]) == (13, "WARNING")
        assert doc["body"] == "job 7 done"
        assert doc["scope"] == {"name": "tests.trace"}
        assert doc["resource"] == {
            "service.name": "billing",
            "host.name": "node1",
            "site": "CERN",
            "process.pid": record.process,
        }
        attributes = doc["attributes"]
        assert attributes["log.record.uid"] == record.mqlogging_id
        assert attributes["code.file.path"] == "/a/b.py"
        assert attributes["code.line.number"] == 12
        assert attributes["user_id"] == 42
        assert doc["mqlogging"] == {"schema": "otel"}

    def test_user_keys_that_would_break_an_index_mapping_move_aside(self) -> None:
        """A user attribute ``code`` (scalar) beside our ``code.file.path``, or a static
        ``host`` beside ``host.name``, would be an object/scalar clash in Elasticsearch (the
        record a dead letter): they go under ``extra`` instead, nothing is lost."""
        record = make_record(code=500, exception="t", user_id=1)
        doc = fmt("otel", record, static_fields={"host": "web1", "process.pid": 1, "site": "x"})
        attributes, resource = doc["attributes"], doc["resource"]
        assert attributes["extra"] == {"code": 500, "exception": "t"}
        assert attributes["code.line.number"] == 12
        assert attributes["user_id"] == 1
        assert resource["extra"] == {"host": "web1", "process_pid": 1}
        assert resource["process.pid"] == record.process
        assert resource["site"] == "x"

    @pytest.mark.parametrize(
        ("level", "number"),
        [(5, 1), (10, 5), (11, 6), (19, 8), (20, 9), (30, 13), (40, 17), (50, 21), (99, 24)],
    )
    def test_severity_numbers(self, level: int, number: int) -> None:
        """stdlib levels map to OpenTelemetry severity numbers as its Python SDK maps them."""
        assert fmt("otel", make_record(level=level))["severityNumber"] == number

    def test_exception_attributes(self) -> None:
        """An exception becomes exception.type / exception.message / exception.stacktrace."""
        try:
            raise KeyError("gone")
        except KeyError:
            doc = fmt("otel", make_record(exc_info=sys.exc_info()))
        attributes = doc["attributes"]
        assert attributes["exception.type"] == "KeyError"
        assert attributes["exception.message"] == "'gone'"
        assert attributes["exception.stacktrace"].startswith("Traceback")

    def test_every_reader_understands_it(self) -> None:
        """wire.read_meta (id, ISO time equal to ecs's for the same record, producer, seq),
        the Elasticsearch index time, and tail's normaliser read an otel record."""
        record = make_record(level=logging.ERROR, user_id=42)
        ecs = fmt("ecs", record)
        body = (
            JsonFormatter(schema="otel").format_message(record, {"producer": "p1", "seq": 3}).body
        )
        doc = orjson.loads(body)
        meta = read_meta(doc)
        assert (meta.id, meta.schema, meta.producer, meta.seq) == (
            record.mqlogging_id,
            "otel",
            "p1",
            3,
        )
        assert meta.timestamp == ecs["@timestamp"]
        assert read_meta({**doc, "timeUnixNano": str(doc["timeUnixNano"])}).timestamp == (
            meta.timestamp
        )
        when = record_time(doc)
        assert when is not None
        assert when.isoformat().startswith(ecs["@timestamp"][:19])
        rec = normalise(body)
        assert (rec.level, rec.levelno, rec.logger, rec.message) == (
            "ERROR",
            40,
            "tests.trace",
            "job 7 done",
        )
        assert (rec.template, rec.host) == ("job %d done", doc["resource"]["host.name"])
        assert rec.extras == {"user_id": 42}


@pytest.fixture(autouse=True)
def _no_leftover_span() -> None:
    """Each test starts outside any span (a failing test must not leak one)."""
    assert not trace.get_current_span().get_span_context().is_valid
