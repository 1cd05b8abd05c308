"""Sources: backend consumers, one per configured queue or spool directory.

A source is a :class:`~mqlogging.backends.Consumer` opened with the source's prefetch as its
bound: the broker never hands this collector more than ``prefetch`` unacknowledged messages per
source, so the broker — not the collector's memory — is the buffer, and a slow sink simply
stops the flow (backpressure = not acking). Consumers are single-thread-owned: the pipeline
worker that fetches from a source is the only thread that acks or nacks its deliveries.
"""

from __future__ import annotations

from collections.abc import Callable

from ..backends import Consumer
from .config import SourceAny

__all__ = ["open_source"]


def open_source(config: SourceAny, answered: Callable[[int], None] | None = None) -> Consumer:
    """A consumer for ``config`` whose prefetch is the source's in-flight bound (not connected
    yet: the first ``fetch`` connects). An HTTPS ingest source (``type = "http"``) is a
    consumer too: its deliveries are the records of pending requests, and ``answered`` is
    called with the status of each request it answers (the metrics)."""
    return config.open(answered)
