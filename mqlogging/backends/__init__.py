"""Transports: the URL scheme picks the backend, through one registry.

``open_producer`` / ``open_consumer`` / ``open_tap`` accept a URL or an :class:`Endpoint`; the
scheme picks the transport in :mod:`mqlogging.backends.registry`, where a user or a test may
:func:`register` its own. Backends import their client library lazily, so ``mqlogging`` works
without the extras that a given deployment does not use.

The DIRAC-style API (``create_producer("svc::Queues::logs", services=...)``) is in
:mod:`mqlogging.backends.services`; it is not imported here, so that using the backends
does not load it.
"""

from __future__ import annotations

from .base import Consumer, Producer, Tap, TapOptions
from .endpoints import Endpoint, Host, Secret, TLSConfig
from .registry import (
    Transport,
    open_consumer,
    open_producer,
    open_tap,
    register,
    transport_for,
    unregister,
)

__all__ = [
    "Consumer",
    "Endpoint",
    "Host",
    "Producer",
    "Secret",
    "TLSConfig",
    "Tap",
    "TapOptions",
    "Transport",
    "open_consumer",
    "open_producer",
    "open_tap",
    "register",
    "transport_for",
    "unregister",
]
