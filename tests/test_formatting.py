"""mqlogging.formatting: the JSON wire format of a log record (ecs / logstash / flat)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import decimal
import enum
import json
import logging
import logging.handlers
import re
import socket
import sys
import threading
import uuid
from typing import Any

import orjson
import pytest
from logstash_formatter import LogstashFormatterV1
from pythonjsonlogger.json import JsonFormatter as PjlJsonFormatter

from mqlogging._types import Message
from mqlogging.errors import ConfigurationError
from mqlogging.formatting import (
    DEFAULT_MAX_RECORD_BYTES,
    ECS_VERSION,
    SCHEMAS,
    JsonFormatter,
    bind_context,
    bound_context,
    clear_context,
    get_context,
    unbind_context,
)
from mqlogging.wire import MAX_ID_BYTES, read_id, read_meta

LOGGER = logging.getLogger("tests.formatting")
ENCODERS = ["orjson", "json"]
ECS_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def make_record(
    msg: Any = "hello %s",
    args: Any = ("world",),
    *,
    level: int = logging.INFO,
    exc_info: Any = None,
    extra: dict[str, Any] | None = None,
    stack_info: str | None = None,
    name: str = LOGGER.name,
) -> logging.LogRecord:
    """A record as ``Logger._log`` makes it (extras go through makeRecord's checks)."""
    return LOGGER.makeRecord(
        name, level, "/srv/app/module.py", 42, msg, args, exc_info, "handler", extra, stack_info
    )


def exc_info_of(exc: BaseException) -> Any:
    """A real (type, value, traceback) triple for ``exc``."""
    try:
        raise exc
    except BaseException:
        return sys.exc_info()


def decode(formatter: JsonFormatter, record: logging.LogRecord) -> dict[str, Any]:
    """Format ``record`` and parse it back, strictly (orjson rejects invalid UTF-8)."""
    doc = orjson.loads(formatter.format_message(record).body)
    assert isinstance(doc, dict)
    return doc


def record_id_of(doc: dict[str, Any], schema: str) -> Any:
    """Where each schema keeps the record id."""
    if schema == "otel":
        return doc["attributes"]["log.record.uid"]
    return doc["event"]["id"] if schema == "ecs" else doc["id"]


def fields_of(doc: dict[str, Any], schema: str) -> dict[str, Any]:
    """Where each schema keeps user fields: the top level, or otel's resource (static fields)
    and attributes (the others, those set aside under its ``extra`` attribute too), with the
    message under ``message`` in every schema."""
    if schema != "otel":
        return doc
    attributes = doc["attributes"]
    aside = attributes.get("extra", {})
    return {**doc["resource"], **aside, **attributes, "message": doc["body"]}


def walk_keys(obj: Any, path: str = "") -> list[str]:
    """Every key path of a JSON document."""
    paths = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            paths.append(f"{path}{key}")
            paths.extend(walk_keys(value, f"{path}{key}/"))
    return paths


def assert_valid_ecs(doc: dict[str, Any]) -> None:
    """The ECS fields every ``ecs`` document carries, with ECS types, as nested objects."""
    assert ECS_TIMESTAMP.match(doc["@timestamp"])
    assert isinstance(doc["message"], str)
    log = doc["log"]
    assert log["level"] in {"debug", "info", "warning", "error", "critical"}
    assert isinstance(log["logger"], str)
    assert isinstance(log["origin"]["file"]["name"], str)
    assert isinstance(log["origin"]["file"]["line"], int)
    assert isinstance(log["origin"]["function"], str)
    process = doc["process"]
    assert isinstance(process["pid"], int)
    assert isinstance(process["name"], str)
    assert isinstance(process["thread"]["id"], int)
    assert isinstance(process["thread"]["name"], str)
    assert isinstance(doc["host"]["hostname"], str)
    assert UUID_RE.match(doc["event"]["id"])
    assert doc["ecs"] == {"version": ECS_VERSION}
    # Canonical form: objects, not dotted names.
    assert [p for p in walk_keys(doc) if "." in p.split("/")[-1]] == []


class Unprintable:
    """Both __str__ and __repr__ fail: only the placeholder is left."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class OnlyRepr:
    """__str__ fails, __repr__ works."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        return "<OnlyRepr>"


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


class CustomError(Exception):
    """An exception defined outside builtins (error.type is module-qualified)."""


@pytest.fixture(autouse=True)
def _empty_context() -> Any:
    """Every test starts and ends without context fields."""
    token = clear_context()
    yield
    token.reset()


def test_all_resolves() -> None:
    """Every public name of the module exists (ruff keeps the list isort-sorted)."""
    import mqlogging.formatting as module

    assert len(set(module.__all__)) == len(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), name


class TestConfiguration:
    def test_default_schema_is_ecs_with_orjson(self) -> None:
        """Without options the formatter writes ECS and encodes with orjson (installed here)."""
        formatter = JsonFormatter()
        assert formatter.schema == "ecs"
        assert formatter.encoder == "orjson"
        assert formatter.max_bytes == DEFAULT_MAX_RECORD_BYTES == 256 * 1024
        assert_valid_ecs(decode(formatter, make_record()))

    def test_unknown_schema_is_a_one_line_configuration_error(self) -> None:
        """A misspelt schema fails at construction, naming the value and the known schemas."""
        with pytest.raises(ConfigurationError) as info:
            JsonFormatter(schema="ecss")
        message = str(info.value)
        assert "\n" not in message
        assert "'ecss'" in message
        for schema in SCHEMAS:
            assert schema in message

    @pytest.mark.parametrize("max_bytes", [0, -1, 1023, True, "4096", 4096.0])
    def test_bad_max_bytes_rejected(self, max_bytes: Any) -> None:
        """max_bytes must be an int of at least 1 KiB (or None)."""
        with pytest.raises(ConfigurationError, match="max_bytes"):
            JsonFormatter(max_bytes=max_bytes)

    @pytest.mark.parametrize(
        ("options", "needle"),
        [
            ({"schema": "ecs", "fmt": "%(message)s"}, "fmt"),
            ({"schema": "logstash", "fmt": "%(message)s"}, "fmt"),
            ({"schema": "ecs", "rename_fields": {"message": "msg"}}, "rename_fields"),
            ({"static_fields": ["service"]}, "static_fields"),
            ({"static_fields": {1: "x"}}, "static_fields"),
            ({"encoder": "ujson"}, "encoder"),
            ({"json_default": "str"}, "json_default"),
            ({"schema": "flat", "fmt": "%(message", "style": "%"}, "format"),
        ],
    )
    def test_bad_options_rejected(self, options: dict[str, Any], needle: str) -> None:
        """Options that do not apply or have bad values fail with a message naming them."""
        with pytest.raises(ConfigurationError, match=needle):
            JsonFormatter(**options)

    def test_stdlib_json_encoder_on_request(self) -> None:
        """encoder='json' uses the standard library and still writes compact JSON."""
        formatter = JsonFormatter(encoder="json")
        assert formatter.encoder == "json"
        body = formatter.format_message(make_record()).body
        assert b'": ' not in body
        assert_valid_ecs(orjson.loads(body))

    def test_hostname_looked_up_once_and_overridable(self) -> None:
        """The host name defaults to socket.gethostname() and can be set explicitly."""
        assert JsonFormatter().hostname == socket.gethostname()
        doc = decode(JsonFormatter(hostname="wn-042.example.org"), make_record())
        assert doc["host"] == {"hostname": "wn-042.example.org"}


class TestEcs:
    def test_record_fields_map_to_ecs(self) -> None:
        """Each LogRecord attribute lands on its ECS field, as nested objects."""
        record = make_record("user %s logged in", ("bob",), level=logging.WARNING)
        doc = decode(JsonFormatter(), record)
        assert_valid_ecs(doc)
        expected = {
            "message": "user bob logged in",
            "log": {
                "level": "warning",
                "logger": LOGGER.name,
                "origin": {"file": {"name": "module.py", "line": 42}, "function": "handler"},
                "template": "user %s logged in",
            },
            "process": {
                "pid": record.process,
                "name": record.processName,
                "thread": {"id": record.thread, "name": record.threadName},
            },
            "host": {"hostname": socket.gethostname()},
            "event": {"id": record.mqlogging_id},
            "ecs": {"version": ECS_VERSION},
            "mqlogging": {"schema": "ecs"},
        }
        assert expected == {k: v for k, v in doc.items() if k != "@timestamp"}

    def test_timestamp_is_record_creation_in_utc_with_microseconds(self) -> None:
        """@timestamp is record.created (not formatting time) in UTC, to the microsecond."""
        record = make_record()
        record.created = 1714979289.123456
        doc = decode(JsonFormatter(), record)
        assert doc["@timestamp"] == "2024-05-06T07:08:09.123456Z"
        record2 = make_record()
        parsed = datetime.datetime.strptime(
            decode(JsonFormatter(), record2)["@timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z"
        )
        assert abs(parsed.timestamp() - record2.created) < 1e-5

    def test_static_fields_use_ecs_homes(self) -> None:
        """Well-known static names map to service.*, dotted names become objects."""
        formatter = JsonFormatter(
            static_fields={
                "service": "billing",
                "service_version": "1.2.3",
                "environment": "prod",
                "event.dataset": "billing.log",
                "site": "LCG.CERN.ch",
                "labels": {"pilot_id": "p-17"},
            }
        )
        doc = decode(formatter, make_record())
        assert_valid_ecs(doc)
        assert doc["service"] == {"name": "billing", "version": "1.2.3", "environment": "prod"}
        assert doc["event"] == {"id": doc["event"]["id"], "dataset": "billing.log"}
        assert doc["site"] == "LCG.CERN.ch"
        assert doc["labels"] == {"pilot_id": "p-17"}

    def test_extras_are_top_level_fields(self) -> None:
        """extra={...} fields appear at the top level; dotted ones as nested objects."""
        record = make_record(extra={"user_id": 42, "http.request.method": "GET", "tags": ["a"]})
        doc = decode(JsonFormatter(), record)
        assert_valid_ecs(doc)
        assert doc["user_id"] == 42
        assert doc["http"] == {"request": {"method": "GET"}}
        assert doc["tags"] == ["a"]
        assert "extra" not in doc

    def test_extras_found_on_any_record_shape(self) -> None:
        """Extras are found whatever the record's attribute order (subclasses, re-set attributes)."""

        class EarlyRecord(logging.LogRecord):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self.early = "set before LogRecord.__init__"
                super().__init__(*args, **kwargs)

        early = EarlyRecord(LOGGER.name, logging.INFO, "/x.py", 1, "m", (), None)
        assert decode(JsonFormatter(), early)["early"] == "set before LogRecord.__init__"
        shuffled = make_record(extra={"first": 1, "second": 2})
        for name in ("process", "msecs"):  # moved to the end of the attribute dict
            shuffled.__dict__[name] = shuffled.__dict__.pop(name)
        doc = decode(JsonFormatter(), shuffled)
        assert (doc["first"], doc["second"]) == (1, 2)
        rebuilt = logging.makeLogRecord({**make_record(extra={"k": "v"}).__dict__})
        assert decode(JsonFormatter(), rebuilt)["k"] == "v"

    def test_colliding_user_fields_move_under_extra(self) -> None:
        """A user field never replaces an ECS field the formatter writes, nor an ECS object.

        It is kept under ``extra.<path>`` instead: nothing is lost and the document keeps the
        types an ECS index template expects.
        """
        formatter = JsonFormatter(static_fields={"message": "static msg", "host.hostname": "h"})
        record = make_record(
            extra={
                "host": "web1",  # scalar where ECS has an object
                "log.level": "LOUD",  # a field the formatter writes
                "user": "bob",  # scalar where ECS has an object we do not write
                "event": {"id": "forged", "kind": "event"},  # merge, keeping our id
            }
        )
        with bind_context(**{"@timestamp": "yesterday"}):
            doc = decode(formatter, record)
        assert_valid_ecs(doc)
        assert doc["message"] == "hello world"
        assert doc["log"]["level"] == "info"
        assert doc["host"] == {"hostname": socket.gethostname()}
        assert doc["event"] == {"id": record.mqlogging_id, "kind": "event"}
        assert doc["extra"] == {
            "message": "static msg",
            "host_hostname": "h",
            "@timestamp": "yesterday",
            "host": "web1",
            "log_level": "LOUD",
            "user": "bob",
            "event_id": "forged",
        }

    def test_dict_extras_merge_into_ecs_objects(self) -> None:
        """A dict (or dotted) user field adds to an ECS object the formatter writes."""
        record = make_record(extra={"host": {"ip": ["10.0.0.1"]}, "process.title": "worker"})
        doc = decode(JsonFormatter(), record)
        assert doc["host"] == {"hostname": socket.gethostname(), "ip": ["10.0.0.1"]}
        assert doc["process"]["title"] == "worker"
        assert doc["process"]["pid"] == record.process

    def test_shared_static_objects_are_never_mutated(self) -> None:
        """Merging a record's fields into a static object leaks into no other record."""
        static = {"service": {"name": "api"}}
        formatter = JsonFormatter(static_fields=static)
        first = decode(formatter, make_record(extra={"service": {"version": "2"}, "host.ip": "x"}))
        second = decode(formatter, make_record())
        assert first["service"] == {"name": "api", "version": "2"}
        assert second["service"] == {"name": "api"}
        assert second["host"] == {"hostname": socket.gethostname()}
        assert static == {"service": {"name": "api"}}

    def test_exception_is_structured_not_folded_into_message(self) -> None:
        """exc_info becomes error.type/message/stack_trace; the message stays the message."""
        record = make_record("it failed", (), exc_info=exc_info_of(ValueError("bad value")))
        doc = decode(JsonFormatter(), record)
        assert_valid_ecs(doc)
        assert doc["message"] == "it failed"
        assert doc["error"]["type"] == "ValueError"
        assert doc["error"]["message"] == "bad value"
        assert doc["error"]["stack_trace"].startswith("Traceback (most recent call last):")
        assert doc["error"]["stack_trace"].endswith("ValueError: bad value")

    def test_exception_type_is_module_qualified(self) -> None:
        """error.type names non-builtin exceptions with their module, as ECS examples do."""
        doc = decode(JsonFormatter(), make_record(exc_info=exc_info_of(CustomError("x"))))
        assert doc["error"]["type"] == f"{__name__}.CustomError"

    def test_exc_text_without_exc_info(self) -> None:
        """A record whose traceback arrived pre-rendered (SocketHandler pickles) keeps it."""
        sent = make_record(exc_info=exc_info_of(KeyError("k")))
        logging.Formatter().format(sent)  # what SocketHandler.makePickle does before sending
        received = logging.makeLogRecord({**sent.__dict__, "exc_info": None})
        doc = decode(JsonFormatter(), received)
        assert doc["error"]["stack_trace"].endswith("KeyError: 'k'")

    def test_user_error_fields_allowed_without_exception(self) -> None:
        """Without an exception, error.* is free for the caller (ECS-aware logging)."""
        doc = decode(JsonFormatter(), make_record(extra={"error.message": "timeout"}))
        assert doc["error"] == {"message": "timeout"}
        assert "extra" not in doc

    def test_stack_info_is_its_own_field(self) -> None:
        """stack_info goes to log.stack_info, not into the message."""
        record = make_record(stack_info="Stack (most recent call last):\n  File 'x', line 1")
        doc = decode(JsonFormatter(), record)
        assert doc["message"] == "hello world"
        assert doc["log"]["stack_info"] == "Stack (most recent call last):\n  File 'x', line 1"

    def test_dict_message(self) -> None:
        """A dict message gives its fields; its 'message' key is the message; it is not mutated."""
        payload = {"message": "structured", "order_id": 7}
        doc = decode(JsonFormatter(), make_record(payload, ()))
        assert doc["message"] == "structured"
        assert doc["order_id"] == 7
        assert payload == {"message": "structured", "order_id": 7}
        assert decode(JsonFormatter(), make_record({"k": 1}, ()))["message"] == ""


# Names the schemas write themselves (or prefixes of them), and user-looking names beside them.
_OWNED_LOOKING = (
    "name", "levelname", "levelno", "message", "msg", "args", "@timestamp", "timestamp", "id",
    "host", "process", "processName", "thread", "threadName", "source_host", "@version",
    "exception", "exc_info", "exc_text", "stack_info", "log", "event", "ecs", "error",
    "trace_id", "span_id", "trace_flags", "message_template", "mqlogging", "pathname",
    "lineno", "funcName", "created", "msecs", "relativeCreated", "module", "filename",
    "log.level", "event.id", "mqlogging.seq", "extra", "attributes", "body", "severityText",
    "severityNumber", "resource", "scope", "timeUnixNano", "log.record.uid", "code.file.path",
    "thread.id",
)  # fmt: skip
_STDLIB_REFUSES = frozenset(make_record().__dict__) | {"message", "asctime"}
_SCHEMA_VARIANTS = {
    **{schema: {"schema": schema} for schema in SCHEMAS},
    "flat with fmt": {"schema": "flat", "fmt": "%(levelname)s %(name)s %(lineno)d %(message)s"},
    "flat renamed": {
        "schema": "flat", "fmt": "%(levelname)s %(name)s %(message)s",
        "rename_fields": {"levelname": "level"},
    },
}  # fmt: skip


def _leaves(doc: Any, path: tuple[str, ...] = ()) -> Any:
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _leaves(value, (*path, key))
    else:
        yield path, doc


def _at(doc: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


class TestUserFieldsNeverReplaceOurs:
    """The formatter's promise, in every schema: a user field named like one the formatter
    writes (level, logger, time, id, message, host, process, thread, trace, ``mqlogging``...)
    never replaces it and is never lost (it goes under ``extra``), whichever way it comes."""

    EXC_INFO = exc_info_of(ValueError("bad"))

    def _format(
        self, options: dict[str, Any], layer: str, key: str | None, exc: bool
    ) -> dict[str, Any]:
        """The document of one record with ``key="USER"`` given through ``layer`` (none for
        ``key=None``: the baseline, with a dict message for the dict layer); with ``exc``, the
        record has an exception and stack info."""
        user = {} if key is None else {key: "USER"}
        formatter = JsonFormatter(**options, static_fields=user if layer == "static" else None)
        msg: Any = {"message": "hello", **user} if layer == "dict" else "hello"
        record = make_record(
            msg, (), extra=user if layer == "extra" else None,
            exc_info=self.EXC_INFO if exc else None, stack_info="Stack:\n  x" if exc else None,
        )  # fmt: skip
        record.created, record.msecs, record.relativeCreated = 1700000000.5, 500.0, 1.0
        record.mqlogging_id = "fixed-id"
        with bound_context(**(user if layer == "context" else {})):
            return decode(formatter, record)

    @pytest.mark.parametrize("exc", [False, True], ids=["plain", "exception"])
    @pytest.mark.parametrize("layer", ["static", "context", "dict", "extra"])
    @pytest.mark.parametrize("variant", list(_SCHEMA_VARIANTS))
    def test_in_every_schema_and_from_every_source(
        self, variant: str, layer: str, exc: bool
    ) -> None:
        """For each name, from static fields, context, a dict message and ``extra=``: every
        field of the document without the user field keeps its value, and the user value is
        in the document (before, ``name``/``levelname`` and every other record attribute
        from a dict message replaced the logger's in ``logstash``, and ``fmt``'s fields in
        ``flat``; from static fields and context they were dropped in ``logstash``)."""
        options = _SCHEMA_VARIANTS[variant]
        baseline = self._format(options, layer, None, exc)
        failures = []
        for key in _OWNED_LOOKING:
            if (layer, key) == ("dict", "message") or (layer == "extra" and key in _STDLIB_REFUSES):
                continue  # the dict message's own message; names makeRecord refuses
            doc = self._format(options, layer, key, exc)
            if "USER" not in json.dumps(doc):
                failures.append(f"{key}: lost")
            for path, value in _leaves(baseline):
                if "extra" in path or path == ("observedTimeUnixNano",):
                    continue
                if _at(doc, path) != value:
                    failures.append(f"{key}: {'.'.join(path)} {value!r} -> {_at(doc, path)!r}")
        assert not failures, failures


class TestLogstashCompatibility:
    """Field for field what logstash_formatter.LogstashFormatterV1 writes for the same record.

    Allowed differences: ``@timestamp`` (V1 takes the formatting time in milliseconds, we take
    record.created in microseconds) and our added ``id`` and ``message_template``.
    """

    CASES = {
        "plain": lambda: make_record("plain message", ()),
        "args": lambda: make_record("user %s has %d items", ("bob", 3)),
        "extra": lambda: make_record(extra={"user_id": 42, "site": "CERN", "_private": 1}),
        "exception": lambda: make_record("boom", (), exc_info=exc_info_of(ValueError("bad"))),
        "dict msg": lambda: make_record({"order": 7, "state": "paid"}, ()),
        "stack_info": lambda: make_record(stack_info="Stack (most recent call last):\n  x"),
        "unicode": lambda: make_record("caf\u00e9 %s", ("\u2603",)),
        "object arg": lambda: make_record("at %s", (datetime.date(2024, 5, 6),)),
    }

    @staticmethod
    def compare(
        ours: JsonFormatter, theirs: LogstashFormatterV1, record: logging.LogRecord
    ) -> None:
        expected = json.loads(theirs.format(record))  # before ours stamps the record id
        actual = decode(ours, record)
        assert UUID_RE.match(actual.pop("id"))
        assert actual.pop("mqlogging") == {"schema": "logstash"}  # ours: see mqlogging.wire
        template = record.msg if isinstance(record.msg, str) else None
        assert actual.pop("message_template", None) == template
        ts_expected = datetime.datetime.strptime(
            expected.pop("@timestamp"), "%Y-%m-%dT%H:%M:%S.%fZ"
        )
        ts_actual = datetime.datetime.strptime(actual.pop("@timestamp"), "%Y-%m-%dT%H:%M:%S.%fZ")
        assert abs((ts_actual - ts_expected).total_seconds()) < 5
        assert expected == actual
        assert list(expected) == list(actual)  # same field order too

    @pytest.mark.parametrize("case", list(CASES))
    def test_same_fields_as_logstash_formatter_v1(self, case: str) -> None:
        """For each kind of record, our logstash document equals V1's but for the allowed diffs."""
        self.compare(JsonFormatter(schema="logstash"), LogstashFormatterV1(), self.CASES[case]())

    def test_static_fields_are_v1_extra_defaults(self) -> None:
        """static_fields behave like V1's ``{"extra": {...}}`` defaults (first in the document);
        one named like a record field differs (tests/test_logstash_differences.py)."""
        static = {"service": "api", "site": "CERN"}
        theirs = LogstashFormatterV1(fmt=json.dumps({"extra": static}))
        self.compare(JsonFormatter(schema="logstash", static_fields=static), theirs, make_record())

    def test_exception_as_list_of_lines(self) -> None:
        """Like V1, the exception is traceback.format_exception's list, next to the message."""
        doc = decode(JsonFormatter(schema="logstash"), self.CASES["exception"]())
        assert doc["message"] == "boom"
        assert doc["exception"][0] == "Traceback (most recent call last):\n"
        assert doc["exception"][-1] == "ValueError: bad\n"

    def test_message_is_not_str_formatted_with_record_fields(self) -> None:
        """Unlike V1, braces in a message are kept (V1 runs msg.format(**record.__dict__))."""
        record = make_record("template {name} kept", ())
        assert json.loads(LogstashFormatterV1().format(record))["message"] == (
            f"template {LOGGER.name} kept"
        )
        assert decode(JsonFormatter(schema="logstash"), record)["message"] == "template {name} kept"


class TestFlat:
    """python-json-logger's own layout, plus ``timestamp`` and ``id``."""

    CASES = {
        "plain": ({}, make_record),
        "extra": ({}, lambda: make_record(extra={"user_id": 42})),
        "exception": ({}, lambda: make_record(exc_info=exc_info_of(ValueError("bad")))),
        "stack_info": ({}, lambda: make_record(stack_info="Stack (most recent call last):\n")),
        "dict msg": ({}, lambda: make_record({"order": 7}, ())),
        "static": ({"static_fields": {"service": "api"}}, make_record),
        "fmt": ({"fmt": "%(levelname)s %(name)s %(message)s"}, make_record),
        "fmt list": ({"fmt": ["levelname", "lineno"]}, make_record),
        "rename": (
            {"fmt": "%(levelname)s %(message)s", "rename_fields": {"levelname": "level"}},
            make_record,
        ),
    }

    @pytest.mark.parametrize("case", list(CASES))
    def test_same_fields_as_python_json_logger(self, case: str) -> None:
        """Our flat document equals python-json-logger's JsonFormatter's, plus id and timestamp."""
        options, factory = self.CASES[case]
        record = factory()
        expected = json.loads(PjlJsonFormatter(**options).format(record))
        actual = decode(JsonFormatter(schema="flat", **options), record)
        assert UUID_RE.match(actual.pop("id"))
        assert actual.pop("mqlogging") == {"schema": "flat"}  # ours: see mqlogging.wire
        template = record.msg if isinstance(record.msg, str) else None
        assert actual.pop("message_template", None) == template
        assert re.match(r"^\d{4}-.*T.*\.\d{6}\+00:00$", actual.pop("timestamp"))
        assert expected == actual

    def test_asctime_uses_datefmt(self) -> None:
        """An asctime field in fmt is rendered with datefmt, as logging.Formatter does."""
        formatter = JsonFormatter("%(asctime)s %(message)s", "%Y", schema="flat")
        record = make_record()
        assert decode(formatter, record)["asctime"] == formatter.formatTime(record, "%Y")


@pytest.mark.parametrize("schema", SCHEMAS)
class TestUserFields:
    def test_extra_static_and_context_fields_in_every_schema(self, schema: str) -> None:
        """All three sources of user fields reach the document in every schema."""
        formatter = JsonFormatter(schema=schema, static_fields={"site": "CERN"})
        with bound_context(request_id="r-1"):
            doc = fields_of(decode(formatter, make_record(extra={"user_id": 42})), schema)
        assert (doc["site"], doc["request_id"], doc["user_id"]) == ("CERN", "r-1", 42)

    def test_precedence_static_context_extra(self, schema: str) -> None:
        """On a name clash, extra beats context, which beats static fields (in ``otel``,
        static fields describe the process: the resource keeps them, attributes win)."""
        formatter = JsonFormatter(schema=schema, static_fields={"a": "static", "b": "static"})
        with bind_context(a="context", c="context"):
            doc = fields_of(decode(formatter, make_record(extra={"a": "extra"})), schema)
        assert (doc["a"], doc["b"], doc["c"]) == ("extra", "static", "context")

    def test_user_id_field_does_not_replace_record_id(self, schema: str) -> None:
        """A user field named like the id field is moved under extra; the id stays ours."""
        key = {"ecs": "event.id", "otel": "log.record.uid"}.get(schema, "id")
        record = make_record(extra={key: "forged"})
        message = JsonFormatter(schema=schema).format_message(record)
        doc = orjson.loads(message.body)
        assert record_id_of(doc, schema) == message.id != "forged"
        assert fields_of(doc, schema)["extra"] == {key.replace(".", "_"): "forged"}

    def test_user_fields_never_shadow_the_time_or_namespace_elasticsearch_sees(
        self, schema: str
    ) -> None:
        """A user field ``@timestamp`` (the time Elasticsearch, ``mqlogging errors`` and the
        date-based index use for every schema) or a dotted key into ``mqlogging`` (which
        Elasticsearch expands into our namespace: ``mqlogging.seq`` as text is a mapping
        error, ``mqlogging.ingest.identity`` a forged identity) never stays at the top level
        of the document: it is moved under ``extra`` like every shadowing field. (In ``flat``
        both stayed: the record went to ES with the user's time, or was dead-lettered.)"""
        forged = {"@timestamp": "forged", "mqlogging.seq": "forged", "mqlogging.x.y": 1}
        doc = decode(JsonFormatter(schema=schema), make_record(extra=forged))
        assert doc.get("@timestamp") != "forged"
        assert not [key for key in doc if key.startswith("mqlogging.")]
        assert doc["mqlogging"] == {"schema": schema}
        assert read_meta(doc).timestamp is not None

    def test_mqlogging_id_attribute_is_not_a_user_field(self, schema: str) -> None:
        """The id stamped on the record never shows up as an extra field."""
        doc = decode(JsonFormatter(schema=schema), make_record())
        assert "mqlogging_id" not in json.dumps(doc)


class TestContext:
    def test_bind_and_reset(self) -> None:
        """bind_context adds fields; its token restores the previous fields."""
        outer = bind_context(a=1)
        inner = bind_context(b=2, a=3)
        assert dict(get_context()) == {"a": 3, "b": 2}
        inner.reset()
        assert dict(get_context()) == {"a": 1}
        outer.reset()
        assert dict(get_context()) == {}

    def test_token_is_a_context_manager(self) -> None:
        """``with bind_context(...)`` unbinds on exit."""
        with bind_context(a=1):
            assert dict(get_context()) == {"a": 1}
        assert dict(get_context()) == {}

    def test_bound_context_restores_after_exception(self) -> None:
        """bound_context restores the fields even when the block raises."""
        seen: list[dict[str, Any]] = []

        def fail_inside() -> None:
            with bound_context(a=1) as fields:
                seen.append(dict(fields))
                raise RuntimeError

        with pytest.raises(RuntimeError):
            fail_inside()
        assert seen == [{"a": 1}]
        assert dict(get_context()) == {}

    def test_unbind_and_clear(self) -> None:
        """unbind_context removes named fields; clear_context removes all."""
        bind_context(a=1, b=2, c=3)
        unbind_context("a", "missing")
        assert dict(get_context()) == {"b": 2, "c": 3}
        clear_context()
        assert dict(get_context()) == {}

    def test_view_is_read_only_and_snapshots_are_stable(self) -> None:
        """The context mapping cannot be mutated, and a later bind does not change a snapshot."""
        bind_context(a=1)
        snapshot = get_context()
        with pytest.raises(TypeError):
            snapshot["a"] = 2  # type: ignore[index]
        bind_context(a=2)
        assert snapshot["a"] == 1

    def test_threads_do_not_see_each_other(self) -> None:
        """Fields bound in one thread never appear in a record formatted in another."""
        formatter = JsonFormatter()
        barrier = threading.Barrier(3, timeout=10)
        seen: dict[str, Any] = {}
        errors: list[BaseException] = []

        def worker(name: str) -> None:
            try:
                with bound_context(worker=name, **{name: True}):
                    barrier.wait()  # every thread has bound before any formats
                    seen[name] = decode(formatter, make_record())
                    barrier.wait()  # no thread unbinds before all have formatted
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def bystander() -> None:
            barrier.wait()
            seen["bystander"] = decode(formatter, make_record())
            barrier.wait()

        threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
        threads.append(threading.Thread(target=bystander))
        with bound_context(main=True):
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=10)
        assert errors == []
        assert (seen["a"]["worker"], seen["b"]["worker"]) == ("a", "b")
        assert "b" not in seen["a"]
        assert "a" not in seen["b"]
        for doc in seen.values():
            assert "main" not in doc  # new threads start with an empty context
        assert "worker" not in seen["bystander"]

    def test_asyncio_tasks_are_isolated_and_inherit_from_their_creator(self) -> None:
        """Each task sees the fields bound before it was created plus its own, never a sibling's."""
        formatter = JsonFormatter()

        async def task(name: str, bound: asyncio.Event, go: asyncio.Event) -> dict[str, Any]:
            bind_context(task=name)
            bound.set()
            await go.wait()  # interleave: both tasks bound before either formats
            return decode(formatter, make_record())

        async def main() -> list[dict[str, Any]]:
            bind_context(request="r-1")
            events = [asyncio.Event() for _ in range(3)]
            go = events[2]
            tasks = [
                asyncio.create_task(task(n, e, go)) for n, e in zip("ab", events[:2], strict=True)
            ]
            await asyncio.wait_for(asyncio.gather(events[0].wait(), events[1].wait()), 10)
            go.set()
            docs = await asyncio.wait_for(asyncio.gather(*tasks), 10)
            docs.append(decode(formatter, make_record()))
            return docs

        a, b, parent = asyncio.run(main())
        assert (a["task"], a["request"]) == ("a", "r-1")
        assert (b["task"], b["request"]) == ("b", "r-1")
        assert "task" not in parent
        assert parent["request"] == "r-1"


ODD_VALUES: dict[str, Any] = {
    "object": object(),
    "set": {1},
    "bytes": b"\x00\xff",
    "datetime": datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc),
    "decimal": decimal.Decimal("1.10"),
    "uuid": uuid.UUID(int=1),
    "enum": Colour.RED,
    "dataclass": Point(1, 2),
    "class": Point,
    "exception": ValueError("inner"),
    "unprintable": Unprintable(),
    "only_repr": OnlyRepr(),
    "nan": float("nan"),
    "inf": float("-inf"),
    "huge_int": 2**70,
    "odd_keys": {1: "int", None: "none", (1, 2): "tuple"},
    "surrogate": "bad \ud800 char",
}


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("schema", SCHEMAS)
class TestUnencodableValues:
    def test_odd_values_never_fail(self, schema: str, encoder: str) -> None:
        """Every kind of value is encoded (stringified if need be) into strict, valid JSON."""
        formatter = JsonFormatter(schema=schema, encoder=encoder)
        cyclic: list[Any] = [1]
        cyclic.append(cyclic)
        deep: list[Any] = []
        node = deep
        for _ in range(1000):
            node.append([])
            node = node[0]
        extra = {**ODD_VALUES, "cyclic": cyclic, "deep": deep}
        with bound_context(ctx_object=Unprintable()):
            doc = fields_of(decode(formatter, make_record(extra=extra)), schema)
        assert doc["unprintable"] == "__could_not_encode__"
        assert doc["only_repr"] == "<OnlyRepr>"
        assert doc["ctx_object"] == "__could_not_encode__"
        assert doc["decimal"] == "1.10"
        assert doc["exception"] == "ValueError: inner"
        assert doc["nan"] is None
        assert str(doc["huge_int"]) == str(2**70)
        assert doc["surrogate"].startswith("bad ")

    def test_plain_odd_values_keep_python_json_logger_conversions(
        self, schema: str, encoder: str
    ) -> None:
        """Without a failure elsewhere in the record, the usual conversions apply."""
        extra = {k: ODD_VALUES[k] for k in ("bytes", "datetime", "enum", "dataclass", "class")}
        doc = decode(JsonFormatter(schema=schema, encoder=encoder), make_record(extra=extra))
        doc = fields_of(doc, schema)
        assert doc["bytes"] == "AP8="
        assert doc["datetime"].startswith("2024-05-06T07:08:09")
        assert doc["enum"] == "red"
        assert doc["dataclass"] == {"x": 1, "y": 2}
        assert doc["class"] == "Point"

    def test_unprintable_message_and_bad_args_keep_the_record(
        self, schema: str, encoder: str
    ) -> None:
        """A message that cannot be rendered is salvaged, not lost as stdlib logging would."""
        formatter = JsonFormatter(schema=schema, encoder=encoder)
        doc = fields_of(decode(formatter, make_record("count %d", ("not a number",))), schema)
        assert doc["message"].startswith("count %d")
        assert "not a number" in doc["message"]
        doc = fields_of(decode(formatter, make_record(Unprintable(), ())), schema)
        assert doc["message"].startswith("__could_not_encode__")

    def test_json_default_is_used_and_may_fail(self, schema: str, encoder: str) -> None:
        """A user json_default converts unknown values; if it raises, ours takes over."""

        class Vector:
            def __init__(self, x: int, y: int) -> None:
                self.x, self.y = x, y

        def default(obj: Any) -> Any:
            if isinstance(obj, Vector):
                return f"V({obj.x},{obj.y})"
            raise TypeError("unknown")

        formatter = JsonFormatter(schema=schema, encoder=encoder, json_default=default)
        doc = fields_of(decode(formatter, make_record(extra={"v": Vector(1, 2), "s": {1}})), schema)
        assert doc["v"] == "V(1,2)"
        assert doc["s"] == [1]


class TestHooks:
    def test_subclass_hooks_are_honoured(self) -> None:
        """Overriding python-json-logger's add_fields/process_log_record works as in pjl."""

        class Custom(JsonFormatter):
            def add_fields(self, log_data: dict[str, Any], record: Any, message_dict: Any) -> None:
                super().add_fields(log_data, record, message_dict)
                log_data["added"] = True

            def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
                log_data["processed"] = True
                return log_data

        doc = decode(Custom(), make_record())
        assert (doc["added"], doc["processed"]) == (True, True)
        assert_valid_ecs(doc)

    def test_jsonify_override_is_the_encoder(self) -> None:
        """A subclass's jsonify_log_record produces the body, as python-json-logger encoders do."""

        class Sorted(JsonFormatter):
            def jsonify_log_record(self, log_data: dict[str, Any]) -> str:
                return json.dumps(log_data, sort_keys=True, default=str)

        body = Sorted(schema="flat").format_message(make_record()).body
        assert list(json.loads(body)) == sorted(json.loads(body))

    def test_format_returns_the_body_with_prefix(self) -> None:
        """format() is the body as text, with the optional prefix; the body never has it."""
        formatter = JsonFormatter(prefix="@cee: ")
        record = make_record()
        text = formatter.format(record)
        body = formatter.format_message(record).body
        assert text == "@cee: " + body.decode()


@pytest.mark.parametrize("schema", SCHEMAS)
class TestSizeCap:
    LIMIT = 4096

    def check(self, schema: str, record: logging.LogRecord) -> dict[str, Any]:
        message = JsonFormatter(schema=schema, max_bytes=self.LIMIT).format_message(record)
        assert len(message.body) <= self.LIMIT
        doc = orjson.loads(message.body)
        assert doc["mqlogging"]["truncated"] is True
        assert doc["mqlogging"]["original_bytes"] > self.LIMIT
        assert record_id_of(doc, schema) == message.id
        return fields_of(doc, schema)

    def test_long_message_is_cut_keeping_head_and_tail(self, schema: str) -> None:
        """A huge message is shortened around an ellipsis; the record is kept and marked."""
        doc = self.check(schema, make_record("HEAD" + "x" * 100_000 + "TAIL", ()))
        assert doc["message"].startswith("HEAD")
        assert doc["message"].endswith("TAIL")
        assert "\u2026" in doc["message"]

    def test_multibyte_text_is_measured_in_bytes(self, schema: str) -> None:
        """The cap is on encoded UTF-8 bytes, not characters."""
        self.check(schema, make_record("\u2603" * 50_000, ()))
        self.check(schema, make_record("\x00" * 50_000, ()))  # 6 bytes each once escaped

    def test_huge_exception_is_cut(self, schema: str) -> None:
        """A huge exception (message and traceback) is shortened too; the message is kept."""
        error = ValueError("E" * 60_000 + "END")
        doc = self.check(schema, make_record("it failed", (), exc_info=exc_info_of(error)))
        assert doc["message"] == "it failed"
        if schema == "ecs":
            assert doc["error"]["type"] == "ValueError"
            assert doc["error"]["stack_trace"].endswith("END")

    def test_large_extras_are_cut(self, schema: str) -> None:
        """Large extra containers and strings are shortened, not dropped."""
        doc = self.check(
            schema, make_record(extra={"payload": list(range(100_000)), "blob": "b" * 50_000})
        )
        assert doc["payload"][:3] == [0, 1, 2]
        assert doc["blob"].startswith("bbb")

    def test_thousands_of_fields_drop_non_essential_ones(self, schema: str) -> None:
        """When cutting values is not enough, optional fields go, and the marker lists them
        (``otel``: the attributes keep their first entries, the record id first)."""
        if schema == "otel":
            doc = self.check(schema, make_record(extra={f"field_{i}": i for i in range(5000)}))
            assert doc["\u2026"].endswith("more keys")
            assert doc["message"] == "hello world"
            return
        doc = self.check(schema, make_record(extra={f"field_{i}": i for i in range(5000)}))
        assert doc["mqlogging"]["dropped_count"] >= 5000
        assert "field_0" in doc["mqlogging"]["dropped_fields"]
        assert doc["message"] == "hello world"

    def test_smallest_cap_with_everything_huge(self, schema: str) -> None:
        """Even at the smallest cap, with every field oversized, a valid marked record remains."""
        record = make_record(
            "m" * 100_000,
            (),
            name="logger." + "n" * 5000,
            exc_info=exc_info_of(ValueError("v" * 100_000)),
            extra={f"{'k' * 200}_{i}": "v" * 100 for i in range(2000)},
            stack_info="s" * 100_000,
        )
        message = JsonFormatter(schema=schema, max_bytes=1024).format_message(record)
        assert len(message.body) <= 1024
        doc = orjson.loads(message.body)
        assert record_id_of(doc, schema) == message.id
        assert doc["mqlogging"]["truncated"] is True
        if schema != "otel":  # otel's user fields are one attributes object, cut not dropped
            assert doc["mqlogging"]["dropped_count"] >= 2000

    def test_small_records_are_untouched(self, schema: str) -> None:
        """A record under the cap carries no marker; max_bytes=None disables the cap."""
        doc = decode(JsonFormatter(schema=schema, max_bytes=self.LIMIT), make_record())
        assert {"schema": schema} == doc["mqlogging"]
        body = JsonFormatter(schema=schema, max_bytes=None).format_message(
            make_record("y" * 400_000, ())
        )
        assert len(body.body) > DEFAULT_MAX_RECORD_BYTES


@pytest.mark.parametrize("schema", SCHEMAS)
class TestIds:
    def test_body_carries_the_message_id(self, schema: str) -> None:
        """format_message returns the id that is in the body, and bytes without a newline."""
        message = JsonFormatter(schema=schema).format_message(make_record())
        assert isinstance(message, Message)
        assert UUID_RE.match(message.id)
        assert not message.body.endswith(b"\n")
        assert record_id_of(orjson.loads(message.body), schema) == message.id

    def test_ids_are_unique_and_time_ordered(self, schema: str) -> None:
        """Records formatted one after another get distinct, increasing ids."""
        formatter = JsonFormatter(schema=schema)
        ids = [formatter.format_message(make_record()).id for _ in range(2000)]
        assert len(set(ids)) == len(ids)
        assert ids == sorted(ids)

    def test_same_record_same_id(self, schema: str) -> None:
        """Formatting a record twice (two handlers, a retry) yields the same id."""
        record = make_record()
        first = JsonFormatter(schema=schema).format_message(record)
        second = JsonFormatter(schema=schema).format_message(record)
        assert first.id == second.id
        assert first.id == record.mqlogging_id

    def test_caller_supplied_id_is_reused(self, schema: str) -> None:
        """A record arriving with an mqlogging_id (e.g. replayed) keeps it."""
        record = make_record(extra={"mqlogging_id": "0190a0d0-0000-7000-8000-000000000001"})
        message = JsonFormatter(schema=schema).format_message(record)
        assert message.id == "0190a0d0-0000-7000-8000-000000000001"
        assert record_id_of(orjson.loads(message.body), schema) == message.id

    @pytest.mark.parametrize("too_long", ["x" * (MAX_ID_BYTES + 1), "é" * 300])
    def test_an_id_over_the_limit_is_not_the_record_id(self, schema: str, too_long: str) -> None:
        """A caller's mqlogging_id over wire.MAX_ID_BYTES (in UTF-8 bytes: 300 two-byte
        characters are 600 bytes) is not used as the record id, which every reader would
        ignore and Elasticsearch refuses: a new id is generated, the same on every formatting,
        and the caller's value stays visible as ``extra.mqlogging_id``. An id of exactly the
        limit is kept."""
        record = make_record(extra={"mqlogging_id": too_long})
        first = JsonFormatter(schema=schema).format_message(record)
        second = JsonFormatter(schema=schema).format_message(record)
        assert UUID_RE.match(first.id)
        assert first.id == second.id
        doc = orjson.loads(first.body)
        assert record_id_of(doc, schema) == first.id
        assert fields_of(doc, schema)["extra"]["mqlogging_id"] == too_long
        assert read_meta(doc).id == first.id
        at_limit = "y" * MAX_ID_BYTES
        kept = JsonFormatter(schema=schema).format_message(
            make_record(extra={"mqlogging_id": at_limit})
        )
        assert kept.id == at_limit

    def test_read_id_is_read_meta_id(self, schema: str) -> None:
        """``wire.read_id`` (what the collector reads per record) answers ``read_meta``'s id,
        for our records and for look-alikes: another producer's ``id``/``event.id``, an
        unknown schema, a namespace that is not an object, ids of the wrong type or too long."""
        doc = orjson.loads(JsonFormatter(schema=schema).format_message(make_record()).body)
        ns = doc["mqlogging"]
        docs: list[Any] = [
            doc,
            {**doc, "mqlogging": {**ns, "schema": "nope"}},
            {**doc, "mqlogging": "ecs"},
            {k: v for k, v in doc.items() if k != "mqlogging"},
            {"id": "user", "event": {"id": "user"}},
            {"id": 7, "mqlogging": {"schema": "flat"}},
            {"id": 1.5, "mqlogging": {"schema": "flat"}},
            {"id": "x" * (MAX_ID_BYTES + 1), "mqlogging": {"schema": "logstash"}},
            {"event": "not an object", "mqlogging": {"schema": "ecs"}},
            [doc],
            None,
        ]
        for case in docs:
            assert read_meta(case).id == read_id(case), case
