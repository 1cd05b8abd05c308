"""STOMP transport (stomp.py 9) for RabbitMQ's STOMP plugin and ActiveMQ.

Confirmation
    Every SEND frame of a batch is written in one go (one ``sendall`` for the whole batch) and
    only the *last* frame carries a ``receipt`` header; :meth:`STOMPProducer.publish_batch`
    returns once that RECEIPT arrived. This is sound because both brokers process the frames
    of one connection strictly in order and report a failed SEND with an ERROR frame that
    precedes any later RECEIPT:

    * RabbitMQ turns the SENDs of a connection into ``basic.publish`` on one channel in
      publisher-confirm mode and sends a RECEIPT only once the confirm of that publish came
      back; confirms of one channel to one queue come in publish order, so the confirm of the
      last message implies the earlier ones are stored (persistent messages: on disk).
    * ActiveMQ handles one connection's frames on one transport thread. A SEND with a receipt
      is a synchronous send answered after the store completed; the earlier receipt-less
      (asynchronous) persistent sends to the same destination were queued on the same
      destination store before it, and an asynchronous send that fails produces an ERROR
      frame, which arrives before the RECEIPT.

    A receipt per message costs a round trip each (~0.8k msg/s against ~17k msg/s on
    loopback), which is why we never do that.

Acknowledgements
    ``ack``/``nack`` write their frames in one go with a receipt on the last one and return
    when it arrived (one round trip per call, not per message), so acked records are not
    redelivered if this process dies right after. If that fails the connection is dropped
    and the broker redelivers (at-least-once); nothing is raised.

Bounded blocking
    stomp.py's own ``connect(wait=True)`` waits forever for CONNECTED, ``disconnect`` with a
    receipt waits forever for it, and a plain socket is left with no timeout. Here: each host
    gets ``connect_timeout`` for TCP + TLS + CONNECTED (a black-holed host is abandoned and the
    next host tried); plain sockets have a kernel send timeout (``SO_SNDTIMEO``) so a broker
    that stops reading (RabbitMQ's memory alarm, ActiveMQ's producer flow control) cannot
    freeze a ``sendall``; receipts are awaited at most ``timeout``; closing waits for the
    DISCONNECT receipt at most a few seconds and then shuts the socket down without the TLS
    close handshake.

Broker differences (found against RabbitMQ 3.10.8 and ActiveMQ 5.17.2, both speak STOMP 1.2)
    * The ``host`` header is the RabbitMQ virtual host (``endpoint.vhost``, default ``/``);
      ActiveMQ ignores it.
    * Prefetch: RabbitMQ reads ``prefetch-count``, ActiveMQ ``activemq.prefetchSize`` on
      SUBSCRIBE. The broker is recognised by the ``server`` header of CONNECTED. Both fix it
      for the life of the subscription (changing it would take an UNSUBSCRIBE and a new
      SUBSCRIBE), so :meth:`Consumer.set_window` keeps the default: the client may buffer up
      to ``prefetch`` messages, whatever their size.
    * RabbitMQ confirms a SEND to ``/exchange/X/key`` that no queue is bound to (there is no
      STOMP ``mandatory``): such a record is dropped silently. Use ``/queue/NAME`` (declared
      durable on first use) or ``/amq/queue/NAME`` for log destinations.
    * RabbitMQ maps ``amqp-message-id`` to the AMQP ``message_id`` property, so an AMQP consumer
      of the same queue sees the record id; it is sent to RabbitMQ only. RabbitMQ echoes the
      SEND ``receipt`` header in MESSAGE frames; it is dropped from :attr:`Delivery.headers`.
    * NACK: RabbitMQ requeues (``basic.nack`` with requeue) unless ``requeue:false`` is given.
      ActiveMQ treats a STOMP NACK as a *poison ack*: the message goes straight to
      ``ActiveMQ.DLQ``, it is never redelivered. So on ActiveMQ (and in cumulative ``client``
      mode on both brokers, where NACK would also cover earlier messages)
      ``nack(requeue=True)`` re-sends a persistent copy (same id and headers, plus
      ``mqlogging-requeued``) and acknowledges the original only once the copy's receipt came
      back: the record is redelivered, at the tail of the queue, flagged ``redelivered``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import queue
import re
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from .._types import Delivery, Message
from ..errors import (
    ConfigurationError,
    ConnectError,
    MissingDependencyError,
    NotConfirmed,
    PublishTimeout,
)
from ..packing import (
    CONTENT_TYPE,
    COUNT_HEADER,
    DEFAULT_MAX_UNPACKED,
    ENCODING_HEADER,
    FIRST_HEADER,
    LAST_HEADER,
    TYPE_HEADER,
    Pack,
    Packer,
    unpack_bodies,
)
from .base import Consumer, Producer, Tap, TapOptions
from .endpoints import (
    COMMON_OPTIONS,
    COMMON_TYPES,
    DEFAULT_MAX_MESSAGE_BYTES,
    PACK_OPTIONS,
    PACK_TYPES,
    Coercer,
    Endpoint,
    Host,
    Scheme,
)
from .oversize import SizeGuard, SizeRefusal, publish_within_limit, records_of
from .registry import Transport

__all__ = ["TRANSPORT", "STOMPConsumer", "STOMPEndpoint", "STOMPProducer", "STOMPTap"]

_CLOSE_GRACE = 2.0  # at most this long for the DISCONNECT receipt and the io thread on close()
_LOGIN_ERROR = re.compile(r"access refused|login|passcode|password|authenticat|credential", re.I)
_SUBSCRIPTION_ID = "mqlogging"
_REQUEUED = "mqlogging-requeued"
_DROP_HEADERS = frozenset({"receipt", "content-length"})
# What says how to read a packed message: a requeued copy keeps it.
_PACK_HEADERS = frozenset({TYPE_HEADER, ENCODING_HEADER, COUNT_HEADER, FIRST_HEADER, LAST_HEADER})


# -- the endpoint: stomp://user:pass@host:61613/queue/logs ---------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class STOMPEndpoint(Endpoint):
    """A STOMP 1.2 endpoint (``stomp://``, ``stomp+ssl://``); the URL path is the destination
    (``/queue/logs``, ``/topic/logs``, ``/amq/queue/logs``, ``/exchange/NAME/KEY``...).

    ``vhost`` is sent as the ``host`` header (RabbitMQ's virtual host; ActiveMQ ignores it).
    """

    transport: ClassVar[str] = "stomp"
    schemes: ClassVar[Mapping[str, Scheme]] = {
        "stomp": Scheme(tls=False, default_port=61613),
        "stomp+ssl": Scheme(tls=True, default_port=61614),
        "stomp+tls": Scheme(tls=True, default_port=61614),
    }
    default_max_message_bytes: ClassVar[int | None] = DEFAULT_MAX_MESSAGE_BYTES
    url_options: ClassVar[frozenset[str]] = COMMON_OPTIONS | PACK_OPTIONS | {
        "vhost", "ack", "persistent", "destination",
    }  # fmt: skip
    option_types: ClassVar[Mapping[str, Coercer]] = {**COMMON_TYPES, **PACK_TYPES}

    destination: str = "/queue/logs"
    ack: str = "client-individual"

    @classmethod
    def path_fields(cls, path: str, where: str) -> dict[str, Any]:
        return {"destination": path} if path and path != "/" else {}

    def validate(self, where: str) -> None:
        if self.ack not in ("client-individual", "client", "auto"):
            msg = f"{where}: ack must be 'client-individual' or 'client', not {self.ack!r}"
            raise ConfigurationError(msg)
        if not self.destination.startswith("/"):
            msg = f"{where}: STOMP destination must start with '/', e.g. /queue/logs"
            raise ConfigurationError(msg)

    def redacted_path(self) -> str:
        return self.destination

    def destination_parts(self) -> dict[str, str]:
        return {"vhost": self.vhost, "destination": self.destination}

    @classmethod
    def named_destination(
        cls, kind: Literal["queue", "topic"], name: str, *, exchange: str = ""
    ) -> tuple[str, dict[str, Any]]:
        """``/queue/NAME`` or ``/topic/NAME``: the broker's own queues and topics."""
        return f"/{kind}/{name}", {}

    def delivery_caveat(self) -> str | None:
        """The broker confirms a SEND to a topic nobody subscribes to, or to an exchange no
        queue is bound to, and then drops it (STOMP has no ``mandatory``). AMQP producers
        publish with ``mandatory``, so an unroutable record comes back and is retried or
        spooled, never confirmed and dropped: only STOMP needs this."""
        where = self.redacted()
        dest = self.destination
        if dest.startswith(("/topic/", "/temp-topic/", "/temp-queue/")):
            return (
                f"{where}: {dest} delivers only to consumers subscribed at that moment; records "
                "sent while nobody subscribes are confirmed and dropped. For records that must "
                "be kept use a queue, e.g. /queue/logs"
            )
        if dest.startswith("/exchange/"):
            return (
                f"{where}: RabbitMQ confirms and drops records sent to {dest} while no queue is "
                "bound to it (STOMP has no 'mandatory'); bind a durable queue first (mqlogging "
                "rabbitmq setup) or send to /queue/NAME"
            )
        return None


class _RedactPasscode(logging.Filter):
    """Mask the password in stomp.py's DEBUG log of the frames it sends.

    stomp.py masks ``passcode:`` only when a space follows the colon, but writes the header as
    ``passcode:VALUE``, so an application with DEBUG logging would log every CONNECT frame's
    password. Everything after ``passcode:`` in such a record is replaced.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG:
            message = record.getMessage()
            at = message.find("passcode:")
            if at >= 0:
                record.msg = message[: at + 9] + "******** (rest of frame redacted)"
                record.args = ()
        return True


@functools.cache  # once: logging.getLogger takes logging's lock (issue #11, defect 17)
def _stomp() -> Any:
    try:
        import stomp
    except ImportError as exc:
        raise MissingDependencyError("stomp.py", "stomp") from exc
    stomp_log = logging.getLogger("stomp.py")
    if not any(isinstance(f, _RedactPasscode) for f in stomp_log.filters):
        stomp_log.addFilter(_RedactPasscode())
    return stomp


@functools.cache
def _classes() -> tuple[Any, Any]:
    """stomp.py subclasses, built on first use so that importing this module needs no stomp.py.

    ``_Transport`` replaces stomp.py's connection attempt (which sorts hosts, retries with
    sleeps, hides the OS error and builds its own SSL context) with one bounded attempt at one
    host using our ``ssl.SSLContext``, and its socket teardown with one that never blocks.
    """
    stomp = _stomp()
    from stomp.connect import BaseConnection, StompConnection12
    from stomp.protocol import Protocol12
    from stomp.transport import Transport
    from stomp.utils import PollableQueue

    class _Transport(Transport):  # type: ignore[misc]
        def __init__(
            self, host: Host, connect_timeout: float, context: ssl.SSLContext | None,
            server_hostname: str | None, vhost: str,
        ) -> None:  # fmt: skip
            super().__init__(
                [(host.host, host.port)],
                prefer_localhost=False,
                try_loopback_connect=False,
                reconnect_attempts_max=1,
                timeout=connect_timeout,
                vhost=vhost,
                auto_decode=False,
            )
            self._mq_host = (host.host, host.port)
            self._mq_timeout = connect_timeout
            self._mq_send_lock = threading.Lock()  # frames of two threads never interleave
            self.mq_partial = False  # a write of ours was cut short: see _Link.unsent
            self._mq_context = context
            self._mq_server_hostname = server_hostname or host.host
            if context is not None:
                # Only so that stomp.py knows this host is TLS; the parameters are unused.
                self.set_ssl(for_hosts=[self._mq_host])

        def attempt_connection(self) -> None:
            self.connection_error = False
            sock = socket.create_connection(self._mq_host, self._mq_timeout)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                # The tail of a batch (the frame with the receipt) must not wait for Nagle.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._mq_context is not None:
                    # The handshake runs under the connect timeout set by create_connection.
                    sock = self._mq_context.wrap_socket(
                        sock, server_hostname=self._mq_server_hostname
                    )
                    # stomp.py drives TLS sockets non-blocking from its io thread, which
                    # then does all writes: the caller's thread only enqueues.
                    self.send_queue = PollableQueue()
                    self.sel = stomp.transport.selectors.DefaultSelector()
                    self.sel.register(self.send_queue, stomp.transport.selectors.EVENT_READ)
                    self.sel.register(sock, stomp.transport.selectors.EVENT_READ)
                    self.blocking = False
                    sock.setblocking(False)
                else:
                    sock.settimeout(None)  # the io thread blocks in recv
                    seconds = max(1, int(self._mq_timeout))
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, 0)
                    )
                    self.blocking = True
            except BaseException:
                sock.close()
                raise
            self.socket = sock
            self.current_host_and_port = self._mq_host

        def disconnect_socket(self) -> None:
            _shut_down(self)

        def send(self, encoded_frame: bytes) -> None:
            """stomp.py's own writes (heartbeats, its frames): see :func:`_own_write`."""
            _own_write(self, encoded_frame)

        def send_by(self, data: bytes, deadline: float | None) -> None:
            """Write ``data`` whole by ``deadline`` (default: ``connect_timeout`` from now).

            stomp.py's ``sendall`` under ``SO_SNDTIMEO`` bounds each ``send(2)``, not the
            write: a broker that stops reading (RabbitMQ in a resource alarm) held a large
            batch's write for several times ``connect_timeout`` (review 11, D4). A write cut
            short leaves a partial frame: the caller must give the connection up.
            """
            with self._mq_send_lock:
                _send_within(self.socket, data, deadline or time.monotonic() + self._mq_timeout)

    class _Connection(StompConnection12):  # type: ignore[misc]
        def __init__(self, transport: Any, heartbeats: tuple[int, int]) -> None:
            BaseConnection.__init__(self, transport)
            Protocol12.__init__(self, transport, heartbeats, auto_content_length=True)

    return _Transport, _Connection


def _own_write(transport: Any, data: bytes) -> None:
    """A write of stomp.py's own (a heartbeat): bounded like a connection, and none while one
    of ours is half written (it would land inside that frame)."""
    if not transport.mq_partial:
        transport.send_by(data, None)


class _CutShort(TimeoutError):
    """A write stopped at its deadline; ``rest`` is what was not written."""

    def __init__(self, message: str, rest: bytes) -> None:
        super().__init__(message)
        self.rest = rest


def _send_within(sock: socket.socket | None, data: bytes, deadline: float) -> None:
    """Write ``data`` whole to ``sock``, or raise :class:`_CutShort` once ``deadline`` passes."""
    if sock is None:
        raise _stomp().exception.NotConnectedException()
    view = memoryview(data)
    writable = select.poll()  # not select(): it fails for descriptors >= 1024 (review 12, D1)
    writable.register(sock, select.POLLOUT)
    while view:
        with contextlib.suppress(BlockingIOError):
            view = view[sock.send(view, socket.MSG_DONTWAIT) :]
        remaining = deadline - time.monotonic()
        if view and (remaining <= 0 or not writable.poll(remaining * 1000)):
            msg = f"the broker read {len(data) - len(view)} of {len(data)} bytes in time"
            raise _CutShort(msg, bytes(view))


def _shut_down(transport: Any) -> None:
    """stomp.py's ``disconnect_socket`` without the TLS close_notify exchange (which stomp.py
    does blocking, with no timeout): shut the socket down; the io thread sees EOF, closes it
    and reports "disconnected"."""
    transport.running = False
    sock = transport.socket
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        io_thread = transport.io_thread
        if io_thread is None or not io_thread.is_alive():
            with contextlib.suppress(Exception):
                transport.cleanup()
    if transport.io_thread is None and not transport.notified_on_disconnect:
        transport.notify("disconnected")


def _escape(value: str) -> str:
    """STOMP 1.2 header escaping."""
    return value.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n").replace(":", "\\c")


def _frame(command: str, headers: Mapping[str, str], body: bytes = b"") -> bytes:
    lines = [command]
    lines.extend(f"{_escape(k)}:{_escape(v)}" for k, v in headers.items())
    if body:
        lines.append(f"content-length:{len(body)}")
    return ("\n".join(lines) + "\n\n").encode("utf-8") + body + b"\x00"


class _Listener:
    """Receives stomp.py's callbacks (on its io thread) and wakes the owner's thread.

    A plain object: stomp.py looks listener methods up by name, no base class is needed.
    """

    def __init__(self, on_message: Any = None) -> None:
        self.cond = threading.Condition()
        self.connected: dict[str, str] | None = None
        self.error: str | None = None
        self.lost = False
        self.receipts: set[str] = set()
        self._on_message = on_message

    def on_connected(self, frame: Any) -> None:
        with self.cond:
            self.connected = dict(frame.headers)
            self.cond.notify_all()

    def on_error(self, frame: Any) -> None:
        headers = frame.headers
        body = frame.body.decode("utf-8", "replace") if isinstance(frame.body, bytes) else ""
        text = " ".join(f"{headers.get('message', '')} {body}".split())[:300]
        with self.cond:
            self.error = text or "ERROR frame without a message"
            self.cond.notify_all()

    def on_receipt(self, frame: Any) -> None:
        with self.cond:
            self.receipts.add(frame.headers.get("receipt-id", ""))
            self.cond.notify_all()

    def on_disconnected(self) -> None:
        with self.cond:
            self.lost = True
            self.cond.notify_all()

    on_heartbeat_timeout = on_disconnected

    def on_message(self, frame: Any) -> None:
        if self._on_message is not None:
            self._on_message(frame)

    def handshake_over(self) -> bool:
        return self.connected is not None or self.error is not None or self.lost

    def wait(self, predicate: Any, deadline: float) -> bool:
        """Wait until ``predicate()`` (called under the lock) or the deadline; return it."""
        with self.cond:
            while True:
                if predicate():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(remaining)


class _Link:
    """One STOMP connection to one host: the stomp.py connection, its listener and its number.

    Deliveries carry the generation of the link that received them, so acks for a connection
    that is gone are recognised and ignored (the broker redelivers those messages anyway).
    """

    def __init__(self, conn: Any, listener: _Listener, host: Host, generation: int) -> None:
        self.conn = conn
        self.listener = listener
        self.host = host
        self.generation = generation
        self.closed = False
        #: The receipt of a batch the broker neither confirmed nor refused in time (kept by a
        #: producer: see STOMPProducer._link_to_write); ``None`` when nothing is in doubt.
        self.in_doubt: str | None = None
        self.in_doubt_since = 0.0
        #: The rest of a write cut short at its deadline (plain TCP), written before anything
        #: else on this connection: giving it up would leave the broker the frames it has.
        self.unsent = b""

    @property
    def broker(self) -> str:
        """``rabbitmq``, ``activemq`` or ``other``, from the ``server`` header of CONNECTED."""
        server = (self.listener.connected or {}).get("server", "")
        if server.startswith("RabbitMQ"):
            return "rabbitmq"
        return "activemq" if server.startswith("ActiveMQ") else "other"

    @property
    def usable(self) -> bool:
        lsn = self.listener
        return not (self.closed or lsn.lost or lsn.error is not None) and bool(
            self.conn.transport.is_connected()
        )

    def finish(self) -> bool:
        """Write what is left of a write cut short, as far as the broker reads it now; True
        once nothing is left."""
        if self.unsent:
            try:
                self.conn.transport.send_by(self.unsent, time.monotonic())
            except _CutShort as cut:
                self.unsent = cut.rest
                return False
            self.unsent = b""
            self.conn.transport.mq_partial = False
        return True

    def write(self, data: bytes, deadline: float | None = None) -> None:
        """Write already encoded frames: plain TCP by the time ``deadline`` (else
        ``TimeoutError``), or one queue item for the io thread (TLS)."""
        transport = self.conn.transport
        if transport.blocking:
            transport.send_by(data, deadline)
        else:
            send_queue = transport.send_queue
            if send_queue is None:
                raise ConnectionResetError("connection closed")
            send_queue.put(data)

    def close(self, grace: float = _CLOSE_GRACE) -> None:
        """DISCONNECT politely if possible, then shut the socket down. Never raises."""
        if self.closed:
            return
        self.closed = True
        transport = self.conn.transport
        with contextlib.suppress(Exception):
            if not self.listener.lost and self.listener.error is None and not self.unsent:
                receipt = f"bye-{self.generation}"
                self.write(_frame("DISCONNECT", {"receipt": receipt}), time.monotonic() + grace)
                self.listener.wait(
                    lambda: receipt in self.listener.receipts or self.listener.lost,
                    time.monotonic() + grace,
                )
        with contextlib.suppress(Exception):
            transport.set_connected(False)
            transport.disconnect_socket()
        io_thread = transport.io_thread
        if io_thread is not None and io_thread is not threading.current_thread():
            io_thread.join(grace)
        with contextlib.suppress(Exception):
            self.conn.heartbeat_terminate_event.set()


MAX_DOUBT = 300.0
"""Seconds a producer keeps a connection whose batch is in doubt before it gives up on it and
sends the batch again on a new one: bounds the stall if the receipt was lost for good, at the
cost of one more copy per period during a long resource alarm."""


class _Client:
    """Connection management shared by the producer and the consumer: failover, errors."""

    endpoint: STOMPEndpoint
    #: Keep a link whose receipt timed out (the producer), instead of reconnecting at once.
    _keep_in_doubt: ClassVar[bool] = False

    def __init__(self, endpoint: str | Endpoint) -> None:
        endpoint = STOMPEndpoint.from_url(endpoint)
        self.endpoint = endpoint
        self._link: _Link | None = None
        self._generations = itertools.count(1)
        self._next_host = 0
        self._context: ssl.SSLContext | None = (
            endpoint.tls.ssl_context() if endpoint.tls is not None else None
        )
        self._receipts = itertools.count(1)

    def _on_message(self, link_generation: int) -> Any:
        return None

    def _connect(self, indexes: Sequence[int] | None = None) -> _Link:
        """Connect to the first host that answers CONNECTED, starting with the last good one
        (or to the first of the hosts at ``indexes`` that does).

        Each host gets ``connect_timeout`` for TCP, TLS and CONNECTED together.
        """
        transport_cls, connection_cls = _classes()
        stomp = _stomp()
        ep = self.endpoint
        hosts = ep.hosts
        problems: list[str] = []
        creds = ep.credentials()
        heartbeat_ms = ep.heartbeat * 1000
        if indexes is None:
            indexes = [(self._next_host + i) % len(hosts) for i in range(len(hosts))]
        for index in indexes:
            host = hosts[index]
            generation = next(self._generations)
            listener = _Listener(self._on_message(generation))
            deadline = time.monotonic() + ep.connect_timeout
            transport = transport_cls(
                host, ep.connect_timeout, self._context,
                ep.tls.server_hostname if ep.tls else None, ep.vhost,
            )  # fmt: skip
            conn = connection_cls(transport, (heartbeat_ms, heartbeat_ms))
            conn.set_listener("mqlogging", listener)
            link = _Link(conn, listener, host, generation)
            try:
                # StompConnection12.connect starts the transport (one bounded TCP/TLS attempt
                # at this host, then the io thread) and writes the STOMP frame; we wait for
                # CONNECTED ourselves, with a deadline.
                conn.connect(
                    username=creds[0] if creds else None,
                    passcode=creds[1] if creds else None,
                    wait=False,
                )
            except (OSError, stomp.exception.StompException) as exc:
                problems.append(f"{host}: {_describe(exc)}")
                link.close(grace=0)
                continue
            ok = listener.wait(listener.handshake_over, deadline)
            if ok and listener.connected is not None and listener.error is None:
                self._next_host = index
                return link
            if listener.error is not None:
                if _LOGIN_ERROR.search(listener.error):
                    user = creds[0] if creds else "(none)"
                    problems.append(f"{host}: login refused for user {user!r}")
                else:
                    problems.append(f"{host}: broker refused the connection: {listener.error}")
            elif listener.lost:
                problems.append(f"{host}: connection closed before CONNECTED")
            else:
                problems.append(
                    f"{host}: no CONNECTED frame within connect_timeout={ep.connect_timeout:g}s"
                )
            link.close(grace=0)
        msg = f"cannot connect to any STOMP host: {'; '.join(problems)}"
        raise ConnectError(msg, endpoint=ep.redacted())

    def _ensure_link(self) -> _Link:
        link = self._link
        if link is not None and link.usable:
            return link
        if link is not None:
            link.close(grace=0)
            self._link = None
        self._link = link = self._connect()
        self._after_connect(link)
        return link

    def _after_connect(self, link: _Link) -> None:
        pass

    def _drop_link(self) -> None:
        if self._link is not None:
            self._link.close(grace=0)
            self._link = None

    def _new_receipt(self, link: _Link) -> str:
        return f"mqlogging-{link.generation}-{next(self._receipts)}"

    def _await_receipt(self, link: _Link, receipt: str, what: str) -> None:
        """Wait for ``receipt`` up to ``endpoint.timeout``; on failure drop the link and raise."""
        lsn = link.listener
        ep = self.endpoint
        lsn.wait(
            lambda: receipt in lsn.receipts or lsn.error is not None or lsn.lost,
            time.monotonic() + ep.timeout,
        )
        with lsn.cond:
            got = receipt in lsn.receipts
            lsn.receipts.discard(receipt)
            error, lost = lsn.error, lsn.lost
        if got and error is None:
            return
        if self._keep_in_doubt and error is None and not lost:
            # Neither confirmed nor refused: a broker that stopped reading (RabbitMQ in a
            # resource alarm) reads the batch later. Writing it again on a new connection
            # would leave it one more copy per retry (review 11, D2): the link is kept.
            link.in_doubt, link.in_doubt_since = receipt, time.monotonic()
            msg = f"no receipt for {what} from {link.host} within timeout={ep.timeout:g}s"
            raise PublishTimeout(msg, endpoint=ep.redacted())
        self._drop_link()
        if error is not None:
            msg = f"broker refused {what} on {link.host}: {error}"
            raise NotConfirmed(msg, endpoint=ep.redacted())
        if lost:
            msg = f"connection to {link.host} lost before the broker confirmed {what}"
            raise PublishTimeout(msg, endpoint=ep.redacted())
        # A host that holds a batch without answering (frozen, or RabbitMQ blocking
        # publishers in a resource alarm) still accepts connections: the next connection
        # starts from the next host, else it would never leave this one (review 11, D1).
        self._next_host = (self._next_host + 1) % len(ep.hosts)
        msg = f"no receipt for {what} from {link.host} within timeout={ep.timeout:g}s"
        raise PublishTimeout(msg, endpoint=ep.redacted())

    def _send_messages(
        self, link: _Link, messages: Sequence[Message],
        requeued: Sequence[Mapping[str, str]] | None,
    ) -> None:  # fmt: skip
        ep = self.endpoint
        base = {"destination": ep.destination, "content-type": "application/json"}
        if ep.persistent:
            base["persistent"] = "true"
        rabbit = link.broker == "rabbitmq"
        receipt = self._new_receipt(link)
        last = len(messages) - 1
        parts = []
        for i, message in enumerate(messages):
            # Given headers (a requeued copy's, a packed message's) win over the defaults.
            headers = {**base, **requeued[i]} if requeued is not None else dict(base)
            headers["mqlogging-id"] = message.id
            if rabbit:
                headers["amqp-message-id"] = message.id
            if i == last:
                headers["receipt"] = receipt
            parts.append(_frame("SEND", headers, message.body))
        try:
            link.write(b"".join(parts), time.monotonic() + ep.timeout)
        except _CutShort as cut:
            if self._keep_in_doubt:
                # The broker has the frames written so far and reads them once it reads
                # again: keep the connection in doubt, with the rest to write first
                # (review 12, D6: a new connection per retry left a copy of them each time).
                link.unsent, link.conn.transport.mq_partial = cut.rest, True
                link.in_doubt, link.in_doubt_since = receipt, time.monotonic()
                msg = f"{link.host} did not read a batch of {len(messages)} message(s) in time"
                raise PublishTimeout(msg, endpoint=ep.redacted()) from cut
            self._drop_link()
            msg = f"connection to {link.host} failed while sending: {_describe(cut)}"
            raise PublishTimeout(msg, endpoint=ep.redacted()) from cut
        except Exception as exc:  # OSError, stomp.py's NotConnectedException
            self._drop_link()
            msg = f"connection to {link.host} failed while sending: {_describe(exc)}"
            raise PublishTimeout(msg, endpoint=ep.redacted()) from exc
        self._await_receipt(link, receipt, f"a batch of {len(messages)} message(s)")

    def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close(grace=min(_CLOSE_GRACE, self.endpoint.timeout))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__


class STOMPProducer(_Client, Producer):
    """Publishes batches with one receipt per batch (see the module docstring for why).

    Frames carry ``persistent:true`` (unless ``persistent=false``), ``content-type:
    application/json`` and ``mqlogging-id``. Owned by one thread; connects lazily and, after any
    failure, reconnects on the next call (failover across the endpoint's hosts).

    A batch whose receipt does not come within ``timeout`` is *in doubt*: the broker may
    still store it (RabbitMQ in a resource alarm stops reading and reads on once the alarm
    clears; STOMP has no notice of that). The connection is kept: later batches fail at once,
    nothing sent, until that receipt comes, or the connection dies, or another host takes
    them (:meth:`_link_to_write`).
    """

    endpoint: STOMPEndpoint
    _keep_in_doubt = True

    def __init__(self, endpoint: str | Endpoint) -> None:
        _stomp()
        super().__init__(endpoint)
        # Hosts left with a batch in doubt, since the last confirmed batch.
        self._fled: set[Host] = set()
        options = self.endpoint.pack_options()
        self._packer = Packer(options) if options is not None else None
        self._guard = SizeGuard(self.endpoint)

    def publish_batch(self, messages: Sequence[Message]) -> None:
        """Send ``messages`` (packed, with ``pack=``) and wait for the batch's receipt.

        A message above the broker's size limit is refused alone (:mod:`.oversize`):
        :class:`PartlyRefused` names it once the rest is confirmed. A broker refusing one
        for its size (RabbitMQ: an ERROR frame stating its limit, then it closes the
        connection) makes the producer apply that limit and send again, on a new
        connection, what it had not confirmed.
        """
        if not messages:
            return
        publish_within_limit(
            self._guard,
            messages,
            packed=self._packer is not None,
            publish_round=self._publish_round,
            where=self.endpoint.redacted(),
        )

    def stats(self) -> dict[str, int]:
        """Records refused for their size (``too_large_for_broker``), if any."""
        return self._guard.stats()

    def _publish_round(self, messages: Sequence[Message]) -> list[Message]:
        """Send ``messages`` and wait for their receipts; returns the records refused up
        front (packed: a single record packed above the limit).

        One receipt per batch, except around a message larger than any the broker confirmed
        so far (:meth:`SizeGuard.alone`): it is sent alone, after the receipt of the messages
        before it, so a size refusal (which closes the connection) leaves no doubt about
        which message it refused, and the messages before it are never sent twice.
        """
        if not messages:
            return []
        link = self._link_to_write()
        packs: list[Pack] | None = None
        refused: list[Message] = []
        units: Sequence[Message] = messages
        headers: list[dict[str, str]] | None = None
        if self._packer is not None:
            packs, refused = self._guard.pack(self._packer, messages)
            units = [Message(p.id, p.body) for p in packs]
            headers = [
                {TYPE_HEADER: CONTENT_TYPE, **{k: str(v) for k, v in p.headers.items()}}
                for p in packs
            ]
        sizes = [len(u.body) for u in units]
        start = 0
        for end in self._guard.alone(sizes):
            try:
                if end > start:
                    self._send_messages(
                        link, units[start:end], headers[start:end] if headers else None
                    )
            except NotConfirmed as exc:
                if not self._guard.learn(exc.reason, sizes[start]):
                    done = records_of(messages, packs[:start]) if packs else messages[:start]
                    self._guard.delivered_before_failure(done)
                    raise
                rest = records_of(messages, packs[start:]) if packs else list(messages[start:])
                raise SizeRefusal(rest, exc, refused) from exc
            start = end
        self._guard.confirmed(max(sizes, default=0))
        self._fled.clear()
        return refused

    def _link_to_write(self) -> _Link:
        """The link to send on; raises :class:`PublishTimeout` while the only way out is a
        connection with a batch in doubt (writing again would be one more copy of it).

        The doubt ends when the receipt comes after all, when the connection dies, or after
        :data:`MAX_DOUBT` seconds (then a new connection is made as after any failure). With
        more than one host, each host is left once at most until a batch is confirmed
        (review 11, D1): a host that stopped reading still accepts connections, and in a
        cluster-wide alarm moving on at every retry would leave a copy on every connection.
        """
        link = self._ensure_link()
        receipt = link.in_doubt
        if receipt is None:
            return link
        link.finish()
        lsn = link.listener
        with lsn.cond:
            confirmed = receipt in lsn.receipts
            lsn.receipts.discard(receipt)
        if confirmed:
            link.in_doubt = None
            return link
        if time.monotonic() - link.in_doubt_since > MAX_DOUBT:
            self._drop_link()  # a receipt lost for good would stall the producer for ever
            return self._ensure_link()
        self._fled.add(link.host)
        fresh = [i for i, host in enumerate(self.endpoint.hosts) if host not in self._fled]
        if fresh:
            # The link in doubt is given up only once another host took the connection
            # (review 12, D4: else a retry reconnected to it, one more copy each time).
            with contextlib.suppress(ConnectError):
                moved = self._connect(fresh)
                self._drop_link()
                self._link = moved
                return moved
        ep = self.endpoint
        msg = (
            f"{link.host} has not confirmed the previous batch (a broker that stopped reading, "
            "e.g. RabbitMQ in a resource alarm); nothing sent until it does"
        )
        raise PublishTimeout(msg, endpoint=ep.redacted())


class STOMPConsumer(_Client, Consumer):
    """SUBSCRIBE with manual acks and a bounded prefetch; pull-style :meth:`fetch`.

    stomp.py's io thread puts MESSAGE frames into a bounded internal queue (the broker's
    prefetch keeps it from filling; if it does fill, the io thread waits, which is TCP
    back-pressure). ``fetch``/``ack``/``nack`` belong to one thread. After a lost connection
    ``fetch`` reconnects and resubscribes; deliveries of the old connection are void (acks
    and nacks of them are ignored: the broker redelivers them).

    ``ack="client-individual"`` (default) acks each delivery. ``ack="client"`` acks are
    cumulative in STOMP, so an ACK is sent for the newest delivery of the longest fetched
    prefix that is entirely acked; later acks wait until the gap is filled.
    """

    endpoint: STOMPEndpoint

    def __init__(self, endpoint: str | Endpoint) -> None:
        _stomp()
        super().__init__(endpoint)
        self._queue: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=self.endpoint.prefetch + 64)
        # client (cumulative) mode: ack ids in delivery order -> acked yet?
        self._pending: dict[str, bool] = {}

    def _on_message(self, link_generation: int) -> Any:
        q = self._queue

        def put(frame: Any) -> None:
            while True:
                link = self._link
                if link is not None and link.generation != link_generation:
                    return  # a newer connection exists: this delivery is void anyway
                try:
                    q.put((link_generation, frame), timeout=0.5)
                    return
                except queue.Full:
                    if link is None or link.closed:
                        return

        return put

    def _after_connect(self, link: _Link) -> None:
        ep = self.endpoint
        headers = {
            "destination": ep.destination,
            "id": _SUBSCRIPTION_ID,
            "ack": ep.ack,
        }
        if link.broker == "activemq":
            headers["activemq.prefetchSize"] = str(ep.prefetch)
        else:
            headers["prefetch-count"] = str(ep.prefetch)
        receipt = self._new_receipt(link)
        headers["receipt"] = receipt
        self._pending.clear()
        try:
            link.write(_frame("SUBSCRIBE", headers))
            self._await_receipt(link, receipt, f"SUBSCRIBE to {ep.destination}")
        except (NotConfirmed, PublishTimeout) as exc:
            msg = f"cannot subscribe to {ep.destination}: {exc.reason}"
            raise ConnectError(msg, endpoint=ep.redacted()) from exc
        except Exception as exc:
            self._drop_link()
            msg = f"cannot subscribe to {ep.destination} on {link.host}: {_describe(exc)}"
            raise ConnectError(msg, endpoint=ep.redacted()) from exc

    def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + max(0.0, timeout)
        link = self._ensure_link()
        out: list[Delivery] = []
        while len(out) < max_messages:
            if out:
                block, wait = False, 0.0
            else:
                wait = min(0.25, deadline - time.monotonic())
                block = wait > 0
            try:
                generation, frame = self._queue.get(block, wait if block else None)
            except queue.Empty:
                if out or time.monotonic() >= deadline:
                    break
                if not link.usable:  # lost while waiting: reconnect within this fetch
                    link = self._ensure_link()
                continue
            if generation != link.generation:
                continue  # from a lost connection: void, the broker redelivers it
            out.append(self._delivery(link, frame))
        return out

    def _delivery(self, link: _Link, frame: Any) -> Delivery:
        raw: Mapping[str, str] = frame.headers
        ack_id = raw.get("ack") or raw.get("message-id", "")
        if self.endpoint.ack == "client":
            self._pending[ack_id] = False
        headers = {k: v for k, v in raw.items() if k not in _DROP_HEADERS}
        body = frame.body if isinstance(frame.body, bytes) else str(frame.body).encode()
        return Delivery(
            id=raw.get("mqlogging-id") or raw.get("message-id", ""),
            body=body,
            tag=(link.generation, ack_id),
            headers=headers,
            redelivered=raw.get("redelivered") == "true" or _REQUEUED in raw,
        )

    def _current(self, deliveries: Sequence[Delivery]) -> tuple[_Link | None, list[Delivery]]:
        link = self._link
        if link is None or not link.usable:
            return None, []
        return link, [d for d in deliveries if d.tag[0] == link.generation]

    def _settle(self, link: _Link, frames: list[tuple[str, dict[str, str]]]) -> None:
        """Write ACK/NACK frames in one go, the last with a receipt, and wait for it.

        When this returns normally the broker has processed them, so a crash of this process
        afterwards cannot cause a redelivery of those messages. If the connection fails or
        the receipt does not come within ``timeout``, the connection is dropped: the broker
        then redelivers everything that was not settled (at-least-once), nothing is raised.
        """
        if not frames:
            return
        receipt = self._new_receipt(link)
        frames[-1][1]["receipt"] = receipt
        try:
            link.write(b"".join(_frame(cmd, headers) for cmd, headers in frames))
            self._await_receipt(link, receipt, f"{len(frames)} {frames[0][0]} frame(s)")
        except (NotConfirmed, PublishTimeout):
            pass  # _await_receipt dropped the link
        except Exception:
            self._drop_link()

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge; returns once the broker confirmed it (see :meth:`_settle`)."""
        link, current = self._current(deliveries)
        if link is None or not current:
            return
        if self.endpoint.ack != "client":
            self._settle(link, [("ACK", {"id": d.tag[1]}) for d in current])
            return
        self._ack_cumulative(link, [d.tag[1] for d in current])

    def _ack_cumulative(self, link: _Link, ack_ids: Sequence[str]) -> None:
        pending = self._pending
        for ack_id in ack_ids:
            if ack_id in pending:
                pending[ack_id] = True
        upto = None
        for ack_id, done in pending.items():
            if not done:
                break
            upto = ack_id
        if upto is None:
            return
        while pending:
            ack_id = next(iter(pending))
            del pending[ack_id]
            if ack_id == upto:
                break
        self._settle(link, [("ACK", {"id": upto})])

    def nack(self, deliveries: Sequence[Delivery], *, requeue: bool = True) -> None:
        """Requeue (redelivered later) or reject (RabbitMQ: dropped or dead-lettered;
        ActiveMQ: moved to ``ActiveMQ.DLQ``); see the module docstring for the mechanics."""
        link, current = self._current(deliveries)
        if link is None or not current:
            return
        cumulative = self.endpoint.ack == "client"
        if requeue and (link.broker != "rabbitmq" or cumulative):
            self._requeue_copy(link, current)
            return
        if cumulative:  # reject in cumulative mode: NACK would cover earlier deliveries too
            self._ack_cumulative(link, [d.tag[1] for d in current])
            return
        extra = {} if requeue else {"requeue": "false"}
        self._settle(link, [("NACK", {"id": d.tag[1], **extra}) for d in current])

    def _requeue_copy(self, link: _Link, deliveries: Sequence[Delivery]) -> None:
        keep = {"mqlogging-id", "content-type", "persistent", *_PACK_HEADERS}
        copies = [Message(d.id, d.body) for d in deliveries]
        headers = [
            {
                **{k: str(v) for k, v in d.headers.items() if k in keep or k.startswith("x-")},
                _REQUEUED: "true",
            }
            for d in deliveries
        ]
        try:
            self._send_messages(link, copies, headers)
        except (NotConfirmed, PublishTimeout):
            return  # originals stay unacked: redelivered after the reconnect
        self.ack(deliveries)


# -- tap: a non-destructive live view -------------------------------------------------------

_BROWSE_INTERVAL = 0.5  # seconds between two browses of an ActiveMQ queue
_TAP_BATCH = 1000


@dataclass(frozen=True)
class _TapPlan:
    """What a :class:`STOMPTap` subscribes to on one broker, and how it says so."""

    destination: str
    mode: str
    browse: bool = False


def _tap_plan(destination: str, options: TapOptions, broker: str) -> _TapPlan:
    """Where a copy of ``destination``'s records comes from on ``broker``, or why there is none.

    Raises:
        ConfigurationError: only the collector's own subscription would see the records.
    """
    if destination.startswith(("/topic/", "/exchange/")):
        return _TapPlan(destination, f"copy of new records: own subscription to {destination}")
    if options.exchange:
        if broker != "rabbitmq":
            msg = "--exchange works on RabbitMQ only (it names an AMQP exchange)"
            raise ConfigurationError(msg)
        target = f"/exchange/{options.exchange}/{options.binding or '#'}"
        mode = (
            f"copy of new records: own subscription to {target} (the collector's queue is "
            "untouched)"
        )
        return _TapPlan(target, mode)
    if broker == "activemq" and destination.startswith("/queue/"):
        mode = (
            f"queue browser on {destination}, every {_BROWSE_INTERVAL:g}s: records the "
            "collector takes between two browses are not shown"
        )
        return _TapPlan(destination, mode, browse=True)
    msg = (
        f"cannot tap {destination} without taking records from the collector: on "
        "RabbitMQ a /queue/ is fed through the default exchange. Publish to "
        "/topic/... or /exchange/NAME/..., or if producers publish over AMQP to an "
        "exchange, add --exchange NAME (or tail amqp://HOST/?exchange=NAME)"
    )
    raise ConfigurationError(msg)


class _BrowseDiff:
    """Which messages of a repeated queue browse are new: those the previous browse did not see.

    ActiveMQ message ids survive reconnects, so the ids are kept across them. Without
    ``backlog`` the first browse only learns what is already there (shows nothing).
    """

    def __init__(self, *, backlog: bool) -> None:
        self._before: set[str] = set()
        self._now: set[str] = set()
        self._silent = not backlog
        self.next_at: float | None = None  # when the next browse is due; None while one runs

    def restart(self) -> None:
        """A new browse starts before the current one ended (after a reconnect).

        What the interrupted browse saw was shown already: it counts as seen, not as new.
        """
        self._before |= self._now
        self._now = set()
        self.next_at = None

    def take(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """The deliveries not seen before; notes the end of a browse."""
        out: list[Delivery] = []
        for delivery in deliveries:
            if delivery.headers.get("browser") == "end":
                self._before, self._now = self._now, set()
                self._silent = False
                self.next_at = time.monotonic() + _BROWSE_INTERVAL
                break
            mid = str(delivery.headers.get("message-id", delivery.id))
            new = mid not in self._before and mid not in self._now
            self._now.add(mid)
            if new and not self._silent:
                out.append(delivery)
        return out


def _bodies(delivery: Delivery) -> list[bytes]:
    """What a tap shows of a delivery: its records (several for a packed message)."""
    return unpack_bodies(delivery.body, delivery.headers, DEFAULT_MAX_UNPACKED)


class _TapConnection(STOMPConsumer):
    """The connection under a :class:`STOMPTap`: the consumer's failover, receive queue and
    reconnect-while-fetching, in ``ack:auto``, subscribing where the tap says after each
    (re)connect instead of to the endpoint's destination."""

    def __init__(self, endpoint: str | Endpoint, on_connect: Callable[[_Link], None]) -> None:
        super().__init__(endpoint)
        self.endpoint = self.endpoint.with_options(ack="auto")
        self._on_connect = on_connect
        self._subscription_ids = itertools.count(1)
        self.subscription = ""  # the id of the live SUBSCRIBE

    def _after_connect(self, link: _Link) -> None:
        self._on_connect(link)

    def connect(self) -> _Link:
        """The live connection, made (and subscribed) again if it was lost."""
        return self._ensure_link()

    def subscribe(self, link: _Link, destination: str, extra: Mapping[str, str]) -> None:
        """SUBSCRIBE to ``destination`` in ``ack:auto`` and wait for the broker's receipt."""
        sub_id = f"tail-{next(self._subscription_ids)}"
        receipt = self._new_receipt(link)
        headers = {"destination": destination, "id": sub_id, "ack": "auto", "receipt": receipt}
        failure = f"cannot subscribe to {destination} on {link.host}"
        self._write(link, _frame("SUBSCRIBE", {**headers, **extra}), failure)
        try:
            self._await_receipt(link, receipt, f"SUBSCRIBE to {destination}")
        except (NotConfirmed, PublishTimeout) as exc:
            raise ConnectError(exc.reason, endpoint=exc.endpoint) from exc
        self.subscription = sub_id

    def unsubscribe(self, link: _Link, failure: str) -> None:
        """UNSUBSCRIBE the live subscription; ``failure`` is the error message if that fails."""
        self._write(link, _frame("UNSUBSCRIBE", {"id": self.subscription}), failure)

    def _write(self, link: _Link, frame: bytes, failure: str) -> None:
        """Write ``frame``; a connection that fails is dropped and reported as ``failure``."""
        try:
            link.write(frame)
        except Exception as exc:  # OSError, stomp.py's NotConnectedException
            self._drop_link()
            raise ConnectError(failure, endpoint=self.endpoint.redacted()) from exc


class STOMPTap(Tap):
    """A copy of the records of a STOMP destination: a subscription of its own or a browser.

    On RabbitMQ, ``/topic/...`` and ``/exchange/...`` destinations are subscribed as they are
    (each subscriber gets its own copy). ``/queue/NAME`` is fed through the default exchange,
    so a copy exists only if the producers publish to an exchange: ``options.exchange``
    subscribes to ``/exchange/NAME/<binding>`` (binding ``#`` unless ``options.binding``);
    without it the tap is refused with a :class:`~mqlogging.errors.ConfigurationError` that
    says so. On ActiveMQ, ``/topic/...`` is a plain subscription (a copy) and ``/queue/...`` is
    a *queue browser* (``browser:true``) run again every half second, showing the records that
    appeared since the previous browse (with ``options.backlog`` the first browse shows what
    is waiting). Records the collector consumes between two browses are not seen, and ActiveMQ
    shows a browser at most its first ``maxBrowsePageSize`` (400) messages.

    Connects in the constructor (errors surface before anything is shown). A lost connection
    makes :meth:`poll` raise :class:`~mqlogging.errors.ConnectError`; the next :meth:`poll`
    reconnects and subscribes again. Thread-safety: one owner thread.
    """

    def __init__(self, endpoint: str | Endpoint, options: TapOptions | None = None) -> None:
        self._options = options or TapOptions()
        self._conn = _TapConnection(endpoint, self._start)
        self.endpoint = self._conn.endpoint
        self.mode = ""
        self._browser: _BrowseDiff | None = None
        try:
            self._conn.connect()
            self._learn_what_is_waiting()
        except BaseException:
            self.close()
            raise

    def _learn_what_is_waiting(self) -> None:
        """Without ``backlog``, finish the first (silent) browse before the tap is handed out.

        Otherwise a record sent right after the constructor returns could be read by that
        first browse and be taken for one that was already waiting: it would never be shown.
        """
        browser = self._browser
        if browser is None or self._options.backlog:
            return
        deadline = time.monotonic() + self.endpoint.timeout
        while browser.next_at is None and time.monotonic() < deadline:
            self.poll(min(0.1, max(0.0, deadline - time.monotonic())))

    def _start(self, link: _Link) -> None:
        """After every (re)connect: choose the subscription on this broker and make it."""
        plan = _tap_plan(self.endpoint.destination, self._options, link.broker)
        self.mode = plan.mode
        self.backlog = plan.browse and self._options.backlog
        if not plan.browse:
            self._browser = None
            self._conn.subscribe(link, plan.destination, {})
            return
        if self._browser is None:
            self._browser = _BrowseDiff(backlog=self._options.backlog)
        self._browser.restart()
        self._conn.subscribe(link, plan.destination, {"browser": "true"})

    def poll(self, timeout: float) -> list[bytes]:
        """New bodies, waiting at most ``timeout``; browses again when the next browse is due."""
        browser = self._browser
        if browser is not None and browser.next_at is not None:
            wait = browser.next_at - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, timeout))
                return []
            self._browse_again(browser)
        deliveries = self._conn.fetch(_TAP_BATCH, timeout)
        browser = self._browser  # a reconnect within fetch may have changed it
        if browser is None:
            bodies = [_bodies(d) for d in deliveries]
        else:
            bodies = [_bodies(d) for d in browser.take(deliveries)]
        return [body for group in bodies for body in group]

    def _browse_again(self, browser: _BrowseDiff) -> None:
        link = self._conn.connect()  # a reconnect starts a new browse by itself
        if browser.next_at is None:
            return
        browser.next_at = None
        destination = self.endpoint.destination
        self._conn.unsubscribe(link, f"connection lost while browsing {destination}")
        self._conn.subscribe(link, destination, {"browser": "true"})

    def close(self) -> None:
        """Close the connection (the subscription ends with it). Idempotent; never raises."""
        self._conn.close()


# -- registration ----------------------------------------------------------------------------

TRANSPORT = Transport(
    endpoint=STOMPEndpoint,
    producer=STOMPProducer,
    consumer=STOMPConsumer,
    tap=STOMPTap,
    preload=("stomp", "stomp.connect", "stomp.protocol", "stomp.transport", "stomp.utils"),
    loggers=("stomp",),
)
"""What the registry hands out for ``stomp://``, ``stomp+ssl://`` and ``stomp+tls://`` URLs."""
