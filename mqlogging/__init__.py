"""mqlogging: stdlib ``logging`` -> JSON -> message brokers -> Elasticsearch / Logstash."""

from __future__ import annotations

from ._context import (
    ContextToken,
    bind_context,
    bound_context,
    clear_context,
    get_context,
    unbind_context,
)
from ._version import __version__
from .errors import (
    BackendError,
    ConfigurationError,
    ConnectError,
    MissingDependencyError,
    MQLoggingError,
    NotConfirmed,
    PublishTimeout,
    SinkError,
    SpoolError,
    SpoolFull,
)
from .formatting import JsonFormatter
from .handlers import MQHandler

__all__ = [
    "BackendError",
    "ConfigurationError",
    "ConnectError",
    "ContextToken",
    "JsonFormatter",
    "MQHandler",
    "MQLoggingError",
    "MissingDependencyError",
    "NotConfirmed",
    "PublishTimeout",
    "SinkError",
    "SpoolError",
    "SpoolFull",
    "__version__",
    "bind_context",
    "bound_context",
    "clear_context",
    "get_context",
    "unbind_context",
]
