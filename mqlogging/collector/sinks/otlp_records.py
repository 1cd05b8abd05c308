"""Our records as OpenTelemetry ``LogRecord`` messages (the official ``opentelemetry-proto``
classes; nothing hand-written on the wire).

One function per question, one table per schema, so the mapping is read in one place:

================= ===================== ==================== ================ ================
OTel field        ecs                   logstash             flat             otel (as is)
================= ===================== ==================== ================ ================
time_unix_nano    ``@timestamp``        ``@timestamp``       ``timestamp``    ``timeUnixNano``
severity          ``log.level``         ``levelname``        ``levelname``    ``severity*``
body              ``message``           ``message``          ``message``      ``body``
scope.name        ``log.logger``        ``name``             ``name``         ``scope.name``
service.name      ``service.name``      ``service``          ``service``      ``resource``
host.name         ``host.hostname``     ``source_host``      ``hostname``     ``resource``
process.pid       ``process.pid``       ``process``          ``process``      ``resource``
trace/span        ``trace.id``...       ``trace_id``...      ``trace_id``...  ``traceId``...
exception.*       ``error.*``           ``exception``        ``exc_info``     ``attributes``
================= ===================== ==================== ================ ================

A time OTel cannot hold (before 1970, after 2554) is 0 ("unknown") and kept as written in an
attribute of its field's name; ``observed_time_unix_nano`` is when the collector read the record
(the collection system sets it, says OTel) unless an ``otel`` record carries its own.

Every other field (extras, context, static fields, origin, ``mqlogging.*`` producer and seq)
becomes an attribute, nested objects flattened to dotted keys; the record id is the
``log.record.uid`` attribute (OpenTelemetry's semantic convention for a unique log id), so a
backend or a person can find duplicates after a redelivery. The severity numbers are those of
OpenTelemetry's Python logging bridge (DEBUG 5, INFO 9, WARNING 13, ERROR 17, CRITICAL 21).

Records are grouped into one ``ResourceLogs`` per (service, host, pid) and one ``ScopeLogs``
per logger name, as the OTLP data model wants.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Final

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from ...formatting import otel_severity
from ...wire import NAMESPACE, id_path, time_key

__all__ = [
    "UID_ATTRIBUTE",
    "MappedRecord",
    "any_value",
    "assemble",
    "build_request",
    "flatten",
    "from_json",
    "schema_of",
    "to_json",
    "to_log_record",
]

UID_ATTRIBUTE: Final = "log.record.uid"
"""The attribute carrying our record id (OpenTelemetry semantic conventions)."""

_SEVERITY: Final[Mapping[str, int]] = {
    "TRACE": 1,
    "DEBUG": 5,
    "INFO": 9,
    "NOTICE": 10,
    "WARN": 13,
    "WARNING": 13,
    "ERROR": 17,
    "CRITICAL": 21,
    "FATAL": 21,
}

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)
_UINT64: Final = 2**64
"""OTel times are ``fixed64`` unix nanoseconds: from 1970 to the year 2554."""

ResourceKey = tuple[tuple[str, Any], ...]
MappedRecord = tuple[LogRecord, ResourceKey, str]
"""One record as :func:`to_log_record` maps it: the ``LogRecord``, its resource, its scope."""


class _Fields:
    """Where one schema keeps what OTel has a field for (dotted paths into the document).

    The id and the time are where :mod:`mqlogging.wire` (their one owner) says.
    """

    def __init__(
        self,
        schema: str,
        *,
        level: str,
        logger: str,
        service: str,
        host: str,
        pid: str,
        trace: tuple[str, str, str],
        exception: tuple[str, str, str],
        drop: Iterable[str] = (),
    ) -> None:
        time = self.time = time_key(schema)
        record_id = self.record_id = ".".join(id_path(schema))
        self.level = level
        self.logger = logger
        self.resource = (("service.name", service), ("host.name", host), ("process.pid", pid))
        self.trace = trace
        self.exception = exception
        used = {time, level, logger, service, host, pid, record_id, "message", *trace}
        self.consumed = frozenset(used | set(exception) | set(drop))


_SCHEMAS: Final[Mapping[str, _Fields]] = {
    "ecs": _Fields(
        "ecs",
        level="log.level",
        logger="log.logger",
        service="service.name",
        host="host.hostname",
        pid="process.pid",
        trace=("trace.id", "span.id", "trace.flags"),
        exception=("error.type", "error.message", "error.stack_trace"),
        drop=("ecs.version",),
    ),
    "logstash": _Fields(
        "logstash",
        level="levelname",
        logger="name",
        service="service",
        host="source_host",
        pid="process",
        trace=("trace_id", "span_id", "trace_flags"),
        exception=("exc_type", "exc_message", "exception"),
        drop=("@version", "levelno", "created", "msecs", "relativeCreated", "args"),
    ),
    "flat": _Fields(
        "flat",
        level="levelname",
        logger="name",
        service="service",
        host="hostname",
        pid="process",
        trace=("trace_id", "span_id", "trace_flags"),
        exception=("exc_type", "exc_message", "exc_info"),
        drop=("levelno", "created", "msecs", "relativeCreated", "args"),
    ),
}


def schema_of(doc: Mapping[str, Any]) -> str:
    """``ecs``, ``logstash``, ``flat`` or ``otel``: the formatter's ``mqlogging.schema`` when
    it is one we know, else guessed from the document's shape (foreign producers)."""
    ns = doc.get(NAMESPACE)
    named = ns.get("schema") if isinstance(ns, dict) else None
    if named in _SCHEMAS or named == "otel":
        return str(named)
    if "timeUnixNano" in doc or "severityNumber" in doc:
        return "otel"
    if "@version" in doc:
        return "logstash"
    if "@timestamp" in doc:
        return "ecs"
    return "flat"


# -- values -----------------------------------------------------------------------------------


def any_value(value: Any) -> AnyValue:
    """A JSON value as an ``AnyValue`` (objects become key-value lists, arrays arrays, null
    the empty value)."""
    if isinstance(value, list | tuple):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    if isinstance(value, dict):
        return AnyValue(kvlist_value=_kvlist(value))
    return _scalar(value)


def _scalar(value: Any) -> AnyValue:
    """A JSON scalar as an ``AnyValue``; an integer beyond int64 as its text."""
    if value is None:
        return AnyValue()
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=str(value))


def _kvlist(obj: Mapping[str, Any]) -> KeyValueList:
    return KeyValueList(values=[KeyValue(key=str(k), value=any_value(v)) for k, v in obj.items()])


def _flatten(obj: Mapping[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for key, value in obj.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            _flatten(value, f"{path}.", out)
        elif value is not None:
            out[path] = value


def flatten(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; ``None`` values left out (OTel has no null)."""
    out: dict[str, Any] = {}
    _flatten(doc, "", out)
    return out


def _unix_nanos(value: Any) -> int:
    """An ISO-8601 time (``Z`` or an offset; naive means UTC) as unix nanoseconds; 0 (OTel's
    "unknown") when it is missing, unreadable or outside what OTel can hold (before 1970,
    after 2554: protobuf refuses the value, which would fail the whole request)."""
    if not isinstance(value, str):
        return 0
    if value.endswith(("Z", "z")):  # Python 3.10's fromisoformat does not read "Z"
        value = value[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return 0
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    delta = when - _EPOCH
    nanos = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    return nanos if 0 <= nanos < _UINT64 else 0


def _nanos(value: Any) -> int:
    """An OTLP/JSON time: an integer or a decimal string (int64 is a string in OTLP/JSON);
    0 ("unknown") when it is neither or does not fit the ``fixed64`` field."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _UINT64:
        return value
    return 0


def _hex_bytes(value: Any, size: int) -> bytes:
    """A lower/upper hex trace or span id as bytes; b"" (absent) when it is not ``size``
    bytes of hex, or all zero (invalid per W3C)."""
    if not isinstance(value, str) or len(value) != 2 * size:
        return b""
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        return b""
    return raw if any(raw) else b""


def _flags(value: Any) -> int:
    """Trace flags as ``LogRecord.flags`` (the low byte); hex text ("01") or an integer."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value & 0xFF
    if isinstance(value, str):
        try:
            return int(value, 16) & 0xFF
        except ValueError:
            return 0
    return 0


def _severity(level: Any, levelno: Any = None) -> tuple[int, str]:
    """(severity number, severity text): from the stdlib level number when the record has
    one (logstash, flat) or its name says it (``Level 25``), as the ``otel`` schema maps it,
    so a custom level is not UNSPECIFIED; else from the level name (any case); 0 if unknown."""
    text = level.upper() if isinstance(level, str) else ""
    if levelno is None and text.startswith("LEVEL ") and text[6:].isascii():
        levelno = int(text[6:]) if text[6:].isdigit() else None
    number = otel_severity(levelno)
    return number or _SEVERITY.get(text, 0), text


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):  # logstash's exception: the traceback as a list of lines
        return "".join(str(v) for v in value)
    return value if isinstance(value, str) else str(value)


# -- records ----------------------------------------------------------------------------------


def to_log_record(doc: Mapping[str, Any], record_id: str) -> MappedRecord:
    """``doc`` as a ``LogRecord``, with its resource attributes (a hashable key) and scope
    name; ``record_id`` is the collector's id for it (the ``log.record.uid`` attribute)."""
    schema = schema_of(doc)
    if schema == "otel":
        return _from_otel(doc, record_id)
    fields = _SCHEMAS[schema]
    flat = flatten(doc)
    number, text = _severity(flat.get(fields.level), flat.get("levelno"))
    trace_id, span_id, flags = (flat.get(path) for path in fields.trace)
    attributes = {k: v for k, v in flat.items() if k not in fields.consumed}
    for name, path in zip(
        ("exception.type", "exception.message", "exception.stacktrace"),
        fields.exception,
        strict=True,
    ):
        found = _text(flat.get(path))
        if found is not None:
            attributes[name] = found
    attributes[UID_ATTRIBUTE] = record_id
    nanos = _unix_nanos(flat.get(fields.time))
    if not nanos and flat.get(fields.time) is not None:  # unknown to OTel: keep it as written
        attributes[fields.time] = flat[fields.time]
    record = LogRecord(
        time_unix_nano=nanos,
        observed_time_unix_nano=time.time_ns(),  # read from the queue now (OTel: set by us)
        severity_number=number,  # type: ignore[arg-type]
        severity_text=text,
        body=any_value(doc.get("message", "")),
        attributes=[KeyValue(key=k, value=any_value(v)) for k, v in attributes.items()],
        trace_id=_hex_bytes(trace_id, 16),
        span_id=_hex_bytes(span_id, 8),
        flags=_flags(flags),
    )
    resource = tuple((name, flat[path]) for name, path in fields.resource if path in flat)
    scope = flat.get(fields.logger)
    return record, resource, scope if isinstance(scope, str) else ""


def _otel_attributes(value: Any) -> dict[str, Any]:
    """Attributes of an OTel-shaped record: a plain object (dotted keys) or OTLP/JSON's list
    of ``{"key": k, "value": {"stringValue": v}}``."""
    if isinstance(value, dict):
        return flatten(value)
    out: dict[str, Any] = {}
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and isinstance(item.get("key"), str):
                out[item["key"]] = _from_any_json(item.get("value"))
    return out


def _int_text(value: Any) -> Any:
    """OTLP/JSON's ``intValue`` (int64 as a decimal string) as an int; anything else as it is
    (a string attribute then, rather than an error failing the whole request)."""
    digits = value.removeprefix("-") if isinstance(value, str) else ""
    return int(value) if digits.isascii() and digits.isdigit() else value


def _from_any_json(value: Any) -> Any:
    """An OTLP/JSON ``AnyValue`` object (``{"stringValue": "x"}``) as a plain value; a plain
    value as itself."""
    if not isinstance(value, dict) or len(value) != 1:
        return value
    (kind, inner), *_ = value.items()
    if kind in ("stringValue", "boolValue", "doubleValue"):
        return inner
    if kind == "intValue":
        return _int_text(inner)
    if kind == "arrayValue" and isinstance(inner, dict):
        return [_from_any_json(v) for v in inner.get("values", [])]
    if kind == "kvlistValue" and isinstance(inner, dict):
        return _otel_attributes(inner.get("values", []))
    return value


def _from_otel(doc: Mapping[str, Any], record_id: str) -> MappedRecord:
    """An ``otel``-schema record: already in OpenTelemetry's data model, mapped field by field
    (attributes as a plain object or as OTLP/JSON key-value lists)."""
    attributes = _otel_attributes(doc.get("attributes"))
    attributes.setdefault(UID_ATTRIBUTE, record_id)
    resource = doc.get("resource")
    if isinstance(resource, dict) and "attributes" in resource:
        resource = resource["attributes"]
    scope = doc.get("scope")
    if isinstance(scope, dict):
        scope = scope.get("name")
    number = doc.get("severityNumber")
    if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= 24:
        number = 0
    record = LogRecord(
        time_unix_nano=_nanos(doc.get("timeUnixNano")),
        observed_time_unix_nano=_nanos(doc.get("observedTimeUnixNano")) or time.time_ns(),
        severity_number=number,  # type: ignore[arg-type]
        severity_text=str(doc.get("severityText") or ""),
        body=any_value(_from_any_json(doc.get("body", ""))),
        attributes=[KeyValue(key=k, value=any_value(v)) for k, v in attributes.items()],
        trace_id=_hex_bytes(doc.get("traceId"), 16),
        span_id=_hex_bytes(doc.get("spanId"), 8),
        flags=_flags(doc.get("flags")),
    )
    key = tuple(sorted(_otel_attributes(resource).items())) if resource else ()
    return record, _hashable(key), scope if isinstance(scope, str) else ""


def _hashable(key: Iterable[tuple[str, Any]]) -> ResourceKey:
    return tuple((k, v if isinstance(v, str | int | float | bool) else str(v)) for k, v in key)


def build_request(
    items: Sequence[tuple[Mapping[str, Any], str]],
) -> ExportLogsServiceRequest:
    """One export request for ``(doc, record_id)`` pairs (see :func:`assemble`)."""
    return assemble([to_log_record(doc, record_id) for doc, record_id in items])


def assemble(mapped: Iterable[MappedRecord]) -> ExportLogsServiceRequest:
    """One export request for records mapped by :func:`to_log_record`: one ``ResourceLogs``
    per resource, one ``ScopeLogs`` per logger name within it, records in their given order.
    Separate from the mapping so a sink can map each record once, set aside the few that
    cannot be expressed in OTLP, and send the rest in as many requests as it needs."""
    groups: dict[ResourceKey, dict[str, list[LogRecord]]] = {}
    for record, resource, scope in mapped:
        groups.setdefault(_hashable(resource), {}).setdefault(scope, []).append(record)
    return ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=Resource(
                    attributes=[KeyValue(key=k, value=any_value(v)) for k, v in resource]
                ),
                scope_logs=[
                    ScopeLogs(scope=InstrumentationScope(name=name), log_records=records)
                    for name, records in scopes.items()
                ],
            )
            for resource, scopes in groups.items()
        ]
    )


def to_json(request: ExportLogsServiceRequest) -> dict[str, Any]:
    """The request in OTLP/JSON: protobuf's JSON mapping (lowerCamelCase names, enums as
    integers) except that trace and span ids are hex, not base64, as the OTLP spec requires."""
    from google.protobuf.json_format import MessageToDict

    body: dict[str, Any] = MessageToDict(request, use_integers_for_enums=True)
    for resource_logs in body.get("resourceLogs", []):
        for scope_logs in resource_logs.get("scopeLogs", []):
            for record in scope_logs.get("logRecords", []):
                for key in ("traceId", "spanId"):
                    if key in record:
                        record[key] = base64.b64decode(record[key]).hex()
    return body


def from_json(body: Mapping[str, Any]) -> ExportLogsServiceRequest:
    """The inverse of :func:`to_json` (hex ids back to bytes), for receivers and tests."""
    from google.protobuf.json_format import ParseDict

    body = _copy(body)
    for resource_logs in body.get("resourceLogs", []):
        for scope_logs in resource_logs.get("scopeLogs", []):
            for record in scope_logs.get("logRecords", []):
                for key in ("traceId", "spanId"):
                    if key in record:
                        try:
                            raw = bytes.fromhex(record[key])
                        except (ValueError, TypeError, binascii.Error):
                            raw = b""
                        record[key] = base64.b64encode(raw).decode()
    request = ExportLogsServiceRequest()
    ParseDict(body, request)
    return request


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
