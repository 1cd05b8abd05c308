"""Where a record keeps its id, time, producer and sequence number: one reader for everyone.

Every reader of records — the collector (``_id`` in Elasticsearch), ``local://``, the spool
tools, ``mqlogging tail`` and ``mqlogging audit`` — asks :func:`read_meta`, so they can never
disagree, and so a user field can never pass for one of ours.

The rule, per schema (``schema=`` of :class:`~mqlogging.JsonFormatter`):

========== ======================= ================ ==================================
schema     record id               record time      mqlogging namespace
========== ======================= ================ ==================================
``ecs``    ``event.id``            ``@timestamp``   ``mqlogging``
``logstash`` ``id``                ``@timestamp``   ``mqlogging``
``flat``   ``id``                  ``timestamp``    ``mqlogging``
``otel``   ``attributes`` →        ``timeUnixNano`` ``mqlogging``
           ``log.record.uid``      (integer ns)
========== ======================= ================ ==================================

``otel``'s time is an integer of nanoseconds since the epoch (or its decimal string, as
OTLP/JSON writes 64-bit integers); :func:`read_meta` returns it as ISO-8601 UTC with
microseconds like the other schemas' times, so every reader compares one kind of time.

The formatter owns the ``mqlogging`` object in every schema (a user field of that name is moved
under ``extra``, like every user field that would shadow one of ours) and always writes
``mqlogging.schema`` there, so a reader knows which row applies. Records formatted by
:class:`~mqlogging.MQHandler` also carry their producer's identity and sequence number::

    "mqlogging": {"schema": "ecs", "producer": "node17:4242:9f3ab2c1", "seq": 42}

``producer`` is one id per handler instance per process (host, pid, a random part), stable for
the life of that handler in that process; ``seq`` counts that producer's records from 1 without
gaps. When the handler drops records by an explicit policy it sends a *marker*: a record of its
own (with its own ``seq``) whose ``mqlogging.dropped`` names what was dropped and why::

    "mqlogging": {"schema": "ecs", "producer": "...", "seq": 97,
                  "dropped": [{"producer": "node17:4242:9f3ab2c1", "first": 43, "last": 96,
                               "reason": "overflow"}]}

so ``mqlogging audit`` tells a gap that was dropped and counted from one that was lost.

A record the formatter could not lay out (a filter or a record factory broke one of its
attributes: ``levelname`` a list, ``created`` infinite...) still ships, with its seq, as a
*fallback* record: the schema's id, time, level, logger and message, and what went wrong in
``mqlogging.format_error`` (``{"type": "TypeError", "message": "unhashable type: 'list'"}``;
ECS's ``error.*`` fields stay the application's exception)::

    "mqlogging": {"schema": "ecs", "producer": "...", "seq": 43,
                  "format_error": {"type": "OverflowError", "message": "..."}}

Documents without ``mqlogging.schema`` (written by another producer, e.g. through the DIRAC-style
``put()``) have no record id of ours: their ``id`` or ``event.id`` is just a user field (a job
id shared by many records), so :func:`read_meta` returns ``None`` and each reader falls back to
the transport's id (AMQP ``message_id``, STOMP ``message-id``) or the record's place in a spool.
Their time is ``@timestamp``, else ``timestamp``.

This module imports nothing from the package but ``_json`` (and through it ``errors``), so
any layer may use it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Final, NamedTuple

from ._json import loads

__all__ = [
    "FORMAT_ERROR",
    "MAX_ID_BYTES",
    "NAMESPACE",
    "TIME_KEYS",
    "DroppedRange",
    "RecordMeta",
    "decode",
    "id_fits",
    "id_path",
    "new_producer_id",
    "read_id",
    "read_meta",
    "time_key",
]

NAMESPACE: Final = "mqlogging"
"""The top-level object the formatter owns in every schema."""

FORMAT_ERROR: Final = "format_error"
"""The key of a fallback record's formatting error in the ``mqlogging`` object."""

MAX_ID_BYTES: Final = 512
"""Longest usable record id (Elasticsearch's ``_id`` limit); longer ones are ignored."""

_ID_PATHS: Final[Mapping[str, tuple[str, ...]]] = {
    "ecs": ("event", "id"),
    "logstash": ("id",),
    "flat": ("id",),
    "otel": ("attributes", "log.record.uid"),
}
_TIME_KEYS: Final[Mapping[str, str]] = {
    "ecs": "@timestamp",
    "logstash": "@timestamp",
    "flat": "timestamp",
    "otel": "timeUnixNano",
}
_NANOS_SCHEMAS: Final = frozenset(["otel"])  # whose time is an integer of nanoseconds

TIME_KEYS: Final = tuple(dict.fromkeys(_TIME_KEYS.values()))
"""Every top-level key a record time may live in, whatever the schema (for a reader that
fetches only part of a document, e.g. ``_source`` filtering in Elasticsearch)."""


def _get(doc: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = doc
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _nanos_iso(value: Any) -> str | None:
    """Nanoseconds since the epoch (an int, or its decimal string) as ISO-8601 UTC with
    microseconds (``2026-12-01T10:00:00.123456Z``), ``None`` when it is not one."""
    if value.__class__ is str and value.isdigit():
        value = int(value)
    if value.__class__ is not int or value < 0:
        return None
    micros = value // 1000
    try:
        moment = _EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def decode(body: bytes) -> Any:
    """The JSON value of a record body (or a part of one), ``None`` when it is not JSON."""
    try:
        return loads(body)
    except ValueError:  # orjson.JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None


def id_path(schema: str) -> tuple[str, ...]:
    """The path of the record id in ``schema``'s documents (``("event", "id")`` for ECS)."""
    return _ID_PATHS[schema]


def time_key(schema: str) -> str:
    """The top-level key of the record time in ``schema``'s documents."""
    return _TIME_KEYS[schema]


def new_producer_id() -> str:
    """A new producer id: ``host:pid:random`` (8 hex digits), unique per handler per process."""
    try:
        host = socket.gethostname()
    except OSError:  # pragma: no cover - gethostname practically never fails
        host = "unknown"
    return f"{host}:{os.getpid()}:{os.urandom(4).hex()}"


class DroppedRange(NamedTuple):
    """Records ``first``..``last`` (inclusive) of ``producer`` were dropped for ``reason``."""

    producer: str
    first: int
    last: int
    reason: str

    def as_json(self) -> dict[str, Any]:
        """The range as it appears in a marker's ``mqlogging.dropped`` list."""
        return {
            "producer": self.producer,
            "first": self.first,
            "last": self.last,
            "reason": self.reason,
        }


class RecordMeta(NamedTuple):
    """What :func:`read_meta` found; ``None`` (or empty) where the document has nothing usable."""

    id: str | None
    timestamp: str | None
    schema: str | None
    producer: str | None
    seq: int | None
    dropped: tuple[DroppedRange, ...]


_NOTHING: Final = RecordMeta(None, None, None, None, None, ())
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)


def id_fits(value: str) -> bool:
    """True if ``value`` is a usable record id: not empty, at most :data:`MAX_ID_BYTES` UTF-8
    bytes. The formatter applies it when it picks an id, every reader when it reads one."""
    return bool(value) and len(value) <= MAX_ID_BYTES and len(value.encode()) <= MAX_ID_BYTES


def _usable_id(value: Any) -> str | None:
    if value.__class__ is str:
        return value if id_fits(value) else None
    if value.__class__ is int:
        return str(value)
    return None


def _seq(value: Any) -> int | None:
    return value if value.__class__ is int and value > 0 else None


def _dropped(value: Any) -> tuple[DroppedRange, ...]:
    if not isinstance(value, list):
        return ()
    out = []
    for item in value:
        if not isinstance(item, dict):
            continue
        producer, reason = item.get("producer"), item.get("reason")
        first, last = _seq(item.get("first")), _seq(item.get("last"))
        if isinstance(producer, str) and first is not None and last is not None and first <= last:
            out.append(DroppedRange(producer, first, last, str(reason or "unknown")))
    return tuple(out)


def _schema(ns: Any) -> str | None:
    """The schema named in a record's ``mqlogging`` object ``ns``, if it is one we know."""
    schema = ns.get("schema") if isinstance(ns, dict) else None
    return schema if isinstance(schema, str) and schema in _ID_PATHS else None


def _schema_id(doc: dict[str, Any], schema: str) -> str | None:
    """The usable record id of ``doc``, a record of ``schema`` (the one rule for both readers)."""
    return _usable_id(_get(doc, _ID_PATHS[schema]))


def read_id(doc: Any) -> str | None:
    """The record id of a decoded record: :func:`read_meta`'s ``id``, by the same rule, without
    reading the rest (the collector asks for every record it consumes). Never raises."""
    if not isinstance(doc, dict):
        return None
    schema = _schema(doc.get(NAMESPACE))
    return None if schema is None else _schema_id(doc, schema)


def read_meta(doc: Any) -> RecordMeta:
    """The id, time, schema, producer, sequence number and dropped ranges of a decoded record.

    Never raises: anything missing or of the wrong type reads as ``None`` (the caller decides
    the fallback, e.g. the transport's message id for the record id).
    """
    if not isinstance(doc, dict):
        return _NOTHING
    ns = doc.get(NAMESPACE)
    schema = _schema(ns)
    if schema is not None:
        rid = _schema_id(doc, schema)
        time_value = doc.get(_TIME_KEYS[schema])
        if schema in _NANOS_SCHEMAS:
            time_value = _nanos_iso(time_value)
    else:  # not ours: whatever its fields are called, none of them is a record id of ours
        rid = None
        time_value = doc.get("@timestamp", doc.get("timestamp"))
    if isinstance(ns, dict):
        producer = ns.get("producer")
        producer = producer if isinstance(producer, str) and producer else None
        seq = _seq(ns.get("seq")) if producer is not None else None
        dropped = _dropped(ns.get("dropped"))
    else:
        producer, seq, dropped = None, None, ()
    return RecordMeta(
        rid,
        time_value if isinstance(time_value, str) else None,
        schema,
        producer,
        seq,
        dropped,
    )
