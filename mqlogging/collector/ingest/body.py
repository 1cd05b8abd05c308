"""A request body into records: gzip with a hard limit, JSON lines or a JSON array.

What happens to each line:

- a body that is one JSON array is a list of lines (its elements); any other body is JSON
  lines, even when its first line is an array (that line alone is refused).
- a JSON object → a record. Its id is kept when it carries one of ours (``event.id`` / ``id``
  with ``mqlogging.schema``, read by :func:`mqlogging.wire.read_meta`); one without gets a
  new id here, so from here on (broker redeliveries, collector retries) it is stored once in
  Elasticsearch. (A client that retries a whole request must send ids itself to avoid
  duplicates; the mqlogging handler always does.)
- the ingest stamps ``mqlogging.ingest = {"identity": ..., "auth": "token" | "x509"}`` on
  every record, replacing whatever the client put there: a record cannot claim another
  identity. A record whose ``mqlogging`` is not an object is refused (there is nowhere to put
  the stamp without changing the user's value).
- anything else (invalid JSON or UTF-8, not an object, an empty array element, an object
  nested too deeply to be encoded again, a dotted key such as ``"mqlogging.ingest.identity"``
  that Elasticsearch would expand into the stamp) → an error naming the line (1-based; the
  element index + 1 for an array) and, when it has one, its id. At most
  :data:`MAX_REPORTED_ERRORS` errors are kept; the others are only counted (``omitted``), so
  a body of a million invalid elements cannot make an answer many times its size.

Limits are bytes: the body on the wire and after decompression both stop at
``max_body_bytes`` (:class:`TooLarge`), decompression is done in bounded steps, so a gzip bomb
costs at most that much memory.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

from ..._ids import new_id
from ..._json import DECODE_ERRORS, dumps, loads
from ...wire import NAMESPACE, read_meta

__all__ = [
    "MAX_REPORTED_ERRORS",
    "BadEncoding",
    "LineError",
    "Parsed",
    "TooLarge",
    "TooMany",
    "gunzip",
    "parse_body",
]

_STEP = 64 * 1024

MAX_REPORTED_ERRORS = 100
"""Refused lines reported one by one in an answer; the rest are counted in ``omitted``."""

_STAMP_KEY = f"{NAMESPACE}.ingest"  # as a dotted key, Elasticsearch merges it into the stamp


class TooLarge(Exception):
    """The body (or what it decompresses to) is above the limit."""


class TooMany(Exception):
    """The body holds more records than the limit (``args[0]``: how many)."""


class BadEncoding(Exception):
    """The body says it is gzip but is not."""


@dataclass(frozen=True, slots=True)
class LineError:
    """One refused line: where, its id when it had one, and why."""

    line: int
    error: str
    id: str = ""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"line": self.line, "error": self.error}
        if self.id:
            out["id"] = self.id
        return out


@dataclass(slots=True)
class Parsed:
    """The records of one request (``(id, body)`` pairs, stamped) and the refused lines (the
    first :data:`MAX_REPORTED_ERRORS`; ``omitted`` counts the others)."""

    records: list[tuple[str, bytes]] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    omitted: int = 0

    def refuse(self, error: LineError) -> None:
        """Record one refused line (kept, or only counted past the report's bound)."""
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(error)
        else:
            self.omitted += 1


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress gzip ``data``, refusing more than ``limit`` bytes of output.

    Raises:
        TooLarge: the output would exceed ``limit`` (a bomb stops here, at ``limit`` bytes).
        BadEncoding: not gzip, or truncated.
    """
    inflater = zlib.decompressobj(wbits=31)
    out = bytearray()
    pending = data
    try:
        while pending:
            out += inflater.decompress(pending, _STEP)
            if len(out) > limit:
                raise TooLarge
            pending = inflater.unconsumed_tail
        out += inflater.flush(_STEP)
    except zlib.error as exc:
        raise BadEncoding(str(exc)) from None
    if len(out) > limit:
        raise TooLarge
    if not inflater.eof:
        msg = "truncated gzip stream"
        raise BadEncoding(msg)
    return bytes(out)


def _items(body: bytes) -> list[tuple[int, Any, str]]:
    """``(line, value, error)`` per line or array element (``error`` empty when it decoded)."""
    if body.lstrip().startswith(b"["):
        try:
            values = loads(body)
        except DECODE_ERRORS:
            values = None  # JSON lines whose first line is an array: each line on its own
        if isinstance(values, list):
            return [(i + 1, v, "") for i, v in enumerate(values)]
    out: list[tuple[int, Any, str]] = []
    for number, line in enumerate(body.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            out.append((number, loads(line), ""))
        except DECODE_ERRORS as exc:
            out.append((number, None, f"invalid JSON: {exc}"))
    return out


def _client_id(value: dict[str, Any]) -> str:
    """The id a refused line carries, for the error report (the client maps errors to its
    records by line; the id helps a human)."""
    return read_meta(value).id or ""


def _spoofing_key(value: dict[str, Any], ns: dict[str, Any]) -> str | None:
    """A dotted key that Elasticsearch would expand into ``mqlogging.ingest`` (beside the
    stamp: the identity field would hold the client's value too), or ``None``."""
    for key in value:
        if key.__class__ is str and (key == _STAMP_KEY or key.startswith(_STAMP_KEY + ".")):
            return key
    for key in ns:
        if key.__class__ is str and key.startswith("ingest."):
            return f"{NAMESPACE}/{key}"
    return None


def _record(number: int, value: Any, stamp: dict[str, str]) -> tuple[str, bytes] | LineError:
    """One decoded line as a stamped ``(id, body)``, or why it is refused."""
    if not isinstance(value, dict):
        return LineError(number, f"not a JSON object: {type(value).__name__}")
    ns = value.setdefault(NAMESPACE, {})
    if not isinstance(ns, dict):
        why = f"field {NAMESPACE!r} must be an object (the ingest adds {NAMESPACE}.ingest)"
        return LineError(number, why, _client_id(value))
    spoof = _spoofing_key(value, ns)
    if spoof is not None:
        why = f"key {spoof!r}: {_STAMP_KEY} is set by the ingest only"
        return LineError(number, why, _client_id(value))
    ns["ingest"] = stamp
    try:
        body = dumps(value)
    except (TypeError, ValueError, RecursionError) as exc:  # orjson: depth above 254
        return LineError(number, f"cannot be encoded again: {exc}", _client_id(value))
    return read_meta(value).id or new_id(), body


def parse_body(body: bytes, *, identity: str, auth: str, max_records: int) -> Parsed:
    """Split ``body`` into stamped records and per-line errors (see the module docstring).

    Raises:
        TooMany: more than ``max_records`` lines or elements (checked before stamping any).
    """
    parsed = Parsed()
    stamp = {"identity": identity, "auth": auth}
    items = _items(body)
    if len(items) > max_records:
        raise TooMany(len(items))
    for number, value, error in items:
        outcome = _record(number, value, stamp) if not error else LineError(number, error)
        if isinstance(outcome, LineError):
            parsed.refuse(outcome)
        else:
            parsed.records.append(outcome)
    return parsed
