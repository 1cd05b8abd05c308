"""The sink interface: write a batch, answer one :class:`Outcome` per record.

A sink never decides what happens to a message in the broker; it only says, per record, whether
it has it (``DONE``), whether trying again may help (``RETRY``: throttled, unavailable, timed
out) or whether it never will (``REJECT``: the document itself is bad — the pipeline
dead-letters it with ``reason``). The pipeline acks a message only when every sink said
``DONE`` (or its dead-letter copy is confirmed), so a sink must answer ``DONE`` only for records
it has durably accepted (as far as its protocol can tell: see the TCP sink).

Thread-safety: one sink instance is shared by every source thread; implementations lock
whatever they must (the Elasticsearch and HTTP clients are thread-safe pools).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..._json import dumps
from ..._types import DONE, Outcome, Result

if TYPE_CHECKING:  # the metrics module needs prometheus-client; sinks alone do not
    from ..metrics import CollectorMetrics

__all__ = ["DONE", "Outcome", "Record", "Result", "Sink", "SinkConfig", "dumps"]


@dataclass(slots=True, eq=False)
class Record:
    """A decoded log record on its way to the sinks.

    ``doc`` is the (enriched) JSON object; ``id`` is the record id (``event.id`` / ``id`` in the
    body, else the transport id) and becomes the Elasticsearch ``_id``.
    """

    id: str
    doc: dict[str, Any]
    size: int
    _encoded: bytes | None = field(default=None, repr=False)

    def encoded(self) -> bytes:
        """The document as compact JSON, encoded once and shared by every sink."""
        if self._encoded is None:
            self._encoded = dumps(self.doc)
        return self._encoded


class Sink(ABC):
    """A destination for records. ``name`` is the metric label (no secrets)."""

    name: str

    @abstractmethod
    def write(self, records: Sequence[Record]) -> list[Result]:
        """Write ``records``; return exactly one :class:`Result` per record, in order.

        Failures of the whole request (connection refused, timeout, 503) are reported as
        ``RETRY`` results for every record, not raised; an exception escaping here is treated
        the same way by the pipeline.
        """

    def check(self) -> bool:
        """Whether the sink is reachable right now (for ``/readyz``). Cheap, bounded time."""
        return True

    def start(self) -> None:  # noqa: B027 - optional hook
        """Prepare (e.g. install an index template). Failures are logged, not fatal."""

    def reopen(self) -> None:  # noqa: B027 - optional hook
        """Reopen files (SIGHUP, after logrotate moved them). Default: nothing to do."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files. Idempotent."""


class SinkConfig(Protocol):
    """What every sink's config offers: it is a description (frozen, validated when read),
    and :meth:`build` makes the runtime sink from it (bytewax's ``Sink.build``, Vector's
    ``SinkConfig::build``). Each sink module keeps its config beside its code; the
    ``SINK_TYPES`` table in :mod:`mqlogging.collector.sinks` maps a ``type`` to it."""

    @property
    def type(self) -> str:
        """The ``type`` key of its ``[[sinks]]`` table."""

    @property
    def label(self) -> str:
        """The sink's name in metrics and logs (the configured name; never a secret)."""

    def build(self, metrics: CollectorMetrics | None = None) -> Sink:
        """The sink this config describes (imports its client library only now);
        ``metrics`` receives the sink's own counters."""
