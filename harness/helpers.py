"""Small test utilities shared by the whole suite (and importable by benchmarks).

Nothing here imports pytest, so ``benchmarks/`` can use it after putting the repository root on
``sys.path``.

- :func:`wait_until` replaces ``time.sleep`` for synchronisation: poll a predicate until a deadline.
- :func:`unique_name` gives per-test queue/index names, because isolation is by names, never by
  restarting brokers.
- :func:`free_port` asks the kernel for an unused loopback port.
- :class:`BlackholeServer` is a TCP peer that accepts connections and never answers, to prove
  timeouts without a real broker hanging.
- :func:`die_with_parent` makes a child process (collector, application) go when its starter
  does, so a run killed by a timeout leaves nothing behind.
- :func:`small_filesystem` mounts a small tmpfs, so a spool's disk can really fill up.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TypeVar

__all__ = [
    "BlackholeServer",
    "die_with_parent",
    "free_port",
    "small_filesystem",
    "unique_name",
    "wait_until",
]

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the forked child


def die_with_parent() -> None:
    """``preexec_fn`` for :class:`subprocess.Popen`: SIGKILL the child when the thread that
    started it exits (Linux ``PR_SET_PDEATHSIG``).

    A test or ``make faults`` killed by its timeout then takes its collectors and applications
    with it instead of leaving them consuming queues on a 2-core machine. Start such children
    from the main thread: the signal follows the *thread* that forked them.
    """
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "",
) -> T:
    """Call *predicate* every *interval* seconds until it returns something truthy.

    Returns the truthy value, so ``depth = wait_until(lambda: q.depth() or None)`` works.
    Exceptions raised by the predicate propagate immediately (a broken predicate must not be
    mistaken for "not yet").

    Raises:
        AssertionError: the deadline passed; the message includes *message* and the last value.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            msg = f"timed out after {timeout:.1f}s waiting for {what} (last value: {value!r})"
            raise AssertionError(msg)
        time.sleep(interval)


def unique_name(prefix: str = "t") -> str:
    """Return ``<prefix>-<pid>-<12 hex>``: unique across tests, sessions and concurrent runs.

    Only ``[A-Za-z0-9._-]`` characters are produced (safe for AMQP queue names, STOMP
    destinations and Elasticsearch index names once lower-cased).
    """
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on *host* a moment ago (bind to port 0, then release).

    There is an unavoidable race with other processes picking the same port before the caller
    binds it; callers that start servers should retry on "address in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class BlackholeServer:
    """A listening TCP socket on loopback that accepts connections and never sends a byte.

    Use it as an endpoint that connects fine but never completes a protocol handshake (AMQP,
    STOMP, HTTP), to prove that clients time out instead of hanging. Accepted sockets are kept
    open until :meth:`close` so the peer sees no EOF.

    Usage::

        with BlackholeServer() as hole:
            url = f"amqp://guest:guest@127.0.0.1:{hole.port}/"
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._accepted: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"blackhole-{self.port}", daemon=True
        )
        self._thread.start()

    @property
    def accepted(self) -> int:
        """Number of connections accepted so far."""
        return len(self._accepted)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:  # noqa: UP041 - socket.timeout is TimeoutError only on 3.10+
                continue
            except OSError:
                return
            self._accepted.append(conn)

    def close(self) -> None:
        """Stop accepting and close every socket. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._thread.join(timeout=2.0)
        self._listener.close()
        for conn in self._accepted:
            conn.close()

    def __enter__(self) -> BlackholeServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[str]:
    """A ``size`` tmpfs mounted on ``path`` (root), else yield "" (RLIMIT_FSIZE fallback)."""
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if res.returncode != 0:
        yield ""
        return
    try:
        yield f"tmpfs {size}"
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
