"""Log records as JSON documents: the wire format of mqlogging (``ecs``, ``logstash``, ``flat``,
``otel``).

:class:`JsonFormatter` is a python-json-logger (v4) formatter: the usual template method
(``add_fields`` -> ``process_log_record`` -> ``jsonify_log_record``), where each *schema* decides
what ``add_fields`` does and the encoder (orjson when installed, else :mod:`json`) only encodes.
On top of python-json-logger it guarantees what a log shipper needs:

- every record gets a unique, time-ordered id (:func:`mqlogging._ids.new_id`), written into the
  document (``event.id`` in ``ecs``, the ``log.record.uid`` attribute in ``otel``, ``id``
  otherwise) and returned next to the bytes by
  :meth:`JsonFormatter.format_message`, so the handler never parses what it just encoded;
- ``extra={...}`` fields, static fields and context fields (:func:`bind_context`) appear in every
  schema; a user field never overwrites a field the formatter owns (it is moved under ``extra``);
- every record keeps its unformatted message template (``record.msg`` when it is a string:
  ``log.template`` in ``ecs``, ``message_template`` in ``logstash``/``flat``, the
  ``log.record.template`` attribute in ``otel``), so records group by template;
- inside an active OpenTelemetry span, the trace id, span id and trace flags (lower hex; see
  :mod:`mqlogging._trace`): ``trace.id``/``span.id``/``trace.flags`` in ``ecs``,
  ``trace_id``/``span_id``/``trace_flags`` in ``logstash``/``flat``, ``traceId``/``spanId``/
  ``flags`` in ``otel``; a user field of one of these names is moved under ``extra``;
- values JSON cannot encode are converted like python-json-logger's ``unknown_default`` (``str``,
  then ``repr``, then a placeholder), so formatting never fails because of a value;
- a document larger than ``max_bytes`` is shortened (long strings and containers cut in the
  middle, then optional fields dropped) and marked ``"mqlogging": {"truncated": true, ...}``,
  so it is never dropped and always valid JSON.

The formatter is thread-safe: everything that does not depend on the record (hostname, static
fields, the schema's field plan) is computed once in ``__init__``, and formatting keeps no
state between calls beyond an atomically replaced per-second timestamp cache.
"""

from __future__ import annotations

import itertools
import logging
import math
import socket
import time
import traceback
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple

from pythonjsonlogger import defaults as _pjl
from pythonjsonlogger.core import RESERVED_ATTRS, BaseJsonFormatter, LogData, merge_record_extra

from ._context import (
    ContextToken,
    bind_context,
    bound_context,
    clear_context,
    current_fields,
    get_context,
    unbind_context,
)
from ._ids import new_id
from ._json import HAVE_ORJSON, strict_encoder
from ._trace import SpanIds, current_span
from ._types import Message
from .errors import ConfigurationError
from .wire import FORMAT_ERROR, MAX_ID_BYTES, NAMESPACE, id_fits

__all__ = [
    "DEFAULT_MAX_RECORD_BYTES",
    "ECS_VERSION",
    "SCHEMAS",
    "ContextToken",
    "JsonFormatter",
    "bind_context",
    "bound_context",
    "clear_context",
    "get_context",
    "unbind_context",
]

DEFAULT_MAX_RECORD_BYTES: Final = 256 * 1024
"""Default cap on one encoded record (bytes); larger records are truncated, never dropped."""

MIN_MAX_RECORD_BYTES: Final = 1024
"""The smallest ``max_bytes`` accepted: room for the skeleton of any schema plus the marker."""

ECS_VERSION: Final = "8.11.0"
"""The Elastic Common Schema version the ``ecs`` schema's field names follow."""

SCHEMAS: Final = ("ecs", "logstash", "flat", "otel")
"""The schema names :class:`JsonFormatter` accepts (``ecs`` is the default)."""

ID_ATTRIBUTE: Final = "mqlogging_id"
"""Record attribute holding the record id; set by the formatter, reused if already set."""

_ENCODERS: Final = ("auto", "orjson", "json")
_TRUNCATION_KEY: Final = NAMESPACE
_DIVERTED_KEY: Final = "extra"
_MIN_STRING_LIMIT: Final = 64  # never cut strings shorter than this (ids, timestamps, names)
_MAX_DROPPED_NAMES: Final = 16  # names of dropped fields listed in the truncation marker
_MAX_DEPTH: Final = 64  # deeper nesting is stringified (orjson stops at 255, json at recursion)
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1  # orjson encodes int64 and uint64 natively, nothing wider
_MISSING: Final[Any] = object()

# Record attributes that are not user fields: the stdlib LogRecord's own (python-json-logger's
# list, taskName from 3.12) plus the id this formatter stamps on the record.
# Where _record_id keeps a caller's id too long to be the record id (shown as extra.mqlogging_id).
_REFUSED_ID: Final = "_mqlogging_refused_id"
_RESERVED: Final = frozenset([*RESERVED_ATTRS, "taskName", ID_ATTRIBUTE, _REFUSED_ID])
# A str id this short always fits MAX_ID_BYTES (4 UTF-8 bytes a character at most): the hot
# paths check only this, and leave longer ones to _record_id's exact check.
_SHORT_ID: Final = MAX_ID_BYTES // 4
# Attributes of a record made by the stdlib, once the formatter stamped its id; a record with
# no more than that and only reserved names has no user fields.
_STD_ATTRIBUTES: Final = tuple(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)
_STD_NAMES: Final = frozenset(_STD_ATTRIBUTES)
_PLAIN_RECORD_LEN: Final = len(_STD_ATTRIBUTES) + 1
_STD_COUNT: Final = len(_STD_ATTRIBUTES)
_STD_KEYS: Final = list(_STD_ATTRIBUTES)  # a list: compared with a list of a record's keys

_ECS_LEVELS: Final = {
    name: name.lower()
    for name in ("CRITICAL", "FATAL", "ERROR", "WARNING", "WARN", "INFO", "DEBUG")
}

# ECS field sets that are objects at the top level of an event. A scalar user field with one
# of these names would make Elasticsearch reject the document under an ECS index template
# (mapper_parsing_exception), so such values are moved under ``extra`` instead.
_ECS_OBJECTS: Final = frozenset(
    [
        "agent",
        "client",
        "cloud",
        "container",
        "data_stream",
        "destination",
        "device",
        "dll",
        "dns",
        "ecs",
        "email",
        "error",
        "event",
        "faas",
        "file",
        "group",
        "host",
        "http",
        "labels",
        "log",
        "network",
        "observer",
        "orchestrator",
        "organization",
        "package",
        "process",
        "registry",
        "related",
        "rule",
        "server",
        "service",
        "source",
        "span",
        "threat",
        "tls",
        "trace",
        "transaction",
        "url",
        "user",
        "user_agent",
        "vulnerability",
    ]
)

# What the ``ecs`` schema owns. ``True`` marks a field the formatter writes (a user value for it
# goes under ``extra``); a dict marks an object (a scalar user value goes under ``extra``, a dict
# is merged into it, checking its keys against the sub-rules).
_ECS_RULES: Final[dict[str, Any]] = {
    **{name: {} for name in _ECS_OBJECTS},
    "@timestamp": True,
    "message": True,
    "log": {
        "level": True,
        "logger": True,
        "template": True,
        "origin": {"file": {"name": True, "line": True}, "function": True},
        "stack_info": True,
    },
    "process": {"pid": True, "name": True, "thread": {"id": True, "name": True}},
    "host": {"hostname": True},
    "event": {"id": True},
    "ecs": {"version": True},
    _TRUNCATION_KEY: {},
    _DIVERTED_KEY: {},
}
# With an exception, the error fields are the formatter's too.
_ECS_RULES_WITH_ERROR: Final[dict[str, Any]] = {
    **_ECS_RULES,
    "error": {"type": True, "message": True, "stack_trace": True},
}

# With an active span, the trace fields are the formatter's too (issue #16).
_ECS_TRACE_RULES: Final[dict[str, Any]] = {
    "trace": {"id": True, "flags": True},
    "span": {"id": True},
}
_ECS_RULES_WITH_TRACE: Final[dict[str, Any]] = {**_ECS_RULES, **_ECS_TRACE_RULES}
_ECS_RULES_WITH_ERROR_AND_TRACE: Final[dict[str, Any]] = {
    **_ECS_RULES_WITH_ERROR,
    **_ECS_TRACE_RULES,
}

# The top-level names the logstash and flat schemas give the trace fields and the template.
_TRACE_KEYS: Final = ("trace_id", "span_id", "trace_flags")
_NAMESPACE_DOT: Final = NAMESPACE + "."
_ES_TIME_KEY: Final = "@timestamp"  # the time in Elasticsearch, whatever the schema (esbulk)
TEMPLATE_KEY: Final = "message_template"
"""Where logstash and flat records keep the unformatted message (``record.msg``)."""

# Well-known static field names mapped to their ECS homes (``static_fields={"service": "api"}``).
_ECS_STATIC_ALIASES: Final = {
    "service": "service.name",
    "service_name": "service.name",
    "service_version": "service.version",
    "service_environment": "service.environment",
    "environment": "service.environment",
}


# --------------------------------------------------------------------------- value conversion


def _is_set(obj: Any) -> bool:
    return isinstance(obj, (set, frozenset))


# python-json-logger's defaults, in its order, with sets as lists: (applies, convert) pairs.
_DEFAULTS: Final[tuple[tuple[Callable[[Any], bool], Callable[[Any], Any]], ...]] = (
    (_pjl.use_datetime_any, _pjl.datetime_any),
    (_pjl.use_exception_default, _pjl.exception_default),
    (_pjl.use_traceback_default, _pjl.traceback_default),
    (_pjl.use_enum_default, _pjl.enum_default),
    (_pjl.use_bytes_default, _pjl.bytes_default),
    (_is_set, list),
    (_pjl.use_dataclass_default, _pjl.dataclass_default),
    (_pjl.use_type_default, _pjl.type_default),
)


def _json_default(obj: Any) -> Any:
    """Turn a value JSON cannot encode into one it can; never raises.

    python-json-logger's defaults (dates as ISO-8601, exceptions, tracebacks, enums, bytes as
    base64, dataclasses, classes), sets as lists, and finally ``unknown_default``: ``str``, then
    ``repr``, then ``"__could_not_encode__"``.
    """
    try:
        for applies, convert in _DEFAULTS:
            if applies(obj):
                return convert(obj)
    except Exception:
        pass
    return _pjl.unknown_default(obj)


def _chain_default(user: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap a user ``json_default`` so that its failures fall back to ours instead of raising."""

    def default(obj: Any) -> Any:
        try:
            return user(obj)
        except Exception:
            return _json_default(obj)

    return default


def _safe_str(value: Any) -> str:
    """``str(value)`` that cannot fail (``repr``, then a placeholder)."""
    return value if value.__class__ is str else _pjl.unknown_default(value)


def _key_str(key: Any) -> str:
    """A dict key as JSON needs it (the conversions json/orjson apply to None, bools, numbers)."""
    if isinstance(key, str):
        return _clean_str(str(key))
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, (int, float)):
        return repr(key) if isinstance(key, float) else str(int(key))
    return _clean_str(_pjl.unknown_default(key))


def _clean_str(text: str) -> str:
    """Replace lone surrogates, which UTF-8 cannot carry (orjson refuses them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _cut(text: str, limit: int) -> str:
    """Shorten ``text`` to ``limit`` characters, keeping its head and tail around an ellipsis."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    tail = limit - 1 - head
    return text[:head] + "\u2026" + (text[-tail:] if tail else "")


def _sanitize(
    obj: Any,
    default: Callable[[Any], Any],
    limit: int | None,
    depth: int = 0,
    active: set[int] | None = None,
) -> Any:
    """A JSON-safe copy of ``obj``: what both encoders accept, whatever ``obj`` holds.

    Used when the fast encode failed (cycles, non-string keys, integers wider than 64 bits,
    NaN, lone surrogates, a failing ``default``) and to truncate: with ``limit``, strings are
    cut to ``limit`` characters and nested containers to ``limit // 16`` items (at least 8; the
    top level keeps all its keys). Never mutates ``obj``.
    """
    scalar = _sanitize_scalar(obj, limit)
    if scalar is not _MISSING:
        return scalar
    if depth >= _MAX_DEPTH:
        return _sanitize(_pjl.unknown_default(obj), default, limit)
    if isinstance(obj, (dict, list, tuple)):
        return _sanitize_container(obj, default, limit, depth, set() if active is None else active)
    return _sanitize(_converted(obj, default), default, limit, depth + 1, active)


def _sanitize_scalar(obj: Any, limit: int | None) -> Any:
    """The JSON-safe form of a string, ``None``, bool or number (``_MISSING`` for others):
    text without lone surrogates (cut to ``limit``), integers beyond 64 bits as decimal
    strings, non-finite floats as ``None``."""
    if isinstance(obj, str):
        text = _clean_str(str(obj))
        return _cut(text, limit) if limit is not None else text
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        return int(obj) if _INT_MIN <= obj <= _INT_MAX else str(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    return _MISSING


def _sanitize_container(
    obj: dict[Any, Any] | list[Any] | tuple[Any, ...],
    default: Callable[[Any], Any],
    limit: int | None,
    depth: int,
    active: set[int],
) -> Any:
    """:func:`_sanitize` for a dict, list or tuple: a cycle becomes ``"<cycle>"``; with
    ``limit``, nested containers keep their first items and say how many more there were."""
    marker = id(obj)
    if marker in active:
        return "<cycle>"
    active.add(marker)
    max_items = None if limit is None or depth == 0 else max(limit // 16, 8)
    try:
        size = len(obj)
        more = 0 if max_items is None or size <= max_items else size - max_items
        if isinstance(obj, dict):
            out: dict[str, Any] = {}
            if more:
                out["\u2026"] = f"{more} more keys"
            for key, value in itertools.islice(obj.items(), size - more):
                out[_key_str(key)] = _sanitize(value, default, limit, depth + 1, active)
            return out
        values = [
            _sanitize(v, default, limit, depth + 1, active)
            for v in itertools.islice(obj, size - more)
        ]
        if more:
            values.append(f"\u2026 {more} more items")
        return values
    finally:
        active.discard(marker)


def _converted(obj: Any, default: Callable[[Any], Any]) -> Any:
    """``default(obj)``, or ``unknown_default`` when it fails or gives ``obj`` back."""
    try:
        converted = default(obj)
    except Exception:
        converted = _pjl.unknown_default(obj)
    if converted is obj:
        converted = _pjl.unknown_default(obj)
    return converted


class _Encoder:
    """Dict -> UTF-8 JSON bytes, compact; falls back to a sanitized copy rather than failing."""

    __slots__ = ("default", "dumps", "dumps_part", "name")

    def __init__(self, name: str, default: Callable[[Any], Any]) -> None:
        self.default = default
        self.name = "orjson" if name == "orjson" or (name == "auto" and HAVE_ORJSON) else "json"
        use_orjson = self.name == "orjson"
        self.dumps: Callable[[Any], bytes] = strict_encoder(default, use_orjson=use_orjson)
        """Encode strictly: raises on anything not plainly encodable."""
        self.dumps_part: Callable[[Any], bytes] = strict_encoder(
            default, use_orjson=use_orjson, exact=False
        )
        """:attr:`dumps` for a part of a document, joined into it at once."""

    def encode(self, obj: Any) -> bytes:
        """Encode ``obj``; never raises."""
        try:
            return self.dumps(obj)
        except _ENCODE_ERRORS:
            return self.fallback(obj)

    def fallback(self, obj: Any) -> bytes:
        """Encode a sanitized copy of ``obj``, after the strict encoding failed."""
        return self.dumps(_sanitize(obj, self.default, None))


# Message(rid, body) without NamedTuple's __new__, a Python-level function: one call less for
# every record on the caller's thread (issue #13).
_new_message: Final = tuple.__new__

# orjson.JSONEncodeError is a TypeError; json raises ValueError for cycles and NaN, TypeError for
# odd keys, UnicodeEncodeError (a ValueError) for lone surrogates, RecursionError when too deep.
_ENCODE_ERRORS: Final = (TypeError, ValueError, RecursionError)


# --------------------------------------------------------------------------- record helpers


class _Clock:
    """``record.created`` -> ISO-8601 UTC with microseconds; strftime runs once per second."""

    __slots__ = ("_cache", "_format")

    def __init__(self, suffix: str) -> None:
        self._format = "%s.%06d" + suffix
        self._cache: tuple[int, str] = (-1, "")

    def __call__(self, created: float) -> str:
        seconds = int(created)
        cache = self._cache  # one tuple, replaced atomically: consistent across threads
        if cache[0] != seconds:
            cache = self._cache = (
                seconds,
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)),
            )
        return self._format % (cache[1], (created - seconds) * 1e6)


def _record_id(record: logging.LogRecord) -> str:
    """The record's id, stamped on the record on first use so every formatting agrees.

    A caller's ``mqlogging_id`` longer than :data:`~mqlogging.wire.MAX_ID_BYTES` is not used:
    every reader would ignore it and Elasticsearch refuses it as ``_id`` (the whole request).
    A new id replaces it and the caller's value stays visible as ``extra.mqlogging_id``.
    """
    attrs = record.__dict__
    rid = attrs.get(ID_ATTRIBUTE)
    if rid.__class__ is str and rid:
        if id_fits(rid):
            return rid
        attrs[_REFUSED_ID] = rid
    rid = new_id()
    attrs[ID_ATTRIBUTE] = rid
    return rid


def _get_message(record: logging.LogRecord) -> str:
    """``record.getMessage()``, or what can be salvaged when the arguments do not fit.

    stdlib logging would report the error on stderr and lose the record; a log shipper keeps it.
    """
    try:
        return record.getMessage()
    except Exception as exc:
        try:
            args = repr(record.args)
        except Exception:
            args = "<unrepresentable args>"
        return (
            f"{_safe_str(record.msg)} [unformattable arguments {args}: "
            f"{type(exc).__name__}: {_safe_str(exc)}]"
        )


# Seconds since the epoch of 0001-01-01 and of 10000-01-01 (UTC): the times an ISO-8601
# date (and Elasticsearch's date type) can hold.
_MIN_TIME: Final = -62135596800.0
_END_TIME: Final = 253402300800.0
_MAX_ERROR_CHARS: Final = 512  # of the format error's message in a fallback record


def _created(record: logging.LogRecord) -> float:
    """``record.created`` if it is a time a date can be made of, else now (a filter or a
    record factory may have put anything there: ``inf``, ``nan``, a string...)."""
    created = record.__dict__.get("created")
    if created.__class__ in (float, int) and _MIN_TIME <= created < _END_TIME:  # NaN fails too
        return float(created)
    return time.time()


class _Salvaged(NamedTuple):
    """What a fallback record says about a record that could not be formatted."""

    created: float
    message: str
    levelname: str
    levelno: int
    logger: str
    pid: int | None


def _salvage(record: logging.LogRecord) -> _Salvaged:
    """Read what can be read of a record whose formatting raised, each field on its own so
    that one broken attribute does not cost the others; never raises."""
    attrs = record.__dict__
    levelname, levelno = _salvage_level(attrs.get("levelname"), attrs.get("levelno"))
    name = attrs.get("name")
    pid = attrs.get("process")
    return _Salvaged(
        created=_created(record),
        message=_salvage_message(record),
        levelname=levelname,
        levelno=levelno,
        logger=_clean_str(name if name.__class__ is str else _safe_str(name)),
        pid=pid if pid.__class__ is int else None,
    )


def _salvage_level(levelname: Any, levelno: Any) -> tuple[str, int]:
    """The level name and number, each from the other when it is unusable (a ``levelname``
    that is not a ``str``: the name of ``levelno``), ``NOTSET`` when neither is usable."""
    if levelno.__class__ is not int:
        number = logging.getLevelName(levelname) if levelname.__class__ is str else None
        levelno = number if number.__class__ is int else logging.NOTSET
    if levelname.__class__ is not str:
        levelname = logging.getLevelName(levelno)
    return _clean_str(levelname), levelno


def _salvage_message(record: logging.LogRecord) -> str:
    """The message as :func:`_get_message` renders it (a dict message's ``message``), or what
    ``str``/``repr`` of the template give, with lone surrogates replaced."""
    try:
        msg = record.msg
        if isinstance(msg, dict):
            text = msg.get("message", "")
            return _clean_str(text if text.__class__ is str else _safe_str(text))
        return _clean_str(str(_get_message(record)))
    except Exception:
        return "<message unavailable>"


def _format_error(error: BaseException) -> dict[str, str]:
    """The ``mqlogging.format_error`` object of a fallback record (:mod:`mqlogging.wire`)."""
    return {
        "type": _exception_type(type(error)),
        "message": _cut(_clean_str(_safe_str(error)), _MAX_ERROR_CHARS),
    }


def _stdlib_get_message() -> Callable[[logging.LogRecord], str] | None:
    """``LogRecord.getMessage`` as the stdlib defines it, or ``None`` when a program replaced
    it before this module was imported (a wrapper made with functools.wraps included)."""
    method = logging.LogRecord.getMessage
    if (
        getattr(method, "__module__", None) == "logging"
        and getattr(method, "__qualname__", None) == "LogRecord.getMessage"
        and not hasattr(method, "__wrapped__")
    ):
        return method
    return None


_STDLIB_GET_MESSAGE: Final = _stdlib_get_message()


def _message(record: logging.LogRecord, msg: str) -> str:
    """``record.getMessage()`` of a stdlib record whose ``msg`` is a ``str``, one method
    call cheaper (the caller's hot path, issue #13) while ``LogRecord.getMessage`` is the
    stdlib's; a program that patched it gets its own (a ``getMessage`` set on the record
    itself is an extra attribute, which takes the dict path)."""
    if logging.LogRecord.getMessage is not _STDLIB_GET_MESSAGE:
        return _get_message(record)
    args = record.args
    if not args:
        return msg
    try:
        return msg % args
    except Exception:
        return _get_message(record)


def _exception_type(etype: type[BaseException] | None) -> str:
    """ECS ``error.type``: the class name, module-qualified unless it is a builtin."""
    if etype is None:
        return "None"
    module = getattr(etype, "__module__", "builtins")
    name = getattr(etype, "__qualname__", etype.__name__)
    return name if module == "builtins" else f"{module}.{name}"


def _text(value: str | list[str]) -> str:
    """A formatException/formatStack result as one string (python-json-logger may give lines)."""
    return value if isinstance(value, str) else "\n".join(value)


def _divert(log_data: dict[str, Any], diverted: Iterable[tuple[str, Any]]) -> None:
    """Put user fields that collided with formatter-owned fields under ``extra``.

    A nested path is flattened with underscores (``log.level`` -> ``extra.log_level``), so
    that diverted fields never form objects that could clash in an index mapping with one
    another (``extra.host`` a string here, an object there).
    """
    current = log_data.get(_DIVERTED_KEY, _MISSING)
    if isinstance(current, dict):
        target = dict(current)
    else:
        target = {} if current is _MISSING else {_DIVERTED_KEY: current}
    for path, value in diverted:
        target[path.replace(".", "_")] = value
    log_data[_DIVERTED_KEY] = target


def _merge(
    doc: dict[str, Any],
    key: Any,
    value: Any,
    rules: Mapping[str, Any] | None,
    diverted: list[tuple[str, Any]],
    *,
    prefix: str = "",
) -> None:
    """Place a user field into ``doc`` (owned by the caller), honouring the schema's ``rules``.

    Dotted keys become nested objects (``"user.name"`` -> ``{"user": {"name": ...}}``), dicts are
    merged into existing objects (copy-on-write: no dict we did not create is modified), a later
    user value replaces an earlier one, and a value that would replace a field the formatter owns,
    or put a scalar where the schema has an object, is appended to ``diverted`` instead.
    """
    if key.__class__ is not str:
        key = _key_str(key)
    if "." in key:
        parts = key.split(".")
        if all(parts):
            key = parts[0]
            for part in reversed(parts[1:]):
                value = {part: value}
    rule = rules.get(key) if rules else None
    if rule is True:
        diverted.append((prefix + key, value))
        return
    if isinstance(value, dict):
        current = doc.get(key, _MISSING)
        sub_rules = rule if isinstance(rule, dict) else None
        if isinstance(current, dict) or sub_rules:
            merged = dict(current) if isinstance(current, dict) else {}
            sub_prefix = f"{prefix}{key}."
            for sub_key, sub_value in value.items():
                _merge(merged, sub_key, sub_value, sub_rules, diverted, prefix=sub_prefix)
            doc[key] = merged
        else:
            doc[key] = value
    elif isinstance(rule, dict):
        diverted.append((prefix + key, value))
    else:
        doc[key] = value


def _merge_layer(
    log_data: dict[str, Any],
    items: Iterable[tuple[Any, Any]],
    rules: Mapping[str, Any],
    diverted: list[tuple[str, Any]],
) -> None:
    """:func:`_merge` every item, with a fast path for a plain new top-level key."""
    for key, value in items:
        if key.__class__ is str and key not in rules and key not in log_data and "." not in key:
            log_data[key] = value
        else:
            _merge(log_data, key, value, rules, diverted)


def _merge_extras(
    log_data: dict[str, Any],
    record: logging.LogRecord,
    rules: Mapping[str, Any],
    diverted: list[tuple[str, Any]],
) -> None:
    """:func:`_merge` the user's ``extra`` attributes: not reserved ones, not ``_private``
    ones, with the fast path of :func:`_merge_layer` for a plain new top-level key."""
    attrs = record.__dict__
    keys = [*attrs]
    # A stdlib LogRecord made by its __init__ holds its own attributes first, in __init__'s
    # order, then the extras: skip them all at once -- only when they are all there, in that
    # order (a record factory or makeLogRecord may put a user's first: issue #13 defect).
    if record.__class__ is logging.LogRecord and keys[:_STD_COUNT] == _STD_KEYS:
        del keys[:_STD_COUNT]
    reserved = _RESERVED  # a local: this loop may run over every record attribute
    for key in keys:
        if key in reserved:
            continue
        value = attrs[key]
        if key.__class__ is str:
            if key[:1] == "_":
                continue
            if key not in rules and key not in log_data and "." not in key:
                log_data[key] = value
                continue
        _merge(log_data, key, value, rules, diverted)


# --------------------------------------------------------------------------- schemas


class _Schema:
    """How one wire schema lays out a record: the body of the formatter's ``add_fields``.

    ``essential`` names the top-level keys kept when a record must be cut to its bare bones.
    """

    __slots__ = ("_clock", "formatter")
    id_path: tuple[str, ...] = ("id",)
    timestamp_key = "@timestamp"
    timestamp_suffix = "Z"
    message_key = "message"
    essential: tuple[str, ...] = ()

    def __init__(self, formatter: JsonFormatter) -> None:
        self.formatter = formatter
        self._clock = _Clock(self.timestamp_suffix)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        raise NotImplementedError

    def divert(self, log_data: dict[str, Any], diverted: list[tuple[str, Any]]) -> None:
        """Keep user values that collided with the formatter's fields under ``extra``."""
        _divert(log_data, diverted)

    def encode_plain(
        self, record: logging.LogRecord, rid: str, stamp: Mapping[str, Any] | None
    ) -> bytes | None:
        """The encoded document of a *plain* record without building it as a dict, or
        ``None`` when this schema has no such path or the record is not plain (then
        :meth:`add_fields` and the encoder make it). Same bytes either way."""
        return None

    def skeleton(self, record: logging.LogRecord, rid: str) -> dict[str, Any]:
        """The smallest document that still identifies the record (last-resort truncation)."""
        doc: dict[str, Any] = {}
        target = doc
        for key in self.id_path[:-1]:
            target = target.setdefault(key, {})
        target[self.id_path[-1]] = rid
        doc[self.timestamp_key] = self._clock(_created(record))
        return doc

    def fallback(self, salvaged: _Salvaged, rid: str) -> dict[str, Any]:
        """The minimal document of a record :meth:`add_fields` could not lay out (see
        :meth:`JsonFormatter.fallback_message`): id, time, level, logger and message, from
        what :func:`_salvage` could read safely."""
        raise NotImplementedError


class _EcsSchema(_Schema):
    """Elastic Common Schema: nested objects, formatter fields protected from user fields."""

    __slots__ = (
        "_ecs",
        "_extra_kinds",
        "_fragments",
        "_host",
        "_log_cache",
        "_process_cache",
        "_static_per_record",
        "_static_tail",
    )
    id_path = ("event", "id")
    essential = ("@timestamp", "message", "log", "process", "host", "event", "ecs", "error")

    def __init__(self, formatter: JsonFormatter) -> None:
        super().__init__(formatter)
        # Static fields are placed once: aliases resolved, dotted keys nested, collisions with
        # formatter fields diverted. What lands in per-record objects is merged per record; the
        # rest is shared (never mutated: every merge copies).
        static: dict[str, Any] = {}
        diverted: list[tuple[str, Any]] = []
        for key, value in {**formatter.defaults, **formatter.static_fields}.items():
            alias = _ECS_STATIC_ALIASES.get(key)
            _merge(
                static,
                alias if alias and not isinstance(value, dict) else key,
                value,
                _ECS_RULES,
                diverted,
            )
        constant: dict[str, Any] = {
            "host": {"hostname": formatter.hostname},
            "ecs": {"version": ECS_VERSION},
        }
        for name in ("host", "ecs"):
            if name in static:
                _merge(constant, name, static.pop(name), _ECS_RULES, diverted)
        self._host = constant["host"]
        self._ecs = constant["ecs"]
        self._static_per_record: tuple[tuple[str, Any], ...] = tuple(
            (key, static.pop(key)) for key in ("log", "process", "event", "error") if key in static
        )
        if diverted:
            _divert(static, diverted)
        self._static_tail = static
        # Static fields inside per-record objects (``event.dataset``) are merged per record,
        # and one named like our namespace is moved under ``extra`` per record: no plain
        # path then.
        # Values that can change after this (a container, an object's str) are read per
        # record by the dict path: no plain path then either.
        self._fragments = (
            None
            if self._static_per_record or NAMESPACE in static or not _fixed_fields(formatter)
            else _plain_fragments(formatter, self._host, self._ecs, static)
        )
        self._log_cache: dict[Any, bytes] = {}
        self._process_cache: dict[Any, bytes] = {}
        self._extra_kinds: dict[Any, int] = {}

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        # The hot path of the default schema: kept flat and allocation-light on purpose
        # (benchmarks/bench_formatting.py holds it to 1.5x python-json-logger's own cost);
        # what only some records need (an exception, user fields) is a call made only then.
        rid = record.__dict__.get(ID_ATTRIBUTE)
        if rid.__class__ is not str or not rid or len(rid) > _SHORT_ID:
            rid = _record_id(record)
        log = _ecs_log(record)
        if isinstance(record.msg, dict):
            message = message_dict.pop("message", "")
            message = message if isinstance(message, str) else _safe_str(message)
        else:
            try:
                message = record.getMessage()
            except Exception:
                message = _get_message(record)
        log_data["@timestamp"] = self._clock(record.created)
        log_data["message"] = message
        log_data["log"] = log
        log_data["process"] = _ecs_process(record)
        log_data["host"] = self._host
        log_data["event"] = {"id": rid}
        log_data["ecs"] = self._ecs
        rules = _ECS_RULES
        if record.exc_info or record.exc_text:
            rules = self._add_error(log_data, record)
        span = current_span()
        if span is not None:
            rules = _ecs_trace(log_data, span, rules)
        if record.stack_info:
            log["stack_info"] = self.formatter.formatStack(record.stack_info)
        self._add_user_fields(log_data, record, message_dict, rules)

    def encode_plain(
        self, record: logging.LogRecord, rid: str, stamp: Mapping[str, Any] | None
    ) -> bytes | None:
        """The document of a plain record as bytes joined from encoded parts (issue #13).

        Plain: a stdlib record with a ``str`` message, no exception, stack or span, no
        context fields, extras that need no merging (new top-level names), a formatter whose
        static fields are scalars and a ``dict`` stamp. Its ``log``
        and ``process`` objects depend only on the call site and the thread, so they are
        encoded once and kept (bounded caches); the message and the extras are encoded per
        record. Anything else returns ``None``: the dict path makes the document, with the
        same bytes (tests/test_formatting_plain.py compares the two).
        """
        fragments = self._fragments
        msg = record.msg
        if (
            fragments is None
            or msg.__class__ is not str
            or record.__class__ is not logging.LogRecord
            or record.exc_info
            or record.exc_text
            or record.stack_info
            or current_fields()
            or current_span() is not None
        ):
            return None
        extras = _plain_extras(record, self._extra_kinds, self._static_tail)
        if extras is None:
            return None
        formatter = self.formatter
        dumps = formatter._dumps_part
        try:
            # Kept objects are encoded to their exact size (they stay); parts are not (the
            # join copies them at once). A message without arguments holds the template only
            # if it is a constant, which an f-string is not: its log object is not kept.
            if record.args:
                log = _cached(self._log_cache, _log_key(record), record, _ecs_log, formatter._dumps)
            else:
                log = dumps(_ecs_log(record))
            process = _cached(
                self._process_cache, _process_key(record), record, _ecs_process, formatter._dumps
            )
            parts = [
                fragments.head,
                self._clock(record.created).encode(),
                fragments.message,
                dumps(_message(record, msg)),
                fragments.log,
                log,
                fragments.process,
                process,
                fragments.event,
                dumps(rid),
                fragments.tail,
            ]
            if extras:
                parts += (b",", dumps(extras)[1:-1])
            parts.append(fragments.namespace)
            if stamp:
                # Another Mapping would be encoded as its str (json_default): the dict path
                # merges it.
                if stamp.__class__ is not dict or NAMESPACE in stamp or "schema" in stamp:
                    return None
                parts += (b",", dumps(stamp)[1:-1])
        except _ENCODE_ERRORS:
            return None
        parts.append(b"}}")
        return b"".join(parts)

    def _add_error(self, log_data: dict[str, Any], record: logging.LogRecord) -> dict[str, Any]:
        """Write ``error`` for a record with an exception; return the rules that protect it
        from user fields (the plain rules when there is nothing to write after all)."""
        exc_info = record.exc_info
        if isinstance(exc_info, tuple) and len(exc_info) == 3 and exc_info[1] is not None:
            log_data["error"] = self._error(exc_info)
        elif record.exc_text:
            log_data["error"] = {"stack_trace": record.exc_text}
        else:
            return _ECS_RULES
        return _ECS_RULES_WITH_ERROR

    def _add_user_fields(
        self,
        log_data: dict[str, Any],
        record: logging.LogRecord,
        message_dict: dict[str, Any],
        rules: dict[str, Any],
    ) -> None:
        """Merge static, context, dict-message and ``extra`` fields, lowest precedence first;
        what collides with the formatter's own fields goes under ``extra``."""
        diverted: list[tuple[str, Any]] = []
        for key, value in self._static_per_record:
            _merge(log_data, key, value, rules, diverted)
        if self._static_tail:
            log_data.update(self._static_tail)
        context = current_fields()
        if context:
            _merge_layer(log_data, context.items(), rules, diverted)
        if message_dict:
            _merge_layer(log_data, message_dict.items(), rules, diverted)
        # A record without extras has only reserved attributes: skip the scan (the subset test
        # guards against record factories that delete standard attributes).
        attrs = record.__dict__
        if len(attrs) > _PLAIN_RECORD_LEN or not attrs.keys() <= _RESERVED:
            _merge_extras(log_data, record, rules, diverted)
        if diverted:
            _divert(log_data, diverted)

    def fallback(self, salvaged: _Salvaged, rid: str) -> dict[str, Any]:
        return {
            "@timestamp": self._clock(salvaged.created),
            "message": salvaged.message,
            "log": {"level": salvaged.levelname.lower(), "logger": salvaged.logger},
            "host": self._host,
            "event": {"id": rid},
            "ecs": self._ecs,
        }

    def _error(self, exc_info: Any) -> dict[str, Any]:
        etype, exc, _tb = exc_info
        try:
            stack_trace = _text(self.formatter.formatException(exc_info))
        except Exception:  # a broken traceback object must not lose the record
            stack_trace = _safe_str(exc)
        return {
            "type": _exception_type(etype),
            "message": _safe_str(exc),
            "stack_trace": stack_trace,
        }


def _ecs_trace(log_data: dict[str, Any], span: SpanIds, rules: dict[str, Any]) -> dict[str, Any]:
    """Write ECS ``trace.id``/``trace.flags``/``span.id``; return the rules that protect them."""
    log_data["trace"] = {"id": span.trace_id, "flags": span.trace_flags}
    log_data["span"] = {"id": span.span_id}
    if rules is _ECS_RULES_WITH_ERROR:
        return _ECS_RULES_WITH_ERROR_AND_TRACE
    return _ECS_RULES_WITH_TRACE


def _ecs_log(record: logging.LogRecord) -> dict[str, Any]:
    """ECS ``log``: level, logger, origin and template (what the call site decides)."""
    levelname = record.levelname
    log: dict[str, Any] = {
        "level": _ECS_LEVELS.get(levelname) or _safe_str(levelname).lower(),
        "logger": record.name,
        "origin": {
            "file": {"name": record.filename, "line": record.lineno},
            "function": record.funcName,
        },
    }
    template = record.msg
    if template.__class__ is str:
        log["template"] = template
    return log


def _ecs_process(record: logging.LogRecord) -> dict[str, Any]:
    """ECS ``process``: pid, process name, thread id and name (what the thread decides)."""
    return {
        "pid": record.process,
        "name": record.processName,
        "thread": {"id": record.thread, "name": record.threadName},
    }


def _log_key(record: logging.LogRecord) -> tuple[Any, ...]:
    """What :func:`_ecs_log` reads: one call site at one level.

    With the class of the number: ``1``, ``True``, ``1.0`` and ``Decimal(1)`` are equal keys
    but encode differently (a record factory may set any of them).
    """
    lineno = record.lineno
    return (
        record.levelname,
        record.name,
        record.filename,
        lineno,
        lineno.__class__,
        record.funcName,
        record.msg,
    )


def _process_key(record: logging.LogRecord) -> tuple[Any, ...]:
    """What :func:`_ecs_process` reads: one thread of one process (with the classes of the
    numbers, as in :func:`_log_key`)."""
    pid = record.process
    thread = record.thread
    return (pid, pid.__class__, record.processName, thread, thread.__class__, record.threadName)


_FRAGMENT_CACHE_SIZE: Final = 4096  # call sites (or threads) whose encoded object is kept


def _cached(
    cache: dict[Any, bytes],
    key: tuple[Any, ...],
    record: logging.LogRecord,
    build: Callable[[logging.LogRecord], dict[str, Any]],
    dumps: Callable[[Any], bytes],
) -> bytes:
    """The encoded ``build(record)``, kept under ``key`` (thread-safe: one dict lookup or
    store, and two threads storing the same key store the same bytes).

    Raises:
        TypeError: an unhashable attribute in ``key`` (the caller takes the dict path).
    """
    encoded = cache.get(key)
    if encoded is None:
        encoded = dumps(build(record))
        if len(cache) >= _FRAGMENT_CACHE_SIZE:
            cache.clear()  # a program with that many call sites: start over, stay bounded
        cache[key] = encoded
    return encoded


# What the plain path does with a record attribute after the stdlib's own (see _plain_extras).
_SKIP: Final = 0  # reserved or _private: not a user field
_WRITE: Final = 1  # a new top-level field
_MERGE: Final = 2  # needs the dict path's merging (ours, an ECS object, dotted, static...)


def _plain_extras(
    record: logging.LogRecord, kinds: dict[Any, int], static: Container[str]
) -> dict[str, Any] | None:
    """The record's extras when each is a new top-level field (the plain path), else
    ``None``. What each attribute name is (:func:`_extra_kind`) is kept in ``kinds``: one
    lookup per extra instead of five tests."""
    attrs = record.__dict__
    # A stdlib record's own attributes come first, in __init__'s order, then the extras;
    # in any other order (a record factory's, makeLogRecord's) the dict path scans them all.
    keys = [*attrs]
    if keys[:_STD_COUNT] != _STD_KEYS:
        return None
    del keys[:_STD_COUNT]
    extras: dict[str, Any] = {}
    for key in keys:
        if key.__class__ is not str:
            # Equal to a str name (a str enum), yet the dict path names it ``str(key)``: its
            # kind is neither taken from ``kinds`` nor kept there.
            if _extra_kind(key, static) == _SKIP:
                continue
            return None
        kind = kinds.get(key)
        if kind is None:
            kind = _extra_kind(key, static)
            if len(kinds) >= _FRAGMENT_CACHE_SIZE:
                kinds.clear()  # many distinct extra names: start over, stay bounded
            kinds[key] = kind
        if kind == _WRITE:
            extras[key] = attrs[key]
        elif kind == _MERGE:
            return None
    return extras


def _extra_kind(key: Any, static: Container[str]) -> int:
    """Mirrors :func:`_merge_extras`: reserved and ``_private`` names are skipped; a name of
    ours, of an ECS object, a dotted or static one is merged; a caller's id too long to be
    the record id is moved under ``extra`` (merged). ``getMessage`` shadows the record's
    method, which the dict path calls (:func:`_message` would not): merged too."""
    if key in (_REFUSED_ID, "getMessage"):
        return _MERGE
    if key in _RESERVED:
        return _SKIP
    if key.__class__ is not str or key in _ECS_RULES or "." in key or key in static:
        return _MERGE
    return _SKIP if key[:1] == "_" else _WRITE


class _Fragments(NamedTuple):
    """The constant bytes between the per-record parts of a plain ECS document."""

    head: bytes
    message: bytes
    log: bytes
    process: bytes
    event: bytes
    tail: bytes  # host, ecs and the static fields
    namespace: bytes


_FIXED_TYPES: Final = frozenset([str, int, float, bool, type(None)])


def _fixed_fields(formatter: JsonFormatter) -> bool:
    """Whether the fields the formatter writes in every record (host name, static fields) are
    fixed once it is made, so their encoding can be kept: scalars only. A list or dict can be
    changed by the program later, an object's ``str`` may differ each time."""
    values = (formatter.hostname, *formatter.defaults.values(), *formatter.static_fields.values())
    return all(value.__class__ in _FIXED_TYPES for value in values)


def _plain_fragments(
    formatter: JsonFormatter, host: dict[str, Any], ecs: dict[str, Any], static: dict[str, Any]
) -> _Fragments | None:
    """The constant parts of :meth:`_EcsSchema.encode_plain`'s documents, in the dict
    path's key order; ``None`` (no plain path) when the static fields do not encode."""
    try:
        tail = b'},"ecs":' + formatter._dumps(ecs)
        if static:
            tail += b"," + formatter._dumps(static)[1:-1]
        host_bytes = formatter._dumps(host)
    except _ENCODE_ERRORS:
        return None
    return _Fragments(
        head=b'{"@timestamp":"',
        message=b'","message":',
        log=b',"log":',
        process=b',"process":',
        event=b',"host":' + host_bytes + b',"event":{"id":',
        tail=tail,
        namespace=b',"' + NAMESPACE.encode() + b'":{"schema":"ecs"',
    )


def _template(record: logging.LogRecord) -> str | None:
    """The unformatted message (``"job %d done"``), ``None`` when ``msg`` is not a string."""
    msg = record.msg
    return msg if isinstance(msg, str) else None


def _add_flat_extras(
    log_data: dict[str, Any], record: logging.LogRecord, diverted: list[tuple[str, Any]]
) -> None:
    """The template and trace fields of the logstash and flat schemas: formatter-owned, so a
    user field of one of these names is appended to ``diverted`` (it goes under ``extra``)."""
    ours: list[tuple[str, Any]] = []
    template = _template(record)
    if template is not None:
        ours.append((TEMPLATE_KEY, template))
    span = current_span()
    if span is not None:
        ours.extend(zip(_TRACE_KEYS, span[:3], strict=True))
    for key in (TEMPLATE_KEY, *_TRACE_KEYS):
        if key in log_data:
            diverted.append((key, log_data.pop(key)))
    # These schemas keep dotted user keys as they are; Elasticsearch would expand
    # "mqlogging.seq" or "mqlogging.ingest.identity" into our namespace.
    for key in [k for k in log_data if k.__class__ is str and k.startswith(_NAMESPACE_DOT)]:
        diverted.append((key, log_data.pop(key)))
    log_data.update(ours)


class _LogstashSchema(_Schema):
    """Logstash v1 event, field for field what ``logstash_formatter.LogstashFormatterV1`` emits.

    Deliberate differences: ``@timestamp`` is the record's creation time with microseconds (V1
    uses the formatting time in milliseconds); ``id`` and ``message_template`` (``record.msg``)
    are added, and inside an OpenTelemetry span ``trace_id``/``span_id``/``trace_flags``; the
    message is always freshly
    rendered and never passed through ``str.format(**record.__dict__)`` (V1 does, which rewrites
    messages containing ``{name}``-like text and can expose attributes); a user field (from
    static fields, context, ``extra`` or a dict message) named like a field the formatter
    writes -- a record attribute (``name``, ``levelname``, ``lineno``...), ``@timestamp``,
    ``@version``, ``source_host``, ``message``, ``exception``, ``id`` -- is moved under
    ``extra`` (V1 lets it replace ours, or drops a static one).

    Values V1 cannot encode well (V1 runs ``json.dumps(default=str)``), checked against
    logstash-formatter 0.5.17 by ``tests/test_logstash_differences.py``:

    - ``bytes``/``bytearray`` are base64 text (V1: their ``repr``, ``"b'\\x00...'"``).
    - ``set``/``frozenset`` are JSON arrays (V1: their ``repr``, ``"{1, 2}"``).
    - With the orjson encoder, integers outside ``-2**63 .. 2**64 - 1`` are decimal strings
      (orjson cannot write them; V1 and the json encoder write a number, which Elasticsearch
      cannot index as ``long`` and many JSON parsers round).
    - ``NaN`` and ``±Infinity`` are ``null`` (V1 writes ``NaN``/``Infinity``: not JSON, the
      whole document is refused by strict parsers such as Elasticsearch's).
    - Enums are their ``value`` and dataclasses objects (V1: their ``str``); dictionary keys
      that JSON cannot have (tuples...) are stringified and an object whose ``str()`` raises is
      shown by a placeholder (V1 raises, and the record is lost to ``handleError``); a lone
      surrogate in text becomes ``?`` (V1 writes the ``\\udXXX`` escape, invalid UTF-16).
    - A record a previous formatter already formatted (``record.message`` set): V1 keeps the
      raw template as ``msg`` and the possibly stale ``message``; here ``msg`` is not a field
      and ``message`` is rendered afresh from ``msg`` and ``args``.
    """

    __slots__ = ("_static",)
    essential = (
        "@timestamp",
        "@version",
        "source_host",
        "name",
        "levelname",
        "message",
        "exception",
        "id",
    )

    def __init__(self, formatter: JsonFormatter) -> None:
        super().__init__(formatter)
        self._static = {**formatter.defaults, **formatter.static_fields}

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        rid = record.__dict__.get(ID_ATTRIBUTE)
        if rid.__class__ is not str or not rid or len(rid) > _SHORT_ID:
            rid = _record_id(record)
        fields, extras = _v1_fields(record)
        # V1's order: static fields, the header, the record's attributes and extras, the
        # message (or the dict message's fields), the exception. A user field named like one
        # of ours (the record's attributes, the header, the message, the id) goes under
        # ``extra`` instead of replacing it.
        owned = _LOGSTASH_OWNED.union(fields)
        exception = fields.pop("exception", _MISSING)
        diverted: list[tuple[str, Any]] = []
        if self._static:
            _place(log_data, self._static.items(), owned, diverted)
        log_data["@timestamp"] = self._clock(record.created)
        log_data["@version"] = 1
        log_data["source_host"] = self.formatter.hostname
        context = current_fields()
        if context:
            _place(log_data, context.items(), owned, diverted)
        log_data.update(fields)
        if extras:
            _place(log_data, extras, owned, diverted)
        if isinstance(record.msg, dict):
            if "message" in message_dict:  # the dict message's own message
                log_data["message"] = message_dict.pop("message")
            _place(log_data, message_dict.items(), owned, diverted)
        else:
            log_data["message"] = _get_message(record)
        if exception is not _MISSING:
            log_data["exception"] = exception
        log_data["id"] = rid
        _add_flat_extras(log_data, record, diverted)
        if diverted:
            _divert(log_data, diverted)

    def fallback(self, salvaged: _Salvaged, rid: str) -> dict[str, Any]:
        return {
            "@timestamp": self._clock(salvaged.created),
            "@version": 1,
            "source_host": self.formatter.hostname,
            "name": salvaged.logger,
            "levelname": salvaged.levelname,
            "levelno": salvaged.levelno,
            "message": salvaged.message,
            "id": rid,
        }


# The logstash fields that are the formatter's whatever the record holds (the record's own
# attributes are added per record); the template and trace fields are kept by _add_flat_extras.
_LOGSTASH_OWNED: Final = frozenset(["@timestamp", "@version", "source_host", "message", "id"])


def _v1_fields(record: logging.LogRecord) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """The record's own attributes as V1 writes them (no ``msg``, ``exc_info`` as
    ``exception``, a falsy ``exc_text`` left out), and its user attributes (``extra``)."""
    fields: dict[str, Any] = {}
    extras: list[tuple[str, Any]] = []
    skipped = (ID_ATTRIBUTE, _REFUSED_ID, "msg", "message")  # "message": always rendered afresh
    for key, value in record.__dict__.items():
        if key in _STD_NAMES:
            if key not in skipped:
                fields[key] = value
        elif key not in skipped:
            extras.append((key, value))
    exc_info = fields.pop("exc_info", None)
    if exc_info:
        fields["exception"] = _v1_exception(exc_info)
    if not fields.get("exc_text", True):
        del fields["exc_text"]
    return fields, extras


def _place(
    log_data: dict[str, Any],
    items: Iterable[tuple[Any, Any]],
    owned: Container[Any],
    diverted: list[tuple[str, Any]],
) -> None:
    """Set user fields (a later one replaces an earlier one); one named like a field the
    formatter owns is appended to ``diverted`` instead (it goes under ``extra``)."""
    for key, value in items:
        if key in owned:
            diverted.append((key if key.__class__ is str else _key_str(key), value))
        else:
            log_data[key] = value


def _v1_exception(exc_info: Any) -> list[str]:
    """V1's ``exception``: the formatted traceback as a list of lines."""
    try:
        return traceback.format_exception(*exc_info)
    except Exception:  # a broken traceback object must not lose the record
        return [_safe_str(exc_info)]


class _FlatSchema(_Schema):
    """python-json-logger's own layout (``pythonjsonlogger.json.JsonFormatter``), plus id and time.

    Honours ``fmt`` (the fields to take from the record), ``rename_fields``, ``defaults`` and
    ``static_fields`` exactly as python-json-logger does; exceptions and stack info are strings
    in ``exc_info`` and ``stack_info``; ``timestamp`` is UTC ISO-8601 with microseconds. A user
    field ``id``, ``timestamp`` or ``@timestamp`` (Elasticsearch's time for every schema; kept
    when ``rename_fields`` asks for it by name), a dotted key into ``mqlogging``, and a field
    named (after renaming) like one ``fmt`` takes from the record or like the record's
    ``exc_info``/``stack_info`` are moved under ``extra`` (python-json-logger lets static,
    dict-message and ``extra`` fields replace them). ``defaults`` stay defaults: fields of
    ``fmt`` replace them, as in the stdlib.
    """

    __slots__ = ()
    timestamp_key = "timestamp"
    timestamp_suffix = "+00:00"  # what python-json-logger's timestamp=True writes
    essential = ("message", "timestamp", "id", "exc_info", "levelname", "name")

    def _add_required(self, log_data: dict[str, Any], record: logging.LogRecord) -> list[str]:
        """Write the fields ``fmt`` takes from the record; return their (renamed) names."""
        formatter = self.formatter
        rename = formatter.rename_fields.get
        attrs = record.__dict__
        names = []
        value: Any
        for field in formatter._required_fields:
            if field == "message":
                value = "" if isinstance(record.msg, dict) else _get_message(record)
            elif field == "asctime":
                value = formatter.formatTime(record, formatter.datefmt)
            else:
                value = attrs.get(field)
            name = rename(field, field)
            log_data[name] = value
            names.append(name)
        return names

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        formatter = self.formatter
        rid = _record_id(record)
        rename = formatter.rename_fields.get
        ours = _exc_and_stack(formatter, record) if _has_exc_or_stack(record) else {}
        # BaseJsonFormatter.add_fields, with context fields between static and message fields,
        # and the fields written from the record (fmt's, the exception, the stack) protected:
        # a user field of one of their names goes under ``extra``.
        for key, value in formatter.defaults.items():
            log_data[rename(key, key)] = value
        owned = {rename(key, key) for key in ours}
        owned.update(self._add_required(log_data, record))
        diverted: list[tuple[str, Any]] = []
        for layer in (formatter.static_fields, current_fields()):
            _place(log_data, ((rename(k, k), v) for k, v in layer.items()), owned, diverted)
        if message_dict:
            if "message" in message_dict:  # the dict message's own message
                log_data[rename("message", "message")] = message_dict.pop("message")
            items = ((rename(k, k), v) for k, v in message_dict.items())
            _place(log_data, items, owned, diverted)
        for key, value in ours.items():
            log_data[rename(key, key)] = value
        extras: dict[str, Any] = {}
        merge_record_extra(record, extras, formatter._skip_fields, formatter.rename_fields)
        _place(log_data, extras.items(), owned, diverted)

        # "@timestamp" too: the ES writer keeps a record's own "@timestamp" as its time in
        # Elasticsearch, so a user's would replace ours there (unless asked for by name).
        ids = [self.timestamp_key, "id"]
        if _ES_TIME_KEY not in formatter.rename_fields.values():
            ids.append(_ES_TIME_KEY)
        diverted.extend((key, log_data.pop(key)) for key in ids if key in log_data)
        log_data[self.timestamp_key] = self._clock(record.created)
        log_data["id"] = rid
        _add_flat_extras(log_data, record, diverted)
        if diverted:
            _divert(log_data, diverted)

    def fallback(self, salvaged: _Salvaged, rid: str) -> dict[str, Any]:
        """python-json-logger's names for the message, level and logger (renamed as asked),
        then the time and the id, which are never renamed."""
        rename = self.formatter.rename_fields.get
        return {
            rename("message", "message"): salvaged.message,
            rename("levelname", "levelname"): salvaged.levelname,
            rename("name", "name"): salvaged.logger,
            self.timestamp_key: self._clock(salvaged.created),
            "id": rid,
        }


def _has_exc_or_stack(record: logging.LogRecord) -> bool:
    return bool(record.exc_info or record.exc_text or record.stack_info)


def _exc_and_stack(formatter: JsonFormatter, record: logging.LogRecord) -> dict[str, str]:
    """BaseJsonFormatter.format's ``exc_info`` and ``stack_info`` strings, for the flat schema
    (a record is never mutated). Unlike python-json-logger, a dict message's own
    ``exc_info``/``stack_info`` does not replace them: it goes under ``extra``."""
    out: dict[str, str] = {}
    if record.exc_info:
        out["exc_info"] = _text(formatter.formatException(record.exc_info))
    elif record.exc_text:
        out["exc_info"] = record.exc_text
    if record.stack_info:
        out["stack_info"] = _text(formatter.formatStack(record.stack_info))
    return out


# OpenTelemetry attribute names the ``otel`` schema writes (semantic conventions; the template
# attribute is ours, there is no convention for it). A user attribute of one of these names
# is moved under the ``extra`` attribute.
OTEL_UID: Final = "log.record.uid"
OTEL_TEMPLATE: Final = "log.record.template"
OTEL_ATTRIBUTES: Final = (
    OTEL_UID,
    OTEL_TEMPLATE,
    "code.file.path",
    "code.function.name",
    "code.line.number",
    "code.stacktrace",
    "thread.id",
    "thread.name",
    "exception.type",
    "exception.message",
    "exception.stacktrace",
)


def _with_prefixes(names: Iterable[str]) -> frozenset[str]:
    """``names`` and each dotted prefix of them (``code.file.path``: ``code``, ``code.file``).

    Elasticsearch expands dotted keys into objects: a user attribute ``code`` (a scalar) next
    to our ``code.file.path`` would make the whole document a mapping error (a dead letter), so
    a user key equal to one of our names or to one of their prefixes is moved aside.
    """
    out: set[str] = set()
    for name in names:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(out)


_OTEL_OWNED: Final = _with_prefixes(OTEL_ATTRIBUTES) | {_DIVERTED_KEY}
_OTEL_RESOURCE: Final = ("service.name", "host.name", "process.pid")
_OTEL_RESOURCE_OWNED: Final = _with_prefixes(_OTEL_RESOURCE) - {"service.name", "host.name"}


def otel_severity(levelno: Any) -> int:
    """OpenTelemetry's severity number for a stdlib level, as its Python SDK maps it:
    DEBUG 5, INFO 9, WARNING 13, ERROR 17, CRITICAL 21, levels in between on the next
    steps (``INFO + 1`` is 10), below DEBUG 1 (TRACE), above ``CRITICAL + 3`` 24; a level that
    is not an integer (a hand-made record) 0, UNSPECIFIED."""
    if levelno.__class__ is not int:
        return 0
    if levelno < logging.DEBUG:
        return 1
    if levelno > logging.CRITICAL + 3:
        return 24
    return (levelno // 10) * 4 + 1 + min(levelno % 10, 3)


def _unix_nanos(created: float) -> int:
    """``record.created`` in nanoseconds, cut to the microsecond like the ISO schemas' time,
    so the same record reads as the same instant in every schema."""
    seconds = int(created)
    return (seconds * 1_000_000 + int((created - seconds) * 1e6)) * 1000


class _OtelSchema(_Schema):
    """OpenTelemetry's log data model as JSON, with OTLP's field names.

    ``timeUnixNano`` (the record's time) and ``observedTimeUnixNano`` (when it was formatted) as
    integers, ``severityNumber``/``severityText``, ``body`` (the formatted message),
    ``attributes`` (a flat map: ``log.record.uid`` = the record id, ``log.record.template``,
    ``code.*``, ``thread.*``, ``exception.*``, then context, dict-message and ``extra`` fields),
    ``resource`` (``service.name``, ``host.name``, ``process.pid`` and the static fields),
    ``scope`` (``{"name": logger name}``) and, with an active span, ``traceId``/``spanId`` (lower
    hex) and ``flags`` (integer). The ``mqlogging`` object stays at the top level as in every
    schema (:mod:`mqlogging.wire`): a consumer mapping records to OTLP moves it to attributes.
    """

    __slots__ = ("_resource", "_resource_base")
    id_path = ("attributes", OTEL_UID)
    timestamp_key = "timeUnixNano"
    message_key = "body"
    essential = (
        "timeUnixNano",
        "observedTimeUnixNano",
        "severityNumber",
        "severityText",
        "body",
        "attributes",
        "resource",
        "scope",
        "traceId",
        "spanId",
        "flags",
    )

    def __init__(self, formatter: JsonFormatter) -> None:
        super().__init__(formatter)
        base: dict[str, Any] = {"service.name": "unknown_service", "host.name": formatter.hostname}
        diverted: list[tuple[str, Any]] = []
        for key, value in {**formatter.defaults, **formatter.static_fields}.items():
            name = _ECS_STATIC_ALIASES.get(key) or key
            if name in _OTEL_RESOURCE_OWNED:  # "process.pid", or a prefix such as "host"
                diverted.append((name, value))
            else:  # a static "service.name" or "host.name" is the operator's explicit choice
                base[name] = value
        if diverted:
            _divert(base, diverted)
        self._resource_base = base
        self._resource: tuple[int | None, dict[str, Any]] = (None, {})

    def _resource_for(self, pid: int | None) -> dict[str, Any]:
        """The resource of process ``pid``: one shared dict per process (never mutated)."""
        cached = self._resource  # one tuple, replaced atomically: consistent across threads
        if cached[0] != pid or not cached[1]:
            cached = self._resource = (pid, {**self._resource_base, "process.pid": pid})
        return cached[1]

    def divert(self, log_data: dict[str, Any], diverted: list[tuple[str, Any]]) -> None:
        """In ``otel`` every user value is an attribute: the ``extra`` attribute it is."""
        attributes = log_data.get("attributes")
        if not isinstance(attributes, dict):
            attributes = log_data["attributes"] = {}
        _divert(attributes, diverted)

    def skeleton(self, record: logging.LogRecord, rid: str) -> dict[str, Any]:
        return {"timeUnixNano": _unix_nanos(_created(record)), "attributes": {OTEL_UID: rid}}

    def fallback(self, salvaged: _Salvaged, rid: str) -> dict[str, Any]:
        pid = salvaged.pid
        return {
            "timeUnixNano": _unix_nanos(salvaged.created),
            "observedTimeUnixNano": time.time_ns(),
            "severityNumber": otel_severity(salvaged.levelno),
            "severityText": salvaged.levelname,
            "body": salvaged.message,
            "attributes": {OTEL_UID: rid},
            "resource": self._resource_for(pid) if pid is not None else self._resource_base,
            "scope": {"name": salvaged.logger},
        }

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        rid = record.__dict__.get(ID_ATTRIBUTE)
        if rid.__class__ is not str or not rid or len(rid) > _SHORT_ID:
            rid = _record_id(record)
        log_data["timeUnixNano"] = _unix_nanos(record.created)
        log_data["observedTimeUnixNano"] = time.time_ns()
        log_data["severityNumber"] = otel_severity(record.levelno)
        log_data["severityText"] = _safe_str(record.levelname)
        if isinstance(record.msg, dict):
            body = message_dict.pop("message", "")
            log_data["body"] = body if isinstance(body, str) else _safe_str(body)
        else:
            log_data["body"] = _get_message(record)
        # The uid first: truncation keeps the first items of a nested object.
        attributes: dict[str, Any] = {OTEL_UID: rid}
        template = _template(record)
        if template is not None:
            attributes[OTEL_TEMPLATE] = template
        attributes["code.file.path"] = record.pathname
        attributes["code.function.name"] = record.funcName
        attributes["code.line.number"] = record.lineno
        attributes["thread.id"] = record.thread
        attributes["thread.name"] = record.threadName
        if record.exc_info or record.exc_text:
            attributes.update(self._exception(record))
        if record.stack_info:
            attributes["code.stacktrace"] = self.formatter.formatStack(record.stack_info)
        _add_user_attributes(attributes, record, message_dict)
        log_data["attributes"] = attributes
        log_data["resource"] = self._resource_for(record.process)
        log_data["scope"] = {"name": record.name}
        span = current_span()
        if span is not None:
            log_data["traceId"] = span.trace_id
            log_data["spanId"] = span.span_id
            log_data["flags"] = span.flags

    def _exception(self, record: logging.LogRecord) -> dict[str, Any]:
        """OpenTelemetry's ``exception.type``/``message``/``stacktrace`` attributes."""
        exc_info = record.exc_info
        if isinstance(exc_info, tuple) and len(exc_info) == 3 and exc_info[1] is not None:
            try:
                stacktrace = _text(self.formatter.formatException(exc_info))
            except Exception:  # a broken traceback object must not lose the record
                stacktrace = _safe_str(exc_info[1])
            return {
                "exception.type": _exception_type(exc_info[0]),
                "exception.message": _safe_str(exc_info[1]),
                "exception.stacktrace": stacktrace,
            }
        return {"exception.stacktrace": record.exc_text} if record.exc_text else {}


def _add_user_attributes(
    attributes: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
) -> None:
    """Context, dict-message and ``extra`` fields as attributes, lowest precedence first; one
    that would replace an attribute of ours goes under the ``extra`` attribute."""
    diverted: list[tuple[str, Any]] = []
    attrs = record.__dict__
    layers: list[Iterable[tuple[Any, Any]]] = []
    context = current_fields()
    if context:
        layers.append(context.items())
    if message_dict:
        layers.append(message_dict.items())
    # A record without extras has only reserved attributes: skip the scan (as in ecs).
    if len(attrs) > _PLAIN_RECORD_LEN or not attrs.keys() <= _RESERVED:
        layers.append(
            (k, v) for k, v in attrs.items() if k not in _RESERVED and not str(k).startswith("_")
        )
    for layer in layers:
        for key, value in layer:
            name = key if key.__class__ is str else _key_str(key)
            if name == _DIVERTED_KEY and isinstance(value, dict):
                attributes[name] = value  # set-aside fields join it, as in the other schemas
            elif name in _OTEL_OWNED:
                diverted.append((name, value))
            else:
                attributes[name] = value
    if diverted:
        _divert(attributes, diverted)


_SCHEMA_CLASSES: Final[dict[str, type[_Schema]]] = {
    "ecs": _EcsSchema,
    "logstash": _LogstashSchema,
    "flat": _FlatSchema,
    "otel": _OtelSchema,
}


# --------------------------------------------------------------------------- the formatter


def _check_fields(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        msg = f"{name} must be a mapping of field names (str) to values, got {value!r}"
        raise ConfigurationError(msg)
    return dict(value)


class JsonFormatter(BaseJsonFormatter):
    """Format each record as one JSON document in the ``ecs``, ``logstash``, ``flat`` or ``otel``
    schema.

    Use it like any :class:`logging.Formatter`; from :func:`logging.config.dictConfig` prefer the
    factory form, the only one that can pass options::

        "formatters": {"json": {"()": "mqlogging.JsonFormatter", "schema": "ecs",
                                "static_fields": {"service": "billing", "site": "LCG.CERN.ch"}}}

    (``{"class": "mqlogging.JsonFormatter"}`` works too but gets only ``format``/``datefmt``/
    ``style``/``validate``/``defaults``: the ``ecs`` schema with default options.)

    Args:
        fmt: Only for ``schema="flat"``: the record attributes to include, as in
            python-json-logger (``"%(levelname)s %(name)s %(message)s"``, or a list of names).
        datefmt: Only used for an ``asctime`` field in ``flat``'s ``fmt``.
        style: ``fmt``'s style (``%``, ``{``, ``$``, or python-json-logger's ``,``).
        validate: Validate ``fmt`` against ``style``.
        schema: ``"ecs"`` (Elastic Common Schema, the default), ``"logstash"`` (a Logstash v1
            event as ``logstash-formatter``'s V1 formatter writes it), ``"flat"``
            (python-json-logger's layout) or ``"otel"`` (OpenTelemetry's log data model as
            JSON; static fields go to its ``resource``, user fields to its ``attributes``).
        static_fields: Fields added to every record (service name, site, pilot id...). In
            ``ecs``, ``service``/``service_name``/``service_version``/``environment`` go to
            ``service.name``/``service.version``/``service.environment`` and dotted names
            become nested objects.
        max_bytes: Largest encoded record; a larger one is shortened and marked
            ``"mqlogging": {"truncated": true, "original_bytes": N}``. ``None``: no limit.
        hostname: Reported host name (``host.hostname`` / ``source_host``); default
            :func:`socket.gethostname`, looked up once.
        encoder: ``"auto"`` (orjson if installed, else :mod:`json`), ``"orjson"`` or ``"json"``.
        json_default: Called for values neither encoder knows; if it fails or is not given,
            python-json-logger's conversions apply, ending in ``str``/``repr``.
        defaults: Like ``static_fields`` but overridden by them (stdlib's ``defaults``).
        prefix: Prepended to :meth:`format`'s string (never to :meth:`format_message`'s body).
        rename_fields: Only for ``flat``: python-json-logger's field renaming.

    Where user fields go: ``extra={...}`` fields, context fields (:func:`bind_context`), fields
    of a dict message (``logger.info({"k": v})``) and static fields are all added; on a name
    clash the later of static < context < dict message < extra wins (in ``logstash``, as in
    V1, a dict message wins over ``extra``). A user field never replaces a field the formatter
    writes (the id, the timestamp, the level, the logger, the message... every field each schema
    emits from the record, and in ``ecs`` a scalar where ECS has an object such as ``host`` or
    ``user``; in ``otel`` user fields are attributes): it is moved under ``extra``,
    its path joined with underscores (``{"extra": {"host": "web1", "log_level": "x"}}``), so
    nothing is lost and Elasticsearch mappings stay consistent.

    Raises:
        ConfigurationError: unknown schema, an option the schema does not take, a bad value.
        MissingDependencyError: ``encoder="orjson"`` without orjson installed.

    Thread-safe; formatting never raises because of a value that cannot be encoded.
    """

    def __init__(
        self,
        fmt: str | Sequence[str] | None = None,
        datefmt: str | None = None,
        style: str = "%",
        validate: bool = True,
        *,
        schema: str = "ecs",
        static_fields: Mapping[str, Any] | None = None,
        max_bytes: int | None = DEFAULT_MAX_RECORD_BYTES,
        hostname: str | None = None,
        encoder: str = "auto",
        json_default: Callable[[Any], Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
        prefix: str = "",
        rename_fields: Mapping[str, str] | None = None,
    ) -> None:
        if schema not in _SCHEMA_CLASSES:
            msg = f"unknown schema {schema!r} for JsonFormatter (known: {', '.join(SCHEMAS)})"
            raise ConfigurationError(msg)
        if schema != "flat" and fmt is not None:
            msg = f"fmt/format applies only to schema='flat', not to schema={schema!r}; remove it"
            raise ConfigurationError(msg)
        if schema != "flat" and rename_fields:
            msg = f"rename_fields applies only to schema='flat', not to schema={schema!r}"
            raise ConfigurationError(msg)
        if max_bytes is not None and (
            isinstance(max_bytes, bool)
            or not isinstance(max_bytes, int)
            or max_bytes < MIN_MAX_RECORD_BYTES
        ):
            least = MIN_MAX_RECORD_BYTES
            msg = f"max_bytes must be an integer >= {least} or None, got {max_bytes!r}"
            raise ConfigurationError(msg)
        if encoder not in _ENCODERS:
            msg = f"unknown encoder {encoder!r} for JsonFormatter (known: {', '.join(_ENCODERS)})"
            raise ConfigurationError(msg)
        if json_default is not None and not callable(json_default):
            msg = f"json_default must be callable, got {json_default!r}"
            raise ConfigurationError(msg)
        static = _check_fields("static_fields", static_fields)
        default_fields = _check_fields("defaults", defaults)
        renames = _check_fields("rename_fields", rename_fields)
        try:
            super().__init__(
                fmt,
                datefmt,
                style,
                validate,
                prefix=prefix,
                rename_fields=renames,
                static_fields=static,
                reserved_attrs=sorted(_RESERVED),
                timestamp=False,
                defaults=default_fields,
            )
        except (ValueError, KeyError, TypeError) as exc:
            msg = f"invalid format {fmt!r} for style {style!r}: {exc}"
            raise ConfigurationError(msg) from exc

        self.schema = schema
        self.max_bytes = max_bytes
        self.hostname = hostname if hostname is not None else _hostname()
        default = _json_default if json_default is None else _chain_default(json_default)
        self._encoder = _Encoder(encoder, default)
        self._dumps = self._encoder.dumps
        self._dumps_part = self._encoder.dumps_part
        self._schema: _Schema = _SCHEMA_CLASSES[schema](self)
        self._add_fields = self._schema.add_fields
        self._encode_plain = self._schema.encode_plain
        self._namespace: dict[str, Any] = {"schema": schema}  # shared, never mutated
        # python-json-logger's hooks overridden in a subclass are honoured; otherwise
        # format_message skips the indirections and encodes straight to bytes.
        cls = type(self)
        self._hooks_overridden = (
            cls.add_fields is not JsonFormatter.add_fields
            or cls.process_log_record is not BaseJsonFormatter.process_log_record
        )
        self._custom_jsonify = cls.jsonify_log_record is not JsonFormatter.jsonify_log_record

    @property
    def encoder(self) -> str:
        """The encoder in use: ``"orjson"`` or ``"json"``."""
        return self._encoder.name

    def __repr__(self) -> str:
        return f"<JsonFormatter schema={self.schema!r} encoder={self.encoder!r}>"

    # -- python-json-logger hooks -----------------------------------------------------------

    def add_fields(
        self,
        log_data: dict[str, Any],
        record: logging.LogRecord,
        message_dict: dict[str, Any],
    ) -> None:
        """Fill ``log_data`` from ``record`` in this formatter's schema (override to add fields)."""
        self._schema.add_fields(log_data, record, message_dict)

    def jsonify_log_record(self, log_data: LogData) -> str:
        """Encode ``log_data`` as compact JSON (never raises on unencodable values)."""
        return self._encoder.encode(log_data).decode("utf-8")

    # -- formatting -------------------------------------------------------------------------

    def format_message(
        self, record: logging.LogRecord, stamp: Mapping[str, Any] | None = None
    ) -> Message:
        """Format ``record`` into its wire message: the record id and the UTF-8 JSON body.

        The body has no trailing newline and is at most ``max_bytes`` long. The id is the
        record's ``mqlogging_id`` attribute if a caller set one, else a new time-ordered id that
        is stamped on the record, so formatting the same record again yields the same id.
        Values that cannot be encoded never make it fail (see :class:`JsonFormatter`).

        ``stamp`` (from :class:`~mqlogging.MQHandler`: its producer id and the record's
        sequence number) is added to the ``mqlogging`` object next to ``schema``; see
        :mod:`mqlogging.wire`. It is per call, not per record, because each handler numbers
        the records it sends on its own.
        """
        attrs = record.__dict__
        rid = attrs.get(ID_ATTRIBUTE)
        if rid is None:  # a record formatted for the first time: stamp a new id
            rid = attrs[ID_ATTRIBUTE] = new_id()
        elif rid.__class__ is not str or not rid or len(rid) > _SHORT_ID:
            rid = _record_id(record)
        if not self._hooks_overridden and not self._custom_jsonify:
            body = self._encode_plain(record, rid, stamp)
            if body is not None and (self.max_bytes is None or len(body) <= self.max_bytes):
                return _new_message(Message, (rid, body))
        return _new_message(Message, (rid, self._encode_dict(record, rid, stamp)))

    def _encode_dict(
        self, record: logging.LogRecord, rid: str, stamp: Mapping[str, Any] | None
    ) -> bytes:
        """The document built as a dict by the schema (and the hooks), then encoded."""
        attrs = record.__dict__
        msg = record.msg
        # python-json-logger 4.2 semantics: a dict message is copied, never modified.
        message_dict: dict[str, Any] = msg.copy() if isinstance(msg, dict) else {}
        log_data: LogData = {}
        if self._hooks_overridden:
            self.add_fields(log_data, record, message_dict)
            log_data = self.process_log_record(log_data)
        else:
            self._add_fields(log_data, record, message_dict)
        # The namespace is ours in every schema (mqlogging.wire): a user field of that name
        # is moved under ``extra`` like any field that would shadow one of ours.
        user_namespace = log_data.pop(NAMESPACE, _MISSING)
        if user_namespace is not _MISSING:
            _divert(log_data, [(NAMESPACE, user_namespace)])
        refused_id = attrs.get(_REFUSED_ID)
        if refused_id is not None:  # a caller's id too long to be the record id (_record_id)
            self._schema.divert(log_data, [(ID_ATTRIBUTE, refused_id)])
        log_data[NAMESPACE] = self._namespace if stamp is None else {**self._namespace, **stamp}
        if self._custom_jsonify:
            body = _clean_str(self.jsonify_log_record(log_data)).encode("utf-8")
        else:
            try:
                body = self._dumps(log_data)
            except _ENCODE_ERRORS:
                body = self._encoder.fallback(log_data)
        if self.max_bytes is not None and len(body) > self.max_bytes:
            body = self._truncate(record, rid, log_data, len(body))
        return body

    def fallback_message(
        self,
        record: logging.LogRecord,
        stamp: Mapping[str, Any] | None,
        error: BaseException,
    ) -> Message:
        """The minimal wire message of a record :meth:`format_message` raised ``error`` for
        (a filter or a record factory broke an attribute: ``levelname`` a list, ``created``
        infinite...), so the record still ships instead of becoming a gap in its producer's
        sequence. The handler passes the ``stamp`` it gave :meth:`format_message` (the same
        seq: a number is taken once).

        The document is valid for the schema (its id, its time: the record's own if usable,
        else now), with the message as far as it renders (else its ``str``/``repr``, else a
        placeholder), the level (from ``levelno`` when ``levelname`` is unusable), the logger
        name, and the error in ``mqlogging.format_error`` (``{"type", "message"}``; not ECS
        ``error.*``, which is the application's exception). Static, context and ``extra``
        fields are left out: any of them may be what broke. Never raises for any record.
        """
        try:
            rid = _record_id(record)
        except Exception:  # a record whose __dict__ itself is broken
            rid = new_id()
        doc = self._schema.fallback(_salvage(record), rid)
        namespace = self._namespace if stamp is None else {**self._namespace, **stamp}
        doc[NAMESPACE] = {**namespace, FORMAT_ERROR: _format_error(error)}
        body = self._encoder.encode(doc)
        if self.max_bytes is not None and len(body) > self.max_bytes:
            body = self._truncate(record, rid, doc, len(body))
        return _new_message(Message, (rid, body))

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record`` as a JSON string (``prefix`` + the body of :meth:`format_message`).

        For any handler (a ``StreamHandler`` to stdout, a file): a record :meth:`format_message`
        cannot format (a filter or record factory broke one of its attributes) is written as
        its :meth:`fallback_message`, with the error in ``mqlogging.format_error``, as
        :class:`~mqlogging.MQHandler` ships it: the line is there and says what broke, instead
        of a traceback on stderr in its place.
        """
        try:
            message = self.format_message(record)
        except Exception as exc:
            message = self.fallback_message(record, None, exc)
        body = message.body.decode("utf-8")
        return self.prefix + body if self.prefix else body

    def _truncate(self, record: logging.LogRecord, rid: str, log_data: LogData, size: int) -> bytes:
        """Shrink an oversized document until it fits ``max_bytes``; always returns valid JSON.

        1. cut every long string (message, stack trace, extras) and nested container, finding
           by bisection the largest cut that fits; 2. the same on the schema's essential fields
           only; 3. the bare skeleton: id, timestamp and the marker.
        """
        limit = self.max_bytes
        assert limit is not None
        marker: dict[str, Any] = {"truncated": True, "original_bytes": size, "max_bytes": limit}
        encoder = self._encoder
        # Our namespace (schema, producer, sequence number) survives every step, never cut.
        namespace = log_data.get(NAMESPACE)
        if not isinstance(namespace, dict):
            namespace = self._namespace
        # A stamp may hold what the strict encoders refuse (format_message takes any).
        namespace = _sanitize(namespace, encoder.default, None)

        def attempt(doc: dict[str, Any], cut: int) -> bytes:
            shrunk = _sanitize(doc, encoder.default, cut)
            shrunk[_TRUNCATION_KEY] = {**namespace, **marker}
            return encoder.dumps(shrunk)

        def bisect(doc: dict[str, Any]) -> bytes | None:
            # A string longer than max_bytes characters never fits: no need to try longer cuts.
            low, high, best = _MIN_STRING_LIMIT, max(min(size, limit), _MIN_STRING_LIMIT), None
            while low <= high:
                cut = (low + high) // 2
                body = attempt(doc, cut)
                if len(body) <= limit:
                    best, low = body, cut + 1
                else:
                    high = cut - 1
            return best

        body = bisect(log_data)
        if body is not None:
            return body
        essential = {k: log_data[k] for k in self._schema.essential if k in log_data}
        dropped = [_key_str(k) for k in log_data if k not in essential]
        marker["dropped_count"] = len(dropped)
        marker["dropped_fields"] = [
            _cut(k, _MIN_STRING_LIMIT) for k in dropped[:_MAX_DROPPED_NAMES]
        ]
        body = bisect(essential)
        if body is not None:
            return body
        del marker["dropped_fields"]  # the count stays; the names may be what does not fit
        skeleton = self._schema.skeleton(record, rid)
        skeleton[_TRUNCATION_KEY] = {**namespace, **marker}
        body = encoder.dumps(skeleton)
        message_key = self._schema.message_key
        message = log_data.get(message_key)
        if isinstance(message, str):  # keep the start of the message if it fits
            skeleton[message_key] = _clean_str(_cut(message, _MIN_STRING_LIMIT))
            with_message = encoder.dumps(skeleton)
            if len(with_message) <= limit:
                return with_message
        return body


def _hostname() -> str:
    try:
        return socket.gethostname()
    except OSError:  # pragma: no cover - gethostname practically never fails
        return ""
