"""``type = "broker"``: publish records to a broker queue with confirms (HTTPS -> MQ).

The sink for a collector that *forwards* — above all the HTTPS ingest of grid pilots, whose
usual deployment is HTTPS -> broker -> collectors -> Elasticsearch. ``url`` is any endpoint
of a registered transport that has a producer (``amqp://``, ``amqps://``, ``stomp://``...,
even ``local://``); records are published through
:func:`mqlogging.backends.open_producer`, whose ``publish_batch`` returns only once the
broker confirmed every message (AMQP publisher confirms, STOMP receipts). So a record is
``DONE`` only once confirmed, and the pipeline acks it (the ingest answers 2xx) only then.

Each record is published as one message: its id (kept from the client, or given at ingest)
as the transport id, its document as the body, so the next collector stores it under the same
``_id`` however often it was forwarded.

Per record: confirmed -> ``DONE``; refused for good (:class:`~mqlogging.errors.PartlyRefused`)
-> ``REJECT`` (dead-lettered); anything else (no connection, no confirm in time, a nack) ->
``RETRY`` for the whole batch, and the producer is reopened on the next attempt.

Thread-safety: producers are single-thread-owned, and the sink is shared by every source
worker, so each worker thread gets its own producer (:class:`threading.local`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..._types import Message
from ...backends import Producer, open_producer
from ...backends.endpoints import Endpoint
from ...errors import BackendError, PartlyRefused, PublishTimeout
from .._table import FromTable, check_fields
from .base import DONE, Outcome, Record, Result, Sink

if TYPE_CHECKING:
    from ..metrics import CollectorMetrics

__all__ = ["BrokerSink", "BrokerSinkConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerSinkConfig(FromTable):
    """Publish to ``url`` (a broker queue or exchange, any transport with a producer)."""

    url: Endpoint
    type: Literal["broker"] = "broker"
    name: str = ""

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def label(self) -> str:
        return self.name or f"broker:{self.url.redacted()}"

    def build(self, metrics: CollectorMetrics | None = None) -> Sink:
        return BrokerSink(self)


class BrokerSink(Sink):
    """See the module docstring."""

    def __init__(self, config: BrokerSinkConfig) -> None:
        self.config = config
        self.name = config.label
        self._local = threading.local()
        self._lock = threading.Lock()
        self._producers: list[Producer] = []

    def _producer(self) -> Producer:
        producer: Producer | None = getattr(self._local, "producer", None)
        if producer is None:
            producer = open_producer(self.config.url)
            self._local.producer = producer
            with self._lock:
                self._producers.append(producer)
        return producer

    def _drop_producer(self) -> None:
        producer: Producer | None = getattr(self._local, "producer", None)
        self._local.producer = None
        if producer is not None:
            with self._lock, contextlib.suppress(ValueError):
                self._producers.remove(producer)
            with contextlib.suppress(Exception):
                producer.close()

    def write(self, records: Sequence[Record]) -> list[Result]:
        """Publish ``records`` and wait for the confirms; one result per record."""
        if not records:
            return []
        messages = [Message(r.id, r.encoded()) for r in records]
        try:
            self._producer().publish_batch(messages)
        except PartlyRefused as exc:
            refused = Result(Outcome.REJECT, "refused", exc.reason)
            return [refused if r.id in exc.ids else DONE for r in records]
        except BackendError as exc:
            self._drop_producer()
            status = "timeout" if isinstance(exc, PublishTimeout) else "unavailable"
            return [Result(Outcome.RETRY, status, str(exc))] * len(records)
        return [DONE] * len(records)

    def close(self) -> None:
        with self._lock:
            producers, self._producers = self._producers, []
        for producer in producers:
            with contextlib.suppress(Exception):
                producer.close()
