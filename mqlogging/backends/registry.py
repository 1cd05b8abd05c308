"""Transports as values, chosen by URL scheme from one table (httpx's ``_transport_for_url``).

A :class:`Transport` says everything the rest of the package may know about a kind of URL: the
:class:`~mqlogging.backends.endpoints.Endpoint` subclass its URLs parse into (schemes, default
ports, options, validation, redaction), how to open a producer, a consumer and a tap (the
non-destructive live view ``mqlogging tail`` reads), what its consumer needs from a caller, and
which modules its sender imports on first use. The handler, the collector, ``tail`` and the
DIRAC-style API ask this table and never branch on scheme strings, so adding a transport is one
module plus one line at the end of this file::

    register_lazy("mqlogging.backends.kafka:TRANSPORT", ("kafka", "kafka+ssl"))

The module defines, in this order of need:

1. its :class:`~mqlogging.backends.endpoints.Endpoint` subclass (a frozen, slotted, keyword-only
   dataclass): ``transport``, ``schemes`` (scheme -> TLS flag and default port),
   ``url_options`` and ``option_types``, its own fields, and the hooks it needs (what the URL
   path means, validation, the redacted URL's tail, what identifies the destination);
2. its :class:`~mqlogging.backends.base.Producer` (and, if it has them, ``Consumer`` and
   ``Tap``), importing the client library only when a connection is made;
3. ``TRANSPORT = Transport(endpoint=..., producer=..., consumer=..., tap=..., preload=(...))``.

Built-in transports are registered lazily: their module is imported the first time one of
their schemes is used, never by ``import mqlogging`` (and the modules import their client
library, pika or stomp.py, only when a connection is made). Users and tests may
:func:`register` their own transport, e.g. an in-memory one.

The table is per process: a transport registered at run time exists in forked children, but
a ``spawn``-started child must register it again (e.g. by importing the module that does).

Thread-safety: lookups take no lock (resolving a lazy entry twice at once imports the same
module and stores the same value); :func:`register` refuses a scheme that is already taken.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ._urls import redact_url, split_scheme

if TYPE_CHECKING:
    from .base import Consumer, Producer, Tap, TapOptions
    from .endpoints import Endpoint

__all__ = [
    "ConsumerFactory",
    "ProducerFactory",
    "TapFactory",
    "Transport",
    "client_loggers",
    "lazy",
    "open_consumer",
    "open_producer",
    "open_tap",
    "register",
    "register_lazy",
    "schemes",
    "transport_for",
    "unregister",
]

ProducerFactory = Callable[["Endpoint"], "Producer"]
ConsumerFactory = Callable[["Endpoint"], "Consumer"]
TapFactory = Callable[["Endpoint", "TapOptions"], "Tap"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Transport:
    """One kind of endpoint and how to talk to it.

    Args:
        endpoint: the :class:`Endpoint` subclass this transport's URLs parse into; its
            ``transport`` names the transport and its ``schemes`` are the URL schemes served.
        producer: builds a (not yet connected) :class:`Producer` for an endpoint of this kind.
        consumer: likewise a :class:`Consumer`; ``None`` if the transport cannot be consumed
            (then the collector cannot read from it).
        tap: builds a connected :class:`Tap` (``mqlogging tail``); ``None`` if there is no way
            to watch records without taking them from their consumer.
        fetch_when_full: a consumer that holds all it may must still be called
            (``fetch(0, timeout)``): fetching is what services its connection (AMQP
            heartbeats; a Kafka member that is not polled leaves its group), and it takes
            nothing then (the broker's prefetch stops deliveries at the bound; Kafka pauses
            its partitions). When false, a full caller just waits.
        preload: modules the producer imports on its first connection (the client library,
            and the module of a :func:`lazy` producer). The handler imports them on the thread
            that configures it, so that a sender thread never runs an import a ``fork()`` could
            catch half done.
        loggers: the root names of the loggers its client library writes to (``"pika"``). A
            handler sending over this transport ignores their records, which would loop back
            into it, and makes their ``isEnabledFor`` lock-free for its sender thread.
    """

    endpoint: type[Endpoint]
    producer: ProducerFactory | None = None
    consumer: ConsumerFactory | None = None
    tap: TapFactory | None = None
    fetch_when_full: bool = False
    preload: tuple[str, ...] = ()
    loggers: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The transport's name, as in ``Endpoint.transport`` (``"amqp"``...)."""
        return self.endpoint.transport

    @property
    def schemes(self) -> tuple[str, ...]:
        """The URL schemes this transport serves."""
        return tuple(self.endpoint.schemes)

    def open_producer(self, endpoint: Endpoint) -> Producer:
        """A producer for ``endpoint``; refuses a transport that has none."""
        if self.producer is None:
            raise self._missing(endpoint, "cannot be published to (no producer)")
        return self.producer(endpoint)

    def open_consumer(self, endpoint: Endpoint) -> Consumer:
        """A consumer for ``endpoint``; refuses a transport that has none."""
        if self.consumer is None:
            raise self._missing(endpoint, "cannot be consumed (no consumer)")
        return self.consumer(endpoint)

    def open_tap(self, endpoint: Endpoint, options: TapOptions) -> Tap:
        """A connected tap on ``endpoint``; refuses a transport that has none."""
        if self.tap is None:
            raise self._missing(endpoint, "offers no live view of its records (no tap)")
        return self.tap(endpoint, options)

    def _missing(self, endpoint: Endpoint, what: str) -> ConfigurationError:
        return ConfigurationError(f"{endpoint.redacted()}: the {self.name} transport {what}")


# scheme -> its transport, or the "module:attribute" of a transport not imported yet
_TABLE: dict[str, Transport | str] = {}
_LAZY_SCHEMES: dict[str, tuple[str, ...]] = {}  # "module:attribute" -> the schemes it serves


def register(transport: Transport) -> Transport:
    """Make ``transport`` serve its endpoint class's schemes; returns it.

    Raises:
        ConfigurationError: one of the schemes is already registered.
    """
    _claim(transport.schemes, transport)
    return transport


def register_lazy(target: str, schemes: Iterable[str]) -> None:
    """Register the transport at ``target`` (``"package.module:NAME"``) for ``schemes``.

    The module is imported when one of the schemes is first used; its transport must then
    serve exactly these schemes.

    Raises:
        ConfigurationError: one of the schemes is already registered.
    """
    names = tuple(s.lower() for s in schemes)
    _claim(names, target)
    _LAZY_SCHEMES[target] = names


def unregister(transport: Transport | str) -> None:
    """Forget ``transport`` (a value, or the ``"module:NAME"`` it was registered lazily as,
    imported since or not); unknown ones are ignored."""
    if isinstance(transport, str):
        doomed = set(_LAZY_SCHEMES.pop(transport, ()))
    else:
        doomed = {scheme for scheme, entry in _TABLE.items() if entry is transport}
        for target, names in list(_LAZY_SCHEMES.items()):
            if doomed.issuperset(names):
                del _LAZY_SCHEMES[target]
    for scheme in doomed:
        _TABLE.pop(scheme, None)


def client_loggers() -> frozenset[str]:
    """The client-library loggers of every registered transport (``Transport.loggers``).

    Resolves the lazy entries (their modules do not import the client libraries), so call it
    when configuring, not per record.
    """
    return frozenset(name for scheme in list(_TABLE) for name in transport_for(scheme).loggers)


def schemes() -> list[str]:
    """Every registered URL scheme, in registration order."""
    return list(_TABLE)


def transport_for(where: str | Endpoint) -> Transport:
    """The transport of a URL (``"amqp://h/"``), a scheme (``"amqps"``) or an endpoint.

    Raises:
        ConfigurationError: the scheme is not registered (the message lists those that are),
            or a string is neither a URL nor a scheme.
    """
    if not isinstance(where, str):
        return _resolve(where.scheme, where.redacted())
    if "://" in where:
        scheme, _ = split_scheme(where)
        return _resolve(scheme, redact_url(where))
    return _resolve(where.lower(), None)


def open_producer(endpoint: str | Endpoint, **options: Any) -> Producer:
    """Return the :class:`Producer` for ``endpoint`` (not yet connected).

    ``options`` override the URL's query parameters of the same name.
    """
    ep = _endpoint(endpoint, options)
    return transport_for(ep).open_producer(ep)


def open_consumer(endpoint: str | Endpoint, **options: Any) -> Consumer:
    """Return the :class:`Consumer` for ``endpoint`` (not yet connected)."""
    ep = _endpoint(endpoint, options)
    return transport_for(ep).open_consumer(ep)


def open_tap(endpoint: str | Endpoint, options: TapOptions) -> Tap:
    """Open a :class:`Tap` on ``endpoint``: connected, so errors surface now.

    Raises:
        ConfigurationError: the transport has no tap, or the endpoint cannot be tapped.
        ConnectError: the broker cannot be reached.
    """
    ep = _endpoint(endpoint, {})
    return transport_for(ep).open_tap(ep, options)


def lazy(target: str) -> Callable[..., Any]:
    """A factory that imports ``"package.module:NAME"`` on its first call and calls that.

    For a transport's factories that live in a module it should not import yet (or one added
    later): ``tap=lazy("mqlogging.backends.amqp:AMQPTap")``.
    """

    def factory(*args: Any) -> Any:
        return _load(target)(*args)

    factory.__qualname__ = f"lazy({target!r})"
    return factory


# -- internals ---------------------------------------------------------------------------------


def _endpoint(endpoint: str | Endpoint, options: dict[str, Any]) -> Endpoint:
    """Parse a URL with the endpoint class of its transport (which validates it)."""
    if isinstance(endpoint, str):
        return transport_for(endpoint).endpoint.from_url(endpoint, **options)
    return endpoint.with_options(**options) if options else endpoint


def _resolve(scheme: str, where: str | None) -> Transport:
    entry = _TABLE.get(scheme)
    if entry is None:
        known = ", ".join(_TABLE)
        place = f" in {where}" if where else ""
        msg = f"unknown URL scheme {scheme!r}{place} (known: {known})"
        raise ConfigurationError(msg)
    if isinstance(entry, Transport):
        return entry
    transport = _load(entry)
    if not isinstance(transport, Transport):
        msg = f"{entry} is not a mqlogging.backends.registry.Transport"
        raise ConfigurationError(msg)
    expected = _LAZY_SCHEMES.get(entry, ())
    if set(transport.schemes) != set(expected):
        msg = (
            f"{entry} serves schemes {', '.join(transport.schemes)} but was registered for "
            f"{', '.join(expected)}; make the two agree"
        )
        raise ConfigurationError(msg)
    for name in expected:
        _TABLE[name] = transport
    return transport


def _claim(names: tuple[str, ...], entry: Transport | str) -> None:
    """Take every scheme of ``names`` for ``entry``, or none of them."""
    taken: list[str] = []
    for name in names:
        # Checked first: registering the same transport twice is a mistake too.
        if name in _TABLE or _TABLE.setdefault(name, entry) is not entry:
            for done in taken:
                del _TABLE[done]
            owner = _TABLE.get(name, entry)
            by = owner.name if isinstance(owner, Transport) else owner
            msg = f"URL scheme {name!r} is already registered (by {by}); unregister it first"
            raise ConfigurationError(msg)
        taken.append(name)


def _load(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        msg = f"{module_name} has no {attribute!r} (registered as {target})"
        raise ConfigurationError(msg) from None


# -- the built-in transports: one line each ------------------------------------------------------

register_lazy("mqlogging.backends.amqp:TRANSPORT", ("amqp", "amqps"))
register_lazy("mqlogging.backends.stomp:TRANSPORT", ("stomp", "stomp+ssl", "stomp+tls"))
register_lazy("mqlogging.backends.local:TRANSPORT", ("local",))
register_lazy(
    "mqlogging.backends.elasticsearch:TRANSPORT", ("elasticsearch+http", "elasticsearch+https")
)
register_lazy("mqlogging.backends.https:TRANSPORT", ("https", "http"))
register_lazy("mqlogging.backends.kafka:TRANSPORT", ("kafka", "kafka+ssl"))
