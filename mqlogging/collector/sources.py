"""Sources: backend consumers, one per configured queue or spool directory.

A source is a :class:`~mqlogging.backends.Consumer` opened with the source's prefetch as its
bound: the broker never hands this collector more than ``prefetch`` unacknowledged messages per
source, so the broker — not the collector's memory — is the buffer, and a slow sink simply
stops the flow (backpressure = not acking). Consumers are single-thread-owned: the pipeline
worker that fetches from a source is the only thread that acks or nacks its deliveries.
"""

from __future__ import annotations

from ..backends import Consumer, open_consumer
from .config import SourceConfig

__all__ = ["open_source"]


def open_source(config: SourceConfig) -> Consumer:
    """A consumer for ``config`` whose prefetch is the source's in-flight bound (not connected
    yet: the first ``fetch`` connects)."""
    return open_consumer(config.url, prefetch=config.max_in_flight)
