"""File, stdout and null sinks.

The file sink appends one JSON document per line. With ``fsync`` (the default) a batch is on
disk before its messages are acked; without it, it is in the OS page cache (survives a
collector crash, not a power cut). Rotation by size keeps ``backups`` old files
(``path.1`` newest .. ``path.N``); SIGHUP (:meth:`FileSink.reopen`) reopens the path so an external
logrotate can move the file away. Thread-safe: writes are serialised by a lock, and a batch is
written contiguously (lines of two batches never interleave).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

from ...errors import ConfigurationError
from .._table import FromTable, check_fields
from .base import DONE, Outcome, Record, Result, Sink

if TYPE_CHECKING:
    from ..metrics import CollectorMetrics

__all__ = ["FileSink", "FileSinkConfig", "NullSink", "NullSinkConfig", "StdoutSink"]


@dataclass(frozen=True, slots=True, kw_only=True)
class FileSinkConfig(FromTable):
    """JSON lines to ``path`` (``type = "stdout"``: standard output). Rotated when it exceeds
    ``max_bytes`` (0: never), keeping ``backups`` old files; SIGHUP reopens (for logrotate).
    ``fsync`` makes every batch durable on disk before its messages are acked.
    """

    type: Literal["file", "stdout"] = "file"
    name: str = ""
    path: str = ""
    max_bytes: int = 100 * 1024 * 1024
    backups: int = 5
    fsync: bool = True

    def __post_init__(self) -> None:
        check_fields(self)
        if self.type == "file":
            if not self.path:
                msg = "path is required for a file sink"
                raise ConfigurationError(msg)
            parent = Path(self.path).expanduser().resolve().parent
            if not parent.is_dir():
                msg = f"path={self.path!r}: directory {str(parent)!r} does not exist"
                raise ConfigurationError(msg)
        if self.max_bytes < 0 or self.backups < 0:
            msg = "max_bytes and backups must be >= 0"
            raise ConfigurationError(msg)

    @property
    def label(self) -> str:
        return self.name or ("stdout" if self.type == "stdout" else f"file:{self.path}")

    def build(self, metrics: CollectorMetrics | None = None) -> Sink:
        """A :class:`StdoutSink` for ``type = "stdout"``, else a :class:`FileSink`."""
        return StdoutSink(self) if self.type == "stdout" else FileSink(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class NullSinkConfig(FromTable):
    """Accepts and discards everything (benchmarks, smoke tests)."""

    type: Literal["null"] = "null"
    name: str = ""

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def label(self) -> str:
        return self.name or "null"

    def build(self, metrics: CollectorMetrics | None = None) -> Sink:
        return NullSink(self)


class FileSink(Sink):
    """JSON lines to a file, rotated by size."""

    def __init__(self, config: FileSinkConfig) -> None:
        self.config = config
        self.name = config.label
        self.path = os.path.abspath(os.path.expanduser(config.path))
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None
        self._size = 0

    def _open(self) -> BinaryIO:
        if self._file is None:
            self._file = open(self.path, "ab")  # noqa: SIM115 - kept open across batches
            self._size = self._file.tell()
        return self._file

    def write(self, records: Sequence[Record]) -> list[Result]:
        if not records:
            return []
        payload = b"".join(r.encoded() + b"\n" for r in records)
        with self._lock:
            try:
                if (
                    self.config.max_bytes
                    and self._size
                    and self._size + len(payload) > self.config.max_bytes
                ):
                    self._rotate()
                handle = self._open()
                handle.write(payload)
                handle.flush()
                if self.config.fsync:
                    os.fsync(handle.fileno())
                self._size += len(payload)
            except OSError as exc:
                self._close_file()
                return [Result(Outcome.RETRY, "io_error", f"{self.path}: {exc}")] * len(records)
        return [DONE] * len(records)

    def _rotate(self) -> None:
        self._close_file()
        keep = self.config.backups
        if keep == 0:
            os.unlink(self.path)
            return
        for n in range(keep - 1, 0, -1):
            older = f"{self.path}.{n}"
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{n + 1}")
        os.replace(self.path, f"{self.path}.1")

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None

    def check(self) -> bool:
        return os.access(os.path.dirname(self.path) or ".", os.W_OK)

    def reopen(self) -> None:
        """Close the file; the next batch opens the path again (after logrotate moved it)."""
        with self._lock:
            self._close_file()

    def close(self) -> None:
        with self._lock:
            self._close_file()


class StdoutSink(Sink):
    """JSON lines to standard output (e.g. for a container's log driver)."""

    def __init__(self, config: FileSinkConfig) -> None:
        self.name = config.label
        self._lock = threading.Lock()
        self._out = sys.stdout.buffer

    def write(self, records: Sequence[Record]) -> list[Result]:
        payload = b"".join(r.encoded() + b"\n" for r in records)
        with self._lock:
            try:
                self._out.write(payload)
                self._out.flush()
            except OSError as exc:
                return [Result(Outcome.RETRY, "io_error", f"stdout: {exc}")] * len(records)
        return [DONE] * len(records)


class NullSink(Sink):
    """Accepts everything and keeps nothing: measures the pipeline without a store."""

    def __init__(self, config: NullSinkConfig) -> None:
        self.name = config.label

    def write(self, records: Sequence[Record]) -> list[Result]:
        return [DONE] * len(records)
