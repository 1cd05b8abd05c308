"""Trace correlation: the OpenTelemetry span active on the calling thread or task, if any.

The formatter calls :func:`current_span` once per record, on the thread that logged (where the
context fields are read too, see :mod:`mqlogging._context`), so the ids are those of the span
the application was in when it logged, not of whatever the sender thread runs later.

No hard dependency, and nothing imported: a span can only be active once the application has
imported ``opentelemetry.trace`` (that is where spans are started and made current), so this
module only looks that module up in :data:`sys.modules`. Without OpenTelemetry, or before the
application imported it, the cost is one dict lookup per record; ``import mqlogging`` never
imports ``opentelemetry``.

The ids are lower-case hex, as OpenTelemetry's logging compatibility spec writes them: trace id
32 digits, span id 16, trace flags 2 (``"01"`` when sampled).
"""

from __future__ import annotations

import sys
from typing import Final, NamedTuple

__all__ = ["SpanIds", "current_span"]

_TRACE_MODULE: Final = "opentelemetry.trace"


class SpanIds(NamedTuple):
    """The ids of a valid span, lower-case hex; ``flags`` keeps the integer for OTLP too."""

    trace_id: str
    span_id: str
    trace_flags: str
    flags: int


# The last span context seen and its ids: records logged in one span (the common case) format
# the hex ids once. One tuple, replaced atomically: consistent across threads.
_last: tuple[object, SpanIds | None] = (object(), None)


def current_span() -> SpanIds | None:
    """The ids of the span active in the current context, ``None`` when there is none.

    Never raises: a broken or foreign tracer implementation must not cost the record.
    """
    global _last
    trace = sys.modules.get(_TRACE_MODULE)
    if trace is None:
        return None
    try:
        context = trace.get_current_span().get_span_context()
        last = _last
        if context is last[0]:  # a SpanContext is immutable: same object, same ids
            return last[1]
        ids = None
        if context.is_valid:
            flags = int(context.trace_flags)
            ids = SpanIds(
                f"{context.trace_id:032x}", f"{context.span_id:016x}", f"{flags:02x}", flags
            )
        _last = (context, ids)
        return ids
    except Exception:
        return None
