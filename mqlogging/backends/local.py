"""``local://`` — a spool directory used as a queue (the embedded default, no broker).

``local:///var/spool/myapp?max_bytes=256M&fsync=always`` names a :mod:`mqlogging.spool`
directory; the query takes the spool options (``segment_bytes``, ``segment_age``, ``max_bytes``,
``max_age``, ``fsync``, ``overflow``), validated when the producer or consumer is created.

Producer: :meth:`LocalProducer.publish_batch` appends the batch to the producer's own open
segment; "confirmed" means written per the fsync policy (``segment`` by default: in the OS page
cache now, on disk when the segment is sealed; ``fsync=always`` for every batch). Any number of
producers (threads, processes) may share a directory.

Consumer: :class:`LocalConsumer` reads segments oldest-first (FIFO per producer), including the
live open segment of a running producer up to its last complete line, so a record is visible
within one poll (~50 ms) of being published. ``ack`` commits durable progress (the contiguous
acked prefix of each segment, so out-of-order acks are safe), ``nack(requeue=True)`` makes
records be fetched again, ``nack(requeue=False)`` drops them (counted as ``rejected`` in the
spool's ``dropped.log``). Several consumers share a directory like competing consumers, each
segment being read by one of them at a time. Delivery is at-least-once: records fetched but not
acked when a consumer stops are fetched again by the next one, with the same ids.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import quote

from .._types import Delivery, Message
from ..errors import BackendError, ConfigurationError, ConnectError, NotConfirmed, SpoolError
from ..spool import (
    Spool,
    SpoolFollower,
    SpoolReader,
    SpoolRecord,
    coerce_spool_options,
    record_id,
)
from .base import Consumer, Producer, Tap, TapOptions
from .endpoints import Endpoint, Scheme, URLParts
from .registry import Transport

__all__ = ["TRANSPORT", "LocalConsumer", "LocalEndpoint", "LocalProducer", "LocalTap", "record_id"]

_POLL = 0.05
_TAP_POLL = 0.1


def _options(endpoint: LocalEndpoint) -> dict[str, Any]:
    return coerce_spool_options(endpoint.spool_options, where=endpoint.redacted())


# -- the endpoint: local:///var/spool/myapp?max_bytes=256M ------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalEndpoint(Endpoint):
    """A spool directory (``local:///absolute/path``); the query holds its spool options,
    checked when a producer or consumer is created (:func:`mqlogging.spool.coerce_spool_options`).
    """

    transport: ClassVar[str] = "local"
    schemes: ClassVar[Mapping[str, Scheme]] = {"local": Scheme()}
    url_options: ClassVar[frozenset[str]] = frozenset({
        "segment_bytes", "segment_age", "max_bytes", "max_age", "fsync", "overflow",
    })  # fmt: skip
    needs_hosts: ClassVar[bool] = False

    path: str = ""
    spool_options: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_parts(cls, url: URLParts) -> LocalEndpoint:
        if url.hostlist or url.userinfo:
            msg = f"{url.where}: local URLs have no host; write local:///absolute/path"
            raise ConfigurationError(msg)
        if not url.path or url.path == "/":
            msg = f"{url.where}: give the spool directory, e.g. local:///var/spool/myapp"
            raise ConfigurationError(msg)
        return cls(path=url.path, spool_options=dict(url.query))

    def redacted_path(self) -> str:
        return quote(self.path)

    def destination_key(self) -> str:
        """``local://`` and the normalised directory (see :meth:`Endpoint.destination_key`)."""
        return f"local://{quote(os.path.normpath(self.path))}"

    def with_spool_defaults(self, defaults: Mapping[str, Any]) -> LocalEndpoint:
        return self.with_options(spool_options={**defaults, **self.spool_options})


class LocalProducer(Producer):
    """Appends batches to the spool directory ``endpoint.path`` (see the module docstring)."""

    endpoint: LocalEndpoint

    def __init__(self, endpoint: str | Endpoint) -> None:
        self.endpoint = LocalEndpoint.from_url(endpoint)
        self._options = _options(self.endpoint)  # ConfigurationError now, not at the first publish
        self._spool: Spool | None = None

    def __repr__(self) -> str:
        return f"LocalProducer({self.endpoint.redacted()!r})"

    def publish_batch(self, messages: Sequence[Message]) -> None:
        """Append ``messages`` in order; returns once written per the fsync policy.

        With ``overflow=drop_newest`` a full spool drops the batch (counted by the spool) and
        this returns normally, as configured.

        Raises:
            ConnectError: the directory cannot be created or opened.
            NotConfirmed: the write failed (disk full...) or the spool is full with
                ``overflow=refuse``; nothing of the batch was stored.
        """
        if not messages:
            return
        where = self.endpoint.redacted()
        if self._spool is None:
            try:
                self._spool = Spool(self.endpoint.path, **self._options)
            except SpoolError as exc:
                raise ConnectError(str(exc), endpoint=where) from exc
        try:
            self._spool.append([m.body for m in messages])
        except SpoolError as exc:  # SpoolFull included
            raise NotConfirmed(str(exc), endpoint=where) from exc

    def close(self) -> None:
        """Seal the open segment so that consumers may delete it once it is consumed."""
        spool, self._spool = self._spool, None
        if spool is not None:
            with contextlib.suppress(Exception):
                spool.close()


class LocalConsumer(Consumer):
    """Consumes the spool directory ``endpoint.path`` (see the module docstring)."""

    endpoint: LocalEndpoint

    def __init__(self, endpoint: str | Endpoint) -> None:
        self.endpoint = LocalEndpoint.from_url(endpoint)
        _options(self.endpoint)  # validate the query like the producer does
        self._reader: SpoolReader | None = None

    def __repr__(self) -> str:
        return f"LocalConsumer({self.endpoint.redacted()!r})"

    def _open(self) -> SpoolReader:
        if self._reader is None:
            try:
                self._reader = SpoolReader(self.endpoint.path)
            except SpoolError as exc:
                raise ConnectError(str(exc), endpoint=self.endpoint.redacted()) from exc
        return self._reader

    def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:
        """Return up to ``max_messages`` records, polling the directory until ``timeout``.

        Raises:
            ConnectError: the directory cannot be read; call again to retry.
        """
        reader = self._open()
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                records = reader.read(max(1, max_messages))
            except SpoolError as exc:
                raise ConnectError(str(exc), endpoint=self.endpoint.redacted()) from exc
            if records:
                return [
                    Delivery(
                        id=record_id(r),
                        body=r.body,
                        tag=r,
                        headers={"segment": r.segment, "offset": r.offset},
                        redelivered=r.redelivered,
                    )
                    for r in records
                ]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            reader.wait(min(_POLL, remaining))

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Commit ``deliveries`` (any order); fully consumed segments are deleted.

        Raises:
            BackendError: the progress could not be recorded (they will be fetched again).
        """
        if self._reader is None or not deliveries:
            return
        try:
            self._reader.commit(self._records(deliveries))
        except SpoolError as exc:
            raise BackendError(str(exc), endpoint=self.endpoint.redacted()) from exc

    def nack(self, deliveries: Sequence[Delivery], *, requeue: bool = True) -> None:
        """``requeue``: fetch them (and later records of their segments) again; else drop them."""
        if self._reader is None or not deliveries:
            return
        records = self._records(deliveries)
        try:
            if requeue:
                self._reader.rewind(records)
            else:
                self._reader.reject(records)
        except SpoolError as exc:
            raise BackendError(str(exc), endpoint=self.endpoint.redacted()) from exc

    def close(self) -> None:
        """Release the claimed segments; unacked records are fetched again later. Idempotent."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    @staticmethod
    def _records(deliveries: Sequence[Delivery]) -> list[SpoolRecord]:
        return [d.tag for d in deliveries if isinstance(d.tag, SpoolRecord)]


# -- tap: a non-destructive live view -------------------------------------------------------


class LocalTap(Tap):
    """Follows the spool directory ``endpoint.path`` read-only (``mqlogging tail local://``).

    No claim, no commit: the collector's progress is untouched and following acknowledges
    nothing (:class:`~mqlogging.spool.SpoolFollower`). New records appear as they are written
    (polled every 0.1 s); with ``options.backlog`` the records still waiting in the spool come
    first. ``binding`` and ``exchange`` do not apply to a spool and are ignored.

    Raises:
        ConfigurationError: the directory does not exist.
        ConnectError: the directory cannot be read (also from :meth:`poll`).
    """

    def __init__(self, endpoint: str | Endpoint, options: TapOptions | None = None) -> None:
        self.endpoint = LocalEndpoint.from_url(endpoint)
        options = options or TapOptions()
        directory = self.endpoint.path
        if not os.path.isdir(directory):
            msg = f"spool directory {directory!r} does not exist (yet); check the local:// path"
            raise ConfigurationError(msg)
        self.mode = (
            "read-only follow of the spool files (no claim, no commit: the collector's "
            "progress is untouched)"
        )
        with self._connect_errors():
            self._follower: SpoolFollower | None = SpoolFollower(directory, backlog=options.backlog)
        self.backlog = options.backlog

    def __repr__(self) -> str:
        return f"LocalTap({self.endpoint.redacted()!r})"

    def poll(self, timeout: float) -> list[bytes]:
        """The records written since the last poll, waiting up to ``timeout`` for one."""
        follower = self._follower
        if follower is None:
            msg = f"tap of {self.endpoint.redacted()} is closed"
            raise ConnectError(msg, endpoint=self.endpoint.redacted())
        deadline = time.monotonic() + timeout
        while True:
            with self._connect_errors():
                out = follower.read()
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:
                return out
            time.sleep(min(_TAP_POLL, remaining))

    def close(self) -> None:
        """Close the segment files. Idempotent."""
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.close()

    @staticmethod
    @contextlib.contextmanager
    def _connect_errors() -> Iterator[None]:
        """A spool that cannot be read is this transport's lost connection (the message is
        the spool's, which names the directory: the same text ``tail`` always printed)."""
        try:
            yield
        except SpoolError as exc:
            raise ConnectError(str(exc)) from exc


# -- registration ----------------------------------------------------------------------------

TRANSPORT = Transport(
    endpoint=LocalEndpoint,
    producer=LocalProducer,
    consumer=LocalConsumer,
    tap=LocalTap,
)
"""What the registry hands out for ``local://`` URLs."""
