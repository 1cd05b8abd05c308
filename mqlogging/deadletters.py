"""The dead-letter envelope: one owner for how a record set aside is written and read back.

A record the pipeline sets aside instead of storing is kept in an *envelope*, a JSON object::

    {"reason": "...", "stage": "decode" | "sink" | "retries", "source": "<redacted url>",
     "record_id": "...", "dead_lettered_at": "2026-...Z", "collector": "host",
     "message": "<original body as text>"}      # or "message_base64" when it is not UTF-8
     "headers": {...}                            # optional: the transport headers

Two writers use it: the collector's dead letters (poison messages:
:mod:`mqlogging.collector.sinks.deadletter`) and the Elasticsearch endpoint's *rejected* spool
(documents Elasticsearch refused with a document-level 400: :mod:`mqlogging.backends.
elasticsearch`, without ``collector`` and ``headers``). Both build it with :func:`envelope`.

The reader (``mqlogging audit --dead-letters``) unwraps an envelope with :func:`open_letter`
into the original records: the body is one record, or a packed message (JSON lines, optionally
gzip/zstd as its ``Content-Encoding`` header says). A document that is not an envelope but a
record of ours (``mqlogging.producer``/``seq``) is the documented variant: a record a *broker*
dead-lettered as it was (AMQP ``dead_letter_exchange`` past ``delivery_limit``), reason
:data:`BROKER_REASON`.

This module imports nothing from the package but :mod:`mqlogging.wire` (and through it
``_json``), so a writer in any layer may use it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Final, NamedTuple

from .errors import UnpackError
from .packing import DEFAULT_MAX_UNPACKED, ENCODING_HEADER, is_packed, unpack
from .wire import NAMESPACE, decode, read_meta

__all__ = ["BROKER_REASON", "Letter", "envelope", "open_letter"]

BROKER_REASON: Final = "dead-lettered by the broker"
"""The reason given to a bare record found among dead letters (no envelope around it)."""


def envelope(
    body: bytes,
    *,
    reason: str,
    stage: str,
    source: str,
    record_id: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The envelope of ``body`` (the original message, kept whole so audit can attribute it).

    ``extra`` adds fields after the standard ones (the collector's ``collector`` and
    ``headers``); it cannot replace the original message.
    """
    doc: dict[str, Any] = {
        "reason": reason,
        "stage": stage,
        "source": source,
        "record_id": record_id,
        "dead_lettered_at": datetime.now(timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
    }
    doc.update({k: v for k, v in (extra or {}).items() if not k.startswith("message")})
    try:
        doc["message"] = body.decode("utf-8")
    except UnicodeDecodeError:
        doc["message_base64"] = base64.b64encode(body).decode("ascii")
    return doc


class Letter(NamedTuple):
    """One dead letter opened: why it was set aside, and the original records in it (each a
    decoded JSON value, ``None`` where a record could not be decoded). ``records`` is empty
    when the document is neither an envelope nor a record of ours."""

    reason: str
    records: tuple[Any, ...]


_NESTING: Final = 4  # envelopes unwrapped inside one another at most


def open_letter(doc: Any) -> Letter:
    """Unwrap one dead letter (a decoded JSON value) into its reason and original records.

    A dead letter replayed into a source and dead-lettered again is an envelope around an
    envelope: it is unwrapped down to the records (the outermost reason is kept).
    """
    if _is_envelope(doc):
        reason = doc.get("reason")
        reason = reason if isinstance(reason, str) and reason else "unknown"
        return Letter(reason, _unwrap(doc, _NESTING))
    meta = read_meta(doc)
    if meta.producer is not None and meta.seq is not None:
        return Letter(BROKER_REASON, (doc,))
    return Letter("unknown", ())


def _is_envelope(doc: Any) -> bool:
    """An envelope carries the original message and never an ``mqlogging`` object (a record
    of ours always does, and may have a ``message`` field of its own: ECS, logstash)."""
    return (
        isinstance(doc, dict)
        and NAMESPACE not in doc
        and ("message" in doc or "message_base64" in doc)
    )


def _unwrap(doc: dict[str, Any], depth: int) -> tuple[Any, ...]:
    """The records inside envelope ``doc``, unwrapping nested envelopes ``depth`` deep."""
    body = _original(doc)
    if body is None:
        return (None,)
    out: list[Any] = []
    for record in _records(body, doc.get("headers")):
        if depth > 1 and _is_envelope(record):
            out.extend(_unwrap(record, depth - 1))
        else:
            out.append(record)
    return tuple(out)


def _original(doc: dict[str, Any]) -> bytes | None:
    """The original message of an envelope, ``None`` when it cannot be recovered."""
    text = doc.get("message")
    if isinstance(text, str):
        return text.encode("utf-8", "surrogatepass")
    encoded = doc.get("message_base64")
    if not isinstance(encoded, str):
        return None
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None


def _records(body: bytes, headers: Any) -> tuple[Any, ...]:
    """The records of an original message: one JSON document, or JSON lines (packed; read by
    :func:`mqlogging.packing.unpack`, the one reader of that format, with its size limit — an
    undecodable packed message counts as one unattributed record)."""
    meta = _normalised(headers)
    if is_packed(meta) or meta.get(ENCODING_HEADER):
        try:
            return tuple(decode(line) for line in unpack(body, meta, DEFAULT_MAX_UNPACKED))
        except UnpackError:
            return (None,)
    whole = decode(body)
    if whole is not None or b"\n" not in body.strip():
        return (whole,)
    return tuple(decode(line) for line in body.splitlines() if line.strip())


def _normalised(headers: Any) -> dict[str, Any]:
    """Header names as :mod:`mqlogging.packing` spells them (lower case, ``-``): brokers and
    clients hand them over as ``Content-Encoding`` or ``content_encoding`` too."""
    if not isinstance(headers, Mapping):
        return {}
    return {str(k).lower().replace("_", "-"): v for k, v in headers.items()}
