"""The transport interface: a narrow, batch-first producer, a pull-style consumer and a tap.

Every backend (AMQP, STOMP, local spool) implements these classes and nothing else is
visible above ``backends/``. Library exceptions (pika, stomp.py, OSError) never cross this
boundary: they are translated into :mod:`mqlogging.errors` classes, chained ``from exc``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

from .._types import Delivery, Message
from .endpoints import Endpoint

__all__ = ["Consumer", "Producer", "Tap", "TapOptions"]


_Self = TypeVar("_Self", bound="_ClosedOnExit")


class _ClosedOnExit(ABC):
    """``with producer:`` (or consumer, or tap) closes it at the end of the block."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection. Idempotent; never raises."""

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Producer(_ClosedOnExit):
    """Publishes batches of messages to one endpoint and reports only confirmed success.

    Thread-safety: a producer is owned by one thread (pika's connection must only be used by
    the thread that created it). Share an endpoint between threads by giving each its own
    producer. Connecting is lazy: the first :meth:`publish_batch` connects, and after a
    failure the next call reconnects, trying every host of the endpoint in turn.
    """

    endpoint: Endpoint

    @abstractmethod
    def publish_batch(self, messages: Sequence[Message]) -> None:
        """Publish ``messages`` in order and return only once the broker confirmed all of them.

        Confirmation is pipelined: the whole batch is written, then the confirms are awaited,
        never one round trip per message. Returns within ``endpoint.connect_timeout +
        endpoint.timeout`` (plus per-host connect attempts) in every case.

        Raises:
            ConnectError: no host accepted the connection; nothing was sent.
            PublishTimeout: the batch was (partly) sent but not confirmed in time: the caller
                must treat every message of it as not delivered (it may be a duplicate later).
            NotConfirmed: the broker refused or returned a message of the batch.
            PartlyRefused: (a :class:`NotConfirmed`) the destination refused the messages
                named in ``ids`` for good and they could not be kept; every other message
                of the batch is confirmed. The caller must not resend those (they can never
                be stored) and must count them as dropped.
        """

    @abstractmethod
    def close(self) -> None:
        """Close the connection. Idempotent; never raises."""

    def stats(self) -> dict[str, int]:
        """The producer's own counters, shown under its endpoint in the handler's ``stats()``
        (e.g. records an Elasticsearch endpoint kept in its rejected spool). None by default."""
        return {}


class Consumer(_ClosedOnExit):
    """Receives messages from one endpoint with manual acknowledgement and bounded prefetch.

    Thread-safety: like :class:`Producer`, owned by the thread that calls :meth:`fetch`;
    :meth:`ack` and :meth:`nack` must be called from that same thread.
    """

    endpoint: Endpoint

    @abstractmethod
    def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:
        """Return up to ``max_messages`` deliveries, waiting at most ``timeout`` seconds.

        Returns as soon as ``max_messages`` are available, or when ``timeout`` expires with
        whatever has arrived (possibly nothing). Reconnects (and resubscribes) on its own after
        a broker restart; deliveries received before the loss of a connection are void (the
        broker redelivers them) and acking them is a no-op.

        ``max_messages=0`` holds: the caller has all it may take; nothing is handed out, but
        the consumer keeps its session alive for ``timeout`` seconds (AMQP heartbeats, a
        Kafka member's group membership). A caller that stops fetching while it is full
        calls this instead, when the transport says so (``Transport.fetch_when_full``).

        Raises:
            ConnectError: no host could be reached on this attempt; call again to retry.
        """

    @abstractmethod
    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge ``deliveries``: the broker forgets them."""

    @abstractmethod
    def nack(self, deliveries: Sequence[Delivery], *, requeue: bool = True) -> None:
        """Give ``deliveries`` back to the broker (``requeue``) or reject them."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection; unacked deliveries go back to the broker. Idempotent."""

    def set_window(self, max_messages: int) -> int:
        """Ask the broker to push at most ``max_messages`` unacknowledged deliveries, clamped
        to ``1 .. endpoint.prefetch``; returns the window now in force.

        Lets a caller that bounds memory in *bytes* narrow the broker's count-based prefetch
        to what fits at the current message size (and widen it again, never beyond the
        configured ``prefetch``, which stays the user's upper bound). Never loses or voids a
        delivery already received. This default is for transports that fix the prefetch when
        they subscribe: it changes nothing and returns ``endpoint.prefetch``.
        """
        return self.endpoint.prefetch


@dataclass(frozen=True, kw_only=True)
class TapOptions:
    """What a :class:`Tap` should copy (``mqlogging tail`` builds it from its flags).

    ``binding``: the routing-key pattern to copy (AMQP exchanges, STOMP on RabbitMQ); ``None``
    means the endpoint's own ``binding_key``. ``exchange``: for STOMP on RabbitMQ, tap this
    exchange instead of the destination. ``backlog``: also show what is already stored and not
    yet consumed (a spool's unacknowledged records; a queue browsed without consuming), where
    the transport can do that without taking anything away from the collector.
    """

    binding: str | None = None
    exchange: str | None = None
    backlog: bool = False


class Tap(_ClosedOnExit):
    """A non-destructive live view of an endpoint: copies of records, nothing consumed.

    ``mqlogging tail`` reads records through taps only, so it can never take a record away
    from the collector. ``mode`` says, in one line for the terminal, what the tap shows and
    how (e.g. "copy of new records: exclusive queue amq.gen-... bound to exchange 'logs'").
    Opening a tap connects at once, so configuration and connection errors surface before
    anything is printed.
    """

    mode: str

    backlog: bool = False
    """True when this tap shows the records already waiting (``TapOptions.backlog`` honoured),
    not only new ones: ``mqlogging audit --dead-letters URL`` reads only such taps."""

    @abstractmethod
    def poll(self, timeout: float) -> list[bytes]:
        """Return the raw message bodies that arrived, waiting at most ``timeout`` seconds.

        Raises:
            ConnectError: the connection was lost; the caller may open a new tap.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the view (exclusive queues and subscriptions go away). Idempotent."""
