"""The URL scheme picks the backend (httpx's ``mounts``, reduced to a table of three)."""

from __future__ import annotations

from typing import Any

from .base import Consumer, Producer
from .endpoints import Endpoint

__all__ = ["open_consumer", "open_producer"]


def open_producer(endpoint: str | Endpoint, **options: Any) -> Producer:
    """Return the transport-level :class:`Producer` for ``endpoint`` (not yet connected)."""
    ep = Endpoint.from_url(endpoint, **options)
    if ep.transport == "amqp":
        from .amqp import AMQPProducer

        return AMQPProducer(ep)
    if ep.transport == "stomp":
        from .stomp import STOMPProducer

        return STOMPProducer(ep)
    from .local import LocalProducer

    return LocalProducer(ep)


def open_consumer(endpoint: str | Endpoint, **options: Any) -> Consumer:
    """Return the transport-level :class:`Consumer` for ``endpoint`` (not yet connected)."""
    ep = Endpoint.from_url(endpoint, **options)
    if ep.transport == "amqp":
        from .amqp import AMQPConsumer

        return AMQPConsumer(ep)
    if ep.transport == "stomp":
        from .stomp import STOMPConsumer

        return STOMPConsumer(ep)
    from .local import LocalConsumer

    return LocalConsumer(ep)
