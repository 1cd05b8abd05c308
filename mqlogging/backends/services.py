"""A small generic MQ API for code migrating from DIRAC's ``MQProducer``/``MQConsumer``.

Destinations are URLs or DIRAC-style addresses ``service::Queues::name`` /
``service::Topics::name``, resolved against a ``services`` mapping that describes each broker
the way DIRAC's configuration did::

    services = {
        "mardirac": {
            "type": "rabbitmq",            # rabbitmq | activemq | stomp | amqp
            "host": "mq1.example.org,mq2.example.org", "port": 61613,
            "user": "dirac", "password": "...",        # or password_file / password_env
            "vhost": "/", "ssl": False, "ca_certs": ..., "certfile": ..., "keyfile": ...,
            "Queues": {"logs": {"Acknowledgement": True, "Persistent": True}},
            "Topics": {"alerts": {}},
        }
    }
    producer = create_producer("mardirac::Queues::logs", services=services)
    producer.put({"any": "json-serialisable object"})
    consumer = create_consumer("mardirac::Queues::logs", services=services,
                               callback=lambda headers, message: ...)

Differences from DIRAC, on purpose: failures are exceptions (:mod:`mqlogging.errors`), not
``{'OK': False}`` dictionaries; ``put`` returns only once the broker confirmed the message.

Queues and topics: consumers of one queue compete (each message goes to one of them); every
subscriber of a topic gets every message published while it is subscribed. Over STOMP that is
the broker's ``/topic/`` semantics. Over AMQP a topic is a fanout exchange named after it and
each consumer binds its own exclusive, auto-delete queue to it; a ``put`` to a topic that
nobody subscribes to is returned by the broker and raises
:class:`~mqlogging.errors.NotConfirmed` (over STOMP the broker confirms and drops it; a
warning says so once when the producer is created).

Sharing and threads: every producer of one destination in a process shares one connection,
owned by one I/O thread (pika connections must stay on the thread that made them); ``put`` is
thread-safe and concurrent ``put`` calls are published together as one confirmed batch. Each
consumer runs its own thread and calls ``callback`` there. After ``fork()`` the child starts with
no shared connections: the parent's are abandoned in the child, never closed (closing would
send frames on the parent's sockets), and re-created on first use.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

from .. import _fork
from .._backoff import Backoff
from .._coerce import to_bool
from .._ids import new_id
from .._types import Delivery, Message
from ..errors import BackendError, ConfigurationError, PublishTimeout
from ..wire import read_meta
from .base import Consumer
from .endpoints import Endpoint
from .registry import open_consumer, open_producer, transport_for
from .unpacking import UnpackingConsumer

__all__ = ["MQConsumer", "MQProducer", "create_consumer", "create_producer", "resolve"]

_log = logging.getLogger("mqlogging.backends.services")

Callback = Callable[[Mapping[str, Any], Any], None]

# DIRAC's MQ types, as the URL scheme (plain TCP) of the transport that serves them
_TYPES = {"rabbitmq": "stomp", "activemq": "stomp", "stomp": "stomp", "amqp": "amqp"}
_SERVICE_KEYS = {
    "type", "mqtype", "host", "port", "user", "password", "password_file", "password_env",
    "vhost", "ssl", "ca_certs", "certfile", "keyfile", "verify", "heartbeat", "queues", "topics",
    "exchange",
}  # fmt: skip
_KINDS: dict[str, Literal["queue", "topic"]] = {"queues": "queue", "topics": "topic"}


def resolve(
    address: str | Endpoint, services: Mapping[str, Any] | None = None
) -> tuple[Endpoint, bool]:
    """Turn ``address`` into an endpoint and its ``Acknowledgement`` flag.

    URLs (and endpoints) pass through with acknowledgement on. A DIRAC address is looked up in
    ``services``; the service's ``type`` picks the transport, which says how it addresses a
    queue or a topic (:meth:`Endpoint.named_destination`).
    """
    if isinstance(address, Endpoint) or "://" in address:
        return Endpoint.from_url(address), True
    svc_name, kind, dest = _split_address(address)
    svc = _service(address, svc_name, services)
    kind_of_endpoint = _endpoint_class(svc_name, svc)
    ack, persistent = _destination_flags(address, svc, kind, dest)
    path, options = kind_of_endpoint.named_destination(
        _KINDS[kind], dest, exchange=str(svc.get("exchange", ""))
    )
    options.update(_connection_options(svc), persistent=persistent)
    scheme = kind_of_endpoint.scheme_for(tls=_wants_tls(address, svc))
    port = svc.get("port")
    hosts = ",".join(
        f"{h.strip()}:{port}" if port else h.strip() for h in str(svc["host"]).split(",")
    )
    return Endpoint.from_url(f"{scheme}://{hosts}{path}", **options), ack


def _split_address(address: str) -> tuple[str, str, str]:
    """``(service, "queues" | "topics", name)`` of ``service::Queues::name``."""
    parts = address.split("::")
    if len(parts) != 3 or parts[1].lower() not in _KINDS or not all(parts):
        msg = (
            f"MQ address {address!r} is neither a URL nor of the form "
            "'service::Queues::name' or 'service::Topics::name'"
        )
        raise ConfigurationError(msg)
    return parts[0], parts[1].lower(), parts[2]


def _service(address: str, svc_name: str, services: Mapping[str, Any] | None) -> dict[str, Any]:
    """The service's description, its keys in lower case and checked."""
    lookup = {k.lower(): v for k, v in (services or {}).items()}
    if svc_name.lower() not in lookup:
        known = ", ".join(sorted(services or {})) or "none configured"
        msg = f"MQ address {address!r}: unknown service {svc_name!r} (known: {known})"
        raise ConfigurationError(msg)
    svc = {str(k).lower(): v for k, v in lookup[svc_name.lower()].items()}
    unknown = sorted(set(svc) - _SERVICE_KEYS)
    if unknown:
        known = ", ".join(sorted(_SERVICE_KEYS))
        msg = f"MQ service {svc_name!r}: unknown key {unknown[0]!r} (known: {known})"
        raise ConfigurationError(msg)
    return svc


def _endpoint_class(svc_name: str, svc: Mapping[str, Any]) -> type[Endpoint]:
    """The endpoint class of the transport serving the service's ``type``."""
    mqtype = str(svc.get("type", svc.get("mqtype", "stomp"))).lower()
    if mqtype not in _TYPES:
        msg = f"MQ service {svc_name!r}: type {mqtype!r} is not one of {', '.join(_TYPES)}"
        raise ConfigurationError(msg)
    if "host" not in svc:
        msg = f"MQ service {svc_name!r}: no host configured"
        raise ConfigurationError(msg)
    return transport_for(_TYPES[mqtype]).endpoint


def _destination_flags(
    address: str, svc: Mapping[str, Any], kind: str, dest: str
) -> tuple[bool, bool]:
    """``(Acknowledgement, Persistent)`` of the destination (both on unless configured off)."""
    dests = {str(k): v for k, v in (svc.get(kind) or {}).items()}
    if dests and dest not in dests:
        known = ", ".join(sorted(dests))
        msg = f"MQ address {address!r}: {dest!r} is not among the service's {kind} ({known})"
        raise ConfigurationError(msg)
    opts = {str(k).lower(): v for k, v in (dests.get(dest) or {}).items()}
    ack = bool(opts.pop("acknowledgement", True))
    persistent = bool(opts.pop("persistent", True))
    if opts:
        msg = (
            f"MQ address {address!r}: unknown destination option {next(iter(opts))!r} "
            "(known: Acknowledgement, Persistent)"
        )
        raise ConfigurationError(msg)
    return ack, persistent


def _wants_tls(address: str, svc: Mapping[str, Any]) -> bool:
    """The service's ``ssl`` flag, from a bool or from text (``"false"`` is false: DIRAC's
    configuration is text)."""
    return to_bool(svc.get("ssl", False), where=address or "service", name="ssl")


def _connection_options(svc: Mapping[str, Any]) -> dict[str, Any]:
    """Credentials, heartbeat, vhost and (with ``ssl``) the TLS files, as URL options."""
    options: dict[str, Any] = {}
    for key in ("user", "password", "password_file", "password_env", "heartbeat", "vhost"):
        if key in svc:
            options["username" if key == "user" else key] = svc[key]
    if _wants_tls("", svc):
        tls_keys = ("ca_certs", "certfile", "keyfile", "verify")
        options.update({k: svc[k] for k in tls_keys if k in svc})
    return options


# -- producers -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    message: Message
    future: Future[None]


class _SharedConnection:
    """One I/O thread and one backend producer per destination, shared by every MQProducer."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.users = 0
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._closed = False
        self._producer = open_producer(endpoint)  # validates here, on the caller's thread
        if (caveat := endpoint.delivery_caveat()) is not None:
            print(f"mqlogging: warning: {caveat}", file=sys.stderr, flush=True)
        self._thread = threading.Thread(
            target=self._run, name=f"mqlogging-mq-{endpoint.redacted()}", daemon=True
        )
        self._thread.start()

    def submit(self, message: Message) -> Future[None]:
        future: Future[None] = Future()
        with self._cond:
            if self._closed:
                msg = "producer is closed"
                raise BackendError(msg, endpoint=self.endpoint.redacted())
            self._pending.append(_Pending(message, future))
            self._cond.notify()
        return future

    def close(self, timeout: float) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        producer = self._producer
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._closed:
                        self._cond.wait()
                    batch, self._pending = self._pending, []
                    if not batch and self._closed:
                        return
                try:
                    producer.publish_batch([p.message for p in batch])
                except Exception as exc:  # every waiter must hear of it, whatever it is
                    for p in batch:
                        p.future.set_exception(exc)
                else:
                    for p in batch:
                        p.future.set_result(None)
        finally:
            producer.close()


class _Registry:
    """Per-process table of shared connections; replaced wholesale in a forked child."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connections: dict[Endpoint, _SharedConnection] = {}
        self.abandoned: list[_SharedConnection] = []

    def acquire(self, endpoint: Endpoint) -> _SharedConnection:
        with self.lock:
            conn = self.connections.get(endpoint)
            if conn is None:
                conn = self.connections[endpoint] = _SharedConnection(endpoint)
            conn.users += 1
            return conn

    def release(self, conn: _SharedConnection, timeout: float) -> None:
        with self.lock:
            conn.users -= 1
            if conn.users > 0 or self.connections.get(conn.endpoint) is not conn:
                return
            del self.connections[conn.endpoint]
        conn.close(timeout)

    def after_fork_in_child(self) -> None:
        """The parent's I/O threads do not exist here; keep their objects alive so that
        nothing ever closes the parent's sockets from the child (see :mod:`mqlogging._fork`)."""
        self.lock = threading.Lock()
        self.abandoned.extend(self.connections.values())
        self.connections = {}


_registry = _Registry()
_fork.register(_registry)


class MQProducer:
    """Publishes JSON-serialisable objects to one destination; see the module docstring."""

    def __init__(self, endpoint: Endpoint, *, timeout: float | None = None) -> None:
        self.endpoint = endpoint
        hosts = max(1, len(endpoint.hosts))
        self._timeout = timeout or endpoint.connect_timeout * hosts + endpoint.timeout
        self._conn: _SharedConnection | None = _registry.acquire(endpoint)

    def put(self, obj: Any) -> str:
        """Publish ``obj`` as one JSON message and return its id once the broker confirmed it.

        Raises:
            BackendError: not confirmed (``ConnectError``, ``PublishTimeout``, ``NotConfirmed``).
            TypeError: ``obj`` is not JSON-serialisable.
        """
        if self._conn is None:
            msg = "put() on a closed producer"
            raise BackendError(msg, endpoint=self.endpoint.redacted())
        message = Message(new_id(), json.dumps(obj, separators=(",", ":")).encode())
        future = self._conn.submit(message)
        try:
            future.result(self._timeout + 1.0)
        except TimeoutError:
            msg = f"no confirmation within {self._timeout + 1.0:.1f}s"
            raise PublishTimeout(msg, endpoint=self.endpoint.redacted()) from None
        return message.id

    def close(self) -> None:
        """Release the shared connection (closed when its last producer closes). Idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            _registry.release(conn, self._timeout)

    def __enter__(self) -> MQProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MQProducer({self.endpoint.redacted()!r})"


def create_producer(
    address: str | Endpoint, *, services: Mapping[str, Any] | None = None
) -> MQProducer:
    """Return a producer for ``address`` (URL or ``service::Queues::name``)."""
    endpoint, _ = resolve(address, services)
    return MQProducer(endpoint)


# -- consumers -------------------------------------------------------------------------------


class MQConsumer:
    """Calls ``callback(headers, message)`` for every message of one destination, on its thread.

    ``message`` is the decoded JSON value, or the text when the body is not JSON. With
    acknowledgement on (the default), a message is acked after ``callback`` returns; if
    ``callback`` raises, the message is requeued (at-least-once: the callback must be idempotent)
    and the error is logged to the ``mqlogging.backends.services`` logger.
    """

    def __init__(self, endpoint: Endpoint, callback: Callback, *, acknowledge: bool = True) -> None:
        self.endpoint = endpoint
        self._callback = callback
        self._acknowledge = acknowledge
        self._stop = threading.Event()
        self._owns_thread = True  # False in a forked child: the thread is the parent's
        # Validates here, on the caller's thread; a packed message reaches the callback as
        # one call per record.
        self._consumer = UnpackingConsumer(open_consumer(endpoint))
        self._thread = threading.Thread(
            target=self._run, name=f"mqlogging-consumer-{endpoint.redacted()}", daemon=True
        )
        self._thread.start()
        _fork.register(self)

    def after_fork_in_child(self) -> None:
        """A forked child has no consuming thread of its own to join (see mqlogging._fork)."""
        self._owns_thread = False

    def _run(self) -> None:
        consumer = self._consumer
        backoff = Backoff(base=0.2, cap=10.0)
        try:
            while not self._stop.is_set():
                try:
                    deliveries = consumer.fetch(100, 0.5)
                except BackendError as exc:
                    _log.warning("consumer cannot fetch: %s", exc)
                    self._stop.wait(backoff.next_delay())
                    continue
                backoff.reset()
                if deliveries and not self._acknowledge:
                    consumer.ack(deliveries)
                for delivery in deliveries:
                    self._dispatch(consumer, delivery)
        finally:
            consumer.close()

    def _dispatch(self, consumer: Consumer, delivery: Delivery) -> None:
        try:
            message: Any = json.loads(delivery.body)
        except ValueError:
            message = delivery.body.decode("utf-8", "replace")
        try:
            self._callback(_headers_of(delivery, message), message)
        except Exception:
            _log.exception("callback failed for message %s; requeued", delivery.id)
            if self._acknowledge:
                consumer.nack([delivery], requeue=True)
            return
        if self._acknowledge:
            consumer.ack([delivery])

    def close(self, timeout: float = 5.0) -> None:
        """Stop consuming; unacked messages go back to the broker. Idempotent."""
        self._stop.set()
        if self._owns_thread:
            self._thread.join(timeout)

    def __repr__(self) -> str:
        return f"MQConsumer({self.endpoint.redacted()!r})"


_ID_HEADER = "mqlogging-id"  # where a single-record message carries its record's id


def _headers_of(delivery: Delivery, message: Any) -> dict[str, Any]:
    """The callback's headers: the delivery's, with the record's own id under ``mqlogging-id``
    when the delivery has none there (a record of a packed message: the message's id headers
    are not the record's), so a record reads the same packed or alone."""
    headers = dict(delivery.headers)
    if _ID_HEADER not in headers:
        record_id = read_meta(message).id
        if record_id:
            headers[_ID_HEADER] = record_id
    return headers


def create_consumer(
    address: str | Endpoint,
    callback: Callback,
    *,
    services: Mapping[str, Any] | None = None,
) -> MQConsumer:
    """Start consuming ``address`` and call ``callback(headers, message)`` for each message."""
    endpoint, acknowledge = resolve(address, services)
    return MQConsumer(endpoint, callback, acknowledge=acknowledge)
