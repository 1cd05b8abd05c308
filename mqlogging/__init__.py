"""mqlogging: stdlib ``logging`` -> JSON -> message brokers -> Elasticsearch / Logstash."""

from __future__ import annotations

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
    SpoolCorrupt,
    SpoolError,
    SpoolFull,
)

__all__ = [
    "BackendError",
    "ConfigurationError",
    "ConnectError",
    "MQLoggingError",
    "MissingDependencyError",
    "NotConfirmed",
    "PublishTimeout",
    "SinkError",
    "SpoolCorrupt",
    "SpoolError",
    "SpoolFull",
    "__version__",
]
