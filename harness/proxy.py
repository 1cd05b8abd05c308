"""A TCP forwarder that can fail: an outage of a server the server itself takes no part in.

Why: stopping noida-db's Elasticsearch stand-in while it is answering ``_bulk`` requests loses
documents it already answered ``201`` for (measured: a few to a few hundred of the last ones,
after ``SIGTERM`` or ``SIGINT`` alike; it saves its data at shutdown, not per request). A real
Elasticsearch fsyncs its translog before it answers (``index.translog.durability: request``),
so a test of an outage mid-stream must not stop the stand-in: it cuts a :class:`TcpProxy` in
front of it. To a client that is exactly a server gone away: open connections are reset, new
ones refused; the server keeps everything it answered for.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType

from .brokers import HOST, reserve_port

__all__ = ["Outage", "TcpProxy", "in_front"]

_CHUNK = 256 * 1024


class TcpProxy:
    """Forwards ``HOST:port`` to ``target`` until :meth:`cut`, again after :meth:`restore`.

    One thread moves the bytes of every connection while the proxy is up; :meth:`cut` stops it,
    resets each open connection (both sides) and closes the listening socket, so the port
    refuses connections as a stopped server's would. Use it as a context manager.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.host = HOST
        self.port = reserve_port()
        self._target = (target_host, target_port)
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self._listener: socket.socket | None = None
        self._peers: dict[socket.socket, socket.socket] = {}

    @property
    def url(self) -> str:
        """``http://HOST:port``, for the HTTP servers it usually stands in front of."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Listen and forward (idempotent)."""
        if self._thread is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        listener.setblocking(False)
        self._listener = listener
        self._running.set()
        self._thread = threading.Thread(target=self._forward, name="tcp-proxy", daemon=True)
        self._thread.start()

    restore = start

    def cut(self) -> None:
        """Reset every open connection and refuse new ones, until :meth:`restore`."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._running.clear()
        thread.join(10.0)
        for sock in list(self._peers):
            _reset(sock)
        self._peers.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    close = cut

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _forward(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while self._running.is_set():
                for key, _ in selector.select(0.05):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._listener:
                        self._accept(selector)
                    elif sock in self._peers:
                        self._pump(selector, sock)

    def _accept(self, selector: selectors.BaseSelector) -> None:
        assert self._listener is not None
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            upstream = socket.create_connection(self._target, timeout=5.0)
        except OSError:
            _reset(client)  # the server behind is down: so is the proxy, to this client
            return
        for sock, peer in ((client, upstream), (upstream, client)):
            sock.setblocking(True)
            self._peers[sock] = peer
            selector.register(sock, selectors.EVENT_READ)

    def _pump(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        peer = self._peers[sock]
        try:
            data = sock.recv(_CHUNK)
            if data:
                peer.sendall(data)
                return
        except OSError:
            pass
        for end in (sock, peer):  # one side closed or failed: close the pair
            selector.unregister(end)
            self._peers.pop(end, None)
            with contextlib.suppress(OSError):
                end.close()


#: The ``outage`` fixture of ``tests/handlers``: ``outage(url, port)`` is :func:`in_front`.
Outage = Callable[[str, int], tuple[TcpProxy, str]]


def in_front(url: str, port: int) -> tuple[TcpProxy, str]:
    """A broker that is down until ``proxy.start()``: a proxy to ``HOST:port``, not started, and
    ``url`` with ``port`` replaced by the proxy's.

    Connections to the new URL are refused, as a stopped broker's port refuses them, and
    ``start()`` makes the real broker behind it reachable at once. A client that had not
    reached the broker before cannot tell this from a broker restart, which costs a test ~2 s
    (stop) and ~5 s (boot); the caller closes the proxy.
    """
    address = f"{HOST}:{port}"
    if address not in url:  # else the "outage" would silently be no outage at all
        msg = f"{url!r} does not go to {address}"
        raise ValueError(msg)
    proxy = TcpProxy(HOST, port)
    return proxy, url.replace(address, f"{HOST}:{proxy.port}", 1)


def _reset(sock: socket.socket) -> None:
    """Close with RST, as a server that went away leaves its connections."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
