"""Endpoint URLs: parsing, validation and redaction.

One URL names one logical destination, possibly served by several hosts::

    amqp://user:pass@h1:5672,h2,h3/vhost?exchange=logs&routing_key=app.logs
    amqps://h1/?ca_certs=/etc/ca.pem&certfile=/etc/me.pem&keyfile=/etc/me.key
    stomp://user:pass@host:61613/queue/logs        stomp+ssl://...   (/topic/... for topics)
    local:///var/spool/myapp

Everything is validated here, once, at construction: a typo in an option, a missing certificate
or a port out of range is a :class:`~mqlogging.errors.ConfigurationError` with one line that says
what to fix, long before the first record is sent. The password never appears in ``repr``,
``str`` or :meth:`Endpoint.redacted`; :meth:`Secret.reveal` is the one way to read it.
"""

from __future__ import annotations

import difflib
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from ..errors import ConfigurationError

__all__ = ["Endpoint", "Host", "Secret", "TLSConfig"]

_SCHEMES: dict[str, tuple[str, bool, int]] = {
    # url scheme: (transport, tls, default port)
    "amqp": ("amqp", False, 5672),
    "amqps": ("amqp", True, 5671),
    "stomp": ("stomp", False, 61613),
    "stomp+ssl": ("stomp", True, 61614),
    "stomp+tls": ("stomp", True, 61614),
    "local": ("local", False, 0),
}

_COMMON = {
    "connect_timeout", "timeout", "heartbeat", "prefetch", "username", "password",
    "password_file", "password_env", "ca_certs", "certfile", "keyfile", "verify",
    "server_hostname",
}  # fmt: skip
_KNOWN: dict[str, set[str]] = {
    "amqp": _COMMON
    | {
        "exchange",
        "exchange_type",
        "routing_key",
        "queue",
        "binding_key",
        "queue_type",
        "dead_letter_exchange",
        "declare",
        "vhost",
        "persistent",
    },
    "stomp": _COMMON | {"vhost", "ack", "persistent", "destination"},
    "local": {"segment_bytes", "segment_age", "max_bytes", "max_age", "fsync", "overflow"},
}


class Secret:
    """A string that never shows itself in ``repr`` or ``str`` (like httpx's ``[secure]``)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret. Call it only where the value goes to the broker."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Host:
    """One ``host:port`` of an endpoint."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSConfig:
    """TLS settings. Verification and hostname checking are on unless ``verify=False``."""

    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    verify: bool = True
    server_hostname: str | None = None

    def __post_init__(self) -> None:
        for name in ("ca_certs", "certfile", "keyfile"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                msg = f"TLS option {name}={path!r}: no such file; give the path to a PEM file"
                raise ConfigurationError(msg)
        if self.keyfile and not self.certfile:
            msg = "TLS option keyfile is set without certfile; give both for client certificates"
            raise ConfigurationError(msg)

    def ssl_context(self) -> ssl.SSLContext:
        """Build the client-side context; certificate problems surface here, at startup."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_certs)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.certfile:
            try:
                ctx.load_cert_chain(self.certfile, self.keyfile)
            except (ssl.SSLError, OSError) as exc:
                msg = (
                    f"cannot load client certificate {self.certfile!r}"
                    f"{f' with key {self.keyfile!r}' if self.keyfile else ''}: {exc}; "
                    "check that the files are PEM and that the key matches the certificate"
                )
                raise ConfigurationError(msg) from exc
        return ctx


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """A validated broker (or spool) address. Build it with :meth:`from_url`.

    ``transport`` is ``"amqp"``, ``"stomp"`` or ``"local"``; ``tls`` is ``None`` for plain TCP.
    AMQP: the producer publishes to ``exchange`` with ``routing_key``; unless ``declare`` is off it
    declares the exchange, the durable ``queue`` and its binding (``binding_key``), so records
    published before any collector runs are kept, not returned as unroutable. STOMP:
    ``destination`` is the path (``/queue/logs``, ``/topic/logs``, ``/amq/queue/logs``...).
    """

    transport: str
    hosts: tuple[Host, ...] = ()
    tls: TLSConfig | None = None
    username: str | None = None
    password: Secret | None = field(default=None, compare=False)
    vhost: str = "/"
    connect_timeout: float = 5.0
    timeout: float = 10.0
    heartbeat: int = 30
    prefetch: int = 1000
    persistent: bool = True
    # AMQP
    exchange: str = "logs"
    exchange_type: str = "topic"
    routing_key: str = "logs"
    queue: str = "logs"
    binding_key: str = "#"
    queue_type: str = "classic"
    dead_letter_exchange: str | None = None
    declare: bool = True
    # STOMP
    destination: str = "/queue/logs"
    ack: str = "client-individual"
    # local
    path: str = ""
    spool_options: Mapping[str, Any] = field(default_factory=dict, compare=False)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str | Endpoint, **options: Any) -> Endpoint:
        """Parse ``url``; keyword ``options`` override query parameters of the same name."""
        if isinstance(url, Endpoint):
            return url.with_options(**options) if options else url
        if not isinstance(url, str) or "://" not in url:
            msg = (
                f"endpoint {url!r} is not a URL; expected e.g. amqp://host/, "
                "stomp://host:61613/queue/logs or local:///var/spool/app"
            )
            raise ConfigurationError(msg)
        scheme, rest = url.split("://", 1)
        scheme = scheme.lower()
        if scheme not in _SCHEMES:
            known = ", ".join(_SCHEMES)
            msg = f"unknown URL scheme {scheme!r} in {_redact_url(url)} (known: {known})"
            raise ConfigurationError(msg)
        transport, tls, default_port = _SCHEMES[scheme]
        parts = urlsplit(f"x://{rest}")
        netloc, _, _ = rest.partition("/")
        netloc = netloc.split("?", 1)[0]
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        query.update({k: v for k, v in options.items() if v is not None})
        where = _redact_url(url)
        _check_known(transport, query, where)

        kwargs: dict[str, Any] = {"transport": transport}
        userinfo, _, hostlist = netloc.rpartition("@")
        if transport == "local":
            if hostlist or userinfo:
                msg = f"{where}: local URLs have no host; write local:///absolute/path"
                raise ConfigurationError(msg)
            if not parts.path or parts.path == "/":
                msg = f"{where}: give the spool directory, e.g. local:///var/spool/myapp"
                raise ConfigurationError(msg)
            kwargs["path"] = unquote(parts.path)
            kwargs["spool_options"] = dict(query)
            return cls(**kwargs)

        kwargs["hosts"] = _parse_hosts(hostlist, default_port, where)
        if userinfo:
            user, sep, password = userinfo.partition(":")
            kwargs["username"] = unquote(user)
            if sep:
                kwargs["password"] = Secret(unquote(password))
        path = unquote(parts.path)
        if transport == "amqp":
            vhost = path[1:] if path.startswith("/") else path
            kwargs["vhost"] = vhost or "/"
        elif path and path != "/":
            kwargs["destination"] = path
        kwargs.update(_coerce_options(query, where))
        password_sources = [k for k in ("password", "password_file", "password_env") if k in query]
        if len(password_sources) > 1:
            msg = f"{where}: give only one of {', '.join(password_sources)}"
            raise ConfigurationError(msg)
        tls_keys = {k: kwargs.pop(k) for k in ("ca_certs", "certfile", "keyfile", "verify",
                                                 "server_hostname") if k in kwargs}  # fmt: skip
        if tls:
            try:
                kwargs["tls"] = TLSConfig(**tls_keys)
            except ConfigurationError as exc:
                msg = f"{where}: {exc}"
                raise ConfigurationError(msg) from None
        elif tls_keys:
            msg = (
                f"{where}: TLS options ({', '.join(tls_keys)}) given for a plain-TCP URL; "
                f"use {'amqps' if transport == 'amqp' else 'stomp+ssl'}:// to enable TLS"
            )
            raise ConfigurationError(msg)
        if transport == "amqp" and kwargs.get("exchange") == "":
            _route_through_default_exchange(kwargs, where)
        return cls(**kwargs)

    def __post_init__(self) -> None:
        where = self.redacted()
        if self.transport not in ("amqp", "stomp", "local"):
            msg = f"unknown transport {self.transport!r}"
            raise ConfigurationError(msg)
        if self.transport != "local" and not self.hosts:
            msg = f"{where}: no host given"
            raise ConfigurationError(msg)
        for name in ("connect_timeout", "timeout"):
            if getattr(self, name) <= 0:
                msg = f"{where}: {name} must be a positive number of seconds"
                raise ConfigurationError(msg)
        if self.heartbeat < 0 or self.prefetch < 1:
            msg = f"{where}: heartbeat must be >= 0 and prefetch >= 1"
            raise ConfigurationError(msg)
        if self.queue_type not in ("classic", "quorum"):
            msg = f"{where}: queue_type must be 'classic' or 'quorum', not {self.queue_type!r}"
            raise ConfigurationError(msg)
        if self.exchange_type not in ("topic", "direct", "fanout", "headers"):
            msg = f"{where}: exchange_type {self.exchange_type!r} is not an AMQP exchange type"
            raise ConfigurationError(msg)
        if self.ack not in ("client-individual", "client", "auto"):
            msg = f"{where}: ack must be 'client-individual' or 'client', not {self.ack!r}"
            raise ConfigurationError(msg)
        if self.transport == "stomp" and not self.destination.startswith("/"):
            msg = f"{where}: STOMP destination must start with '/', e.g. /queue/logs"
            raise ConfigurationError(msg)
        if self.transport == "amqp" and not self.exchange and self.routing_key != self.queue:
            # The default exchange delivers to the queue named by the routing key: any other
            # combination would publish somewhere the configuration does not say (issue #11).
            msg = (
                f"{where}: with the default exchange (exchange=) the routing key is the queue "
                f"name, but routing_key={self.routing_key!r} and queue={self.queue!r}; "
                "give only one of them"
            )
            raise ConfigurationError(msg)

    def with_options(self, **options: Any) -> Endpoint:
        """A copy with some fields replaced (validated again)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(options) - known)
        if unknown:
            msg = f"{self.redacted()}: unknown option {unknown[0]!r}"
            raise ConfigurationError(msg)
        return replace(self, **options)

    # -- presentation -------------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        if self.transport == "local":
            return "local"
        if self.tls is None:
            return self.transport
        return "amqps" if self.transport == "amqp" else "stomp+ssl"

    def redacted(self) -> str:
        """The URL with the password masked: safe for logs, errors, metrics labels and the CLI."""
        if self.transport == "local":
            return f"local://{quote(self.path)}"
        user = ""
        if self.username is not None:
            user = quote(self.username, safe="") + (":***" if self.password else "") + "@"
        hosts = ",".join(str(h) for h in self.hosts)
        if self.transport == "amqp":
            vhost = "" if self.vhost == "/" else quote(self.vhost, safe="")
            tail = f"/{vhost}?exchange={self.exchange}&routing_key={self.routing_key}"
        else:
            tail = self.destination
        return f"{self.scheme}://{user}{hosts}{tail}"

    def destination_key(self) -> str:
        """A stable, secret-free string naming where this endpoint's records go.

        Endpoints with the same key deliver to the same place. Different keys are treated as
        different destinations (the key is textual: ``localhost`` and ``127.0.0.1`` differ).
        The handler uses it to refuse an endpoint listed twice and to name the default spool
        directory, so a spool is only replayed to its own destination; it must therefore stay
        the same across runs and releases: changing what it covers moves default spools.

        Covered (each changes where a record ends up): the transport and TLS (``scheme``), the
        hosts in URL order (names compared without case, never resolved), the vhost and, for
        AMQP, ``exchange``, ``routing_key``, ``queue`` and ``binding_key``; for STOMP the
        ``destination``; for ``local`` the directory.
        Not covered (they change how records travel, not where): user name and password (a
        secret must never reach a directory name), timeouts, heartbeat, prefetch, TLS file
        paths, ``persistent``, ``declare``, and the *kind* of exchange or queue
        (``exchange_type``, ``queue_type``, ``dead_letter_exchange``): the broker refuses a
        second declaration of the same name with other settings, so these never make two
        distinct destinations.
        """
        if self.transport == "local":
            return f"local://{quote(os.path.normpath(self.path))}"
        hosts = ",".join(str(h).lower() for h in self.hosts)  # DNS names ignore case
        parts = {"vhost": self.vhost}
        if self.transport == "amqp":
            parts.update(
                exchange=self.exchange,
                routing_key=self.routing_key,
                queue=self.queue,
                binding_key=self.binding_key,
            )
        else:
            parts["destination"] = self.destination
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in parts.items())
        return f"{self.scheme}://{hosts}/?{query}"

    def delivery_caveat(self) -> str | None:
        """One line saying how this destination can drop records by design, or ``None``.

        Publishing code prints it once at configuration time (issue #11, defect 14). It is a
        warning, not an error: a topic is a legitimate choice for live views, and refusing it
        would override the user. Only STOMP needs it: the broker confirms a SEND to a topic
        nobody subscribes to, or to an exchange no queue is bound to, and then drops it. AMQP
        producers publish with ``mandatory``, so an unroutable record comes back and is
        retried or spooled, never confirmed and dropped.
        """
        if self.transport != "stomp":
            return None
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

    def __repr__(self) -> str:
        return f"Endpoint({self.redacted()!r})"

    __str__ = redacted

    def credentials(self) -> tuple[str, str] | None:
        """``(username, password)`` for the broker, or ``None`` when none were configured."""
        if self.username is None:
            return None
        return self.username, self.password.reveal() if self.password else ""


# -- helpers ---------------------------------------------------------------------------------


def _redact_url(url: str) -> str:
    """Mask the password of a raw URL string, for error messages before parsing succeeded."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    tail = "&".join(
        f"{k}=***" if k.lower() == "password" else f"{k}={v}"
        for k, v in parse_qsl(tail.partition("?")[2], keep_blank_values=True)
    )
    path = rest.partition("/")[2].partition("?")[0]
    return f"{scheme}{sep}{userinfo}{at}{hosts}{slash}{path}{'?' + tail if tail else ''}"


def _route_through_default_exchange(kwargs: dict[str, Any], where: str) -> None:
    """Make ``routing_key`` and ``queue`` agree for ``exchange=`` (the default exchange).

    The default exchange delivers to the queue named by the routing key, so whichever of the
    two the user gave names the queue and the other follows it. Both given and different, an
    empty queue, or a ``binding_key`` (the default exchange takes no bindings) are refused:
    honouring one would silently override the other (issue #11, defect 13).
    """
    routing_key, queue = kwargs.get("routing_key"), kwargs.get("queue")
    if "binding_key" in kwargs:
        msg = (
            f"{where}: binding_key has no effect with the default exchange (exchange=); "
            "drop it or name an exchange"
        )
        raise ConfigurationError(msg)
    if routing_key is not None and queue is not None and routing_key != queue:
        msg = (
            f"{where}: with the default exchange (exchange=) the routing key is the queue name, "
            f"but routing_key={routing_key!r} and queue={queue!r}; give only one of them"
        )
        raise ConfigurationError(msg)
    name = queue if queue is not None else routing_key
    if name == "":
        msg = f"{where}: with the default exchange (exchange=) give the queue, e.g. queue=logs"
        raise ConfigurationError(msg)
    if name is not None:
        kwargs["routing_key"] = kwargs["queue"] = name


def _check_known(transport: str, query: Mapping[str, Any], where: str) -> None:
    known = _KNOWN[transport]
    for key in query:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            did = f"did you mean {hint[0]!r}? " if hint else ""
            msg = f"unknown option {key!r} for {where} ({did}known: {', '.join(sorted(known))})"
            raise ConfigurationError(msg)


def _parse_hosts(hostlist: str, default_port: int, where: str) -> tuple[Host, ...]:
    hosts: list[Host] = []
    for item in filter(None, hostlist.split(",")):
        if item.startswith("["):
            host, _, port_s = item[1:].partition("]")
            port_s = port_s.lstrip(":")
        else:
            host, _, port_s = item.partition(":")
        try:
            port = int(port_s) if port_s else default_port
        except ValueError:
            port = -1
        if not 0 < port < 65536:
            msg = f"{where}: port {port_s!r} of host {host!r} is not a number from 1 to 65535"
            raise ConfigurationError(msg)
        if not host:
            msg = f"{where}: empty host name in the host list"
            raise ConfigurationError(msg)
        hosts.append(Host(host, port))
    if not hosts:
        scheme = where.split("://", maxsplit=1)[0]
        msg = f"{where}: no host given; write e.g. {scheme}://broker.example.org/"
        raise ConfigurationError(msg)
    return tuple(hosts)


_FLOATS = {"connect_timeout", "timeout"}
_INTS = {"heartbeat", "prefetch"}
_BOOLS = {"verify", "declare", "persistent"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce_options(query: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in query.items():
        try:
            if key in _FLOATS:
                out[key] = float(value)
            elif key in _INTS:
                out[key] = int(value)
            elif key in _BOOLS:
                out[key] = _to_bool(value)
            elif key == "password":
                out[key] = value if isinstance(value, Secret) else Secret(str(value))
            elif key == "password_file":
                out["password"] = Secret(_read_secret_file(str(value), where))
            elif key == "password_env":
                if str(value) not in os.environ:
                    msg = f"{where}: password_env={value!r} but that variable is not set"
                    raise ConfigurationError(msg)
                out["password"] = Secret(os.environ[str(value)])
            elif key == "dead_letter_exchange":
                out[key] = str(value) or None
            else:
                out[key] = value if isinstance(value, bool) else str(value)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigurationError):
                raise
            msg = f"{where}: option {key}={value!r} is not valid ({exc})"
            raise ConfigurationError(msg) from None
    return out


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    msg = f"expected true or false, got {value!r}"
    raise ValueError(msg)


def _read_secret_file(path: str, where: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        msg = f"{where}: cannot read password_file {path!r}: {exc.strerror}"
        raise ConfigurationError(msg) from None
