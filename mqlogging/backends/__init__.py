"""Transports: the URL scheme picks the backend.

``create_producer`` / ``create_consumer`` accept a URL, an :class:`Endpoint`, or (for people
coming from DIRAC) a ``service::Queues::name`` address resolved against a ``services`` mapping.
Backends import their client library lazily, so ``mqlogging`` works without the extras that a
given deployment does not use.
"""

from __future__ import annotations

from ._factory import open_consumer, open_producer
from .base import Consumer, Producer
from .endpoints import Endpoint, Host, Secret, TLSConfig
from .services import MQConsumer, MQProducer, create_consumer, create_producer

__all__ = [
    "Consumer",
    "Endpoint",
    "Host",
    "MQConsumer",
    "MQProducer",
    "Producer",
    "Secret",
    "TLSConfig",
    "create_consumer",
    "create_producer",
    "open_consumer",
    "open_producer",
]
