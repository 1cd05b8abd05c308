"""Transports: the URL scheme picks the backend, through one registry.

``open_producer`` / ``open_consumer`` / ``open_tap`` accept a URL or an :class:`Endpoint`; the
scheme picks the transport in :mod:`mqlogging.backends.registry`, where a user or a test may
:func:`register` its own. Backends import their client library lazily, so ``mqlogging`` works
without the extras that a given deployment does not use.

The DIRAC-style API (``create_producer("svc::Queues::logs", services=...)``) lives in
:mod:`mqlogging.backends.services`. Its names are still reachable here for existing code
(``from mqlogging.backends import create_producer``), but only imported when first asked for:
using the backends does not load it, nor its connection-sharing machinery.
"""

from __future__ import annotations

from typing import Any

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
from .unpacking import UnpackingConsumer

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
    "UnpackingConsumer",
    "open_consumer",
    "open_producer",
    "open_tap",
    "register",
    "transport_for",
    "unregister",
]

_DIRAC_NAMES = frozenset({"MQConsumer", "MQProducer", "create_consumer", "create_producer"})


def __getattr__(name: str) -> Any:
    """The DIRAC-style names, imported from :mod:`.services` on first use."""
    if name in _DIRAC_NAMES:
        from . import services

        return getattr(services, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
