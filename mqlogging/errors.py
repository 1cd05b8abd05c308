"""The exceptions mqlogging raises.

Every error a user can meet is one of these; pika, stomp.py and elasticsearch exceptions are
translated at the backend boundary and chained with ``from exc``::

    MQLoggingError
    ├── ConfigurationError      (also ValueError)   bad URL, option, file, certificate
    ├── MissingDependencyError  (also ImportError)  an optional extra is not installed
    ├── BackendError                                talking to a broker failed
    │   ├── ConnectError                            no host of the endpoint could be reached
    │   ├── PublishTimeout                          the broker did not confirm in time
    │   └── NotConfirmed                            the broker refused or returned messages
    │       └── PartlyRefused                       some refused for good, the rest confirmed
    ├── SpoolError                                  the on-disk spool failed
    │   └── SpoolFull                               the spool reached its bounds
    ├── SinkError                                   a sink failed as a whole (audit reads)
    └── UnpackError             (also ValueError)   a packed message cannot be unpacked

Messages are one line, say what is wrong and how to fix it, and never contain a password:
exceptions carry the *redacted* endpoint.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "ConfigurationError",
    "ConnectError",
    "MQLoggingError",
    "MissingDependencyError",
    "NotConfirmed",
    "PartlyRefused",
    "PublishTimeout",
    "SinkError",
    "SpoolError",
    "SpoolFull",
    "UnpackError",
]


class MQLoggingError(Exception):
    """Base class of every mqlogging exception."""


class ConfigurationError(MQLoggingError, ValueError):
    """A configuration value is wrong; raised at construction time, never later."""


class MissingDependencyError(MQLoggingError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        msg = (
            f"the {package!r} package is required for this feature but is not installed; "
            f"install it with: pip install 'mqlogging[{extra}]'"
        )
        super().__init__(msg)


class BackendError(MQLoggingError):
    """Talking to a broker failed.

    ``endpoint`` is the redacted endpoint URL (safe to log); ``reason`` is the message without
    it, for wrapping into another error about the same endpoint.
    """

    def __init__(self, message: str, *, endpoint: str = "") -> None:
        self.endpoint = endpoint
        self.reason = message
        super().__init__(f"{message} ({endpoint})" if endpoint else message)


class ConnectError(BackendError):
    """No host of the endpoint accepted a connection (or the login was refused)."""


class PublishTimeout(BackendError):
    """The broker did not confirm a batch within the timeout: the batch may or may not be stored."""


class NotConfirmed(BackendError):
    """The broker explicitly refused (nack) or returned (unroutable) a message of the batch."""


class PartlyRefused(NotConfirmed):
    """The destination refused some messages of the batch for good and they could not be kept.

    ``ids`` are those messages' ids: they can never be stored as they are (e.g. a document
    Elasticsearch rejects), so resending them cannot help, and they were not kept anywhere
    (the rejected spool failed). Every *other* message of the batch is confirmed. The handler
    counts the refused ones as dropped (reason ``"rejected_unsaved"``, announced by a drop
    marker) and goes on, so one bad record never holds up the records behind it. A caller that
    does not know this class treats it as :class:`NotConfirmed` and sends the batch again,
    which is safe (the stored records come back as already stored).

    ``drop_reason`` is the reason the handler counts them under: ``"rejected_unsaved"`` by
    default, ``"too_large_for_broker"`` for records above the broker's message size limit.
    """

    def __init__(
        self,
        message: str,
        *,
        ids: frozenset[str],
        endpoint: str = "",
        drop_reason: str = "rejected_unsaved",
    ) -> None:
        super().__init__(message, endpoint=endpoint)
        self.ids = ids
        self.drop_reason = drop_reason


class SpoolError(MQLoggingError):
    """The on-disk spool could not be written or read."""


class SpoolFull(SpoolError):
    """The spool reached its byte bound and its overflow policy is to refuse new records."""


class SinkError(MQLoggingError):
    """A sink failed as a whole, not item by item: ``mqlogging audit`` cannot read the store.

    The collector's sinks report per item (``Outcome``/``Result``) and treat a request-level
    failure as an outage to retry, so they never raise it.
    """


class UnpackError(MQLoggingError, ValueError):
    """A packed message (many records in one broker message) cannot be unpacked: corrupt or
    unknown compression, larger than the reader's limit once decompressed, or a record count
    that disagrees with its header. The message is dead-lettered whole."""
