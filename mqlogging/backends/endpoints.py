"""Endpoint URLs: parsing, validation and redaction, common to every transport.

One URL names one logical destination, possibly served by several hosts::

    amqp://user:pass@h1:5672,h2,h3/vhost?exchange=logs&routing_key=app.logs
    amqps://h1/?ca_certs=/etc/ca.pem&certfile=/etc/me.pem&keyfile=/etc/me.key
    stomp://user:pass@host:61613/queue/logs        stomp+ssl://...   (/topic/... for topics)
    local:///var/spool/myapp

:meth:`Endpoint.from_url` is the one entry point: it picks the transport by scheme through
:mod:`mqlogging.backends.registry` and parses into that transport's :class:`Endpoint` subclass
(``AMQPEndpoint``, ``STOMPEndpoint``, ``LocalEndpoint``, each in its transport's module). This
module holds what every network endpoint shares (hosts, credentials, TLS, timeouts, heartbeat,
prefetch, the option rules) and the hooks a subclass fills in: its schemes and options, what the
URL path means, its own validation, the tail of its redacted URL, what identifies its
destination, and its delivery caveat.

Everything is validated here, once, at construction: a typo in an option, a missing certificate
or a port out of range is a :class:`~mqlogging.errors.ConfigurationError` with one line that says
what to fix, long before the first record is sent. The password never appears in ``repr``,
``str`` or :meth:`Endpoint.redacted`; :meth:`Secret.reveal` is the one way to read it.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from .._coerce import (
    check_pem_file,
    choose,
    did_you_mean,
    port_number,
    to_bool,
    to_number,
    to_size,
)
from ..errors import ConfigurationError
from ..packing import DEFAULT_PACK_BYTES, ENCODINGS, MAX_PACK_BYTES, PackOptions
from ._urls import redact_url, split_scheme
from .registry import transport_for

__all__ = [
    "COMMON_OPTIONS",
    "COMMON_TYPES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "PACK_OPTIONS",
    "PACK_TYPES",
    "Coercer",
    "Endpoint",
    "Host",
    "Scheme",
    "Secret",
    "TLSConfig",
    "URLParts",
    "optional_text",
    "parse_hosts",
    "read_secret",
    "text",
]

_E = TypeVar("_E", bound="Endpoint")


class Coercer(Protocol):
    """Turns an option value into a field value, or raises a one-line ConfigurationError
    naming ``where`` and the option ``name`` (the signature of :mod:`mqlogging._coerce`)."""

    def __call__(self, value: Any, *, where: str, name: str) -> Any: ...


COMMON_OPTIONS: frozenset[str] = frozenset({
    "connect_timeout", "timeout", "heartbeat", "prefetch", "username", "password",
    "password_file", "password_env", "ca_certs", "certfile", "keyfile", "verify",
    "server_hostname",
})  # fmt: skip
"""The URL options every network endpoint takes (a transport adds its own)."""

_TLS_KEYS = ("ca_certs", "certfile", "keyfile", "verify", "server_hostname")
_PASSWORD_KEYS = ("password", "password_file", "password_env")


def text(value: Any, *, where: str, name: str) -> Any:
    """An option taken as text (a boolean passes as it is)."""
    return value if isinstance(value, bool) else str(value)


def optional_text(value: Any, *, where: str, name: str) -> str | None:
    """An option taken as text, where empty means "none"."""
    return str(value) or None


def _integer(value: Any, *, where: str, name: str) -> int:
    result: int = to_number(value, where=where, name=name, integer=True)
    return result


COMMON_TYPES: Mapping[str, Coercer] = {
    "connect_timeout": to_number,
    "timeout": to_number,
    "heartbeat": _integer,
    "prefetch": _integer,
    "verify": to_bool,
    "persistent": to_bool,
}
"""How the common options are read; any option not listed is taken as :func:`text`."""


def _pack_count(value: Any, *, where: str, name: str) -> int:
    result: int = to_number(value, where=where, name=name, integer=True, minimum=1)
    return result


def _encoding(value: Any, *, where: str, name: str) -> str:
    return choose(str(value).lower(), ENCODINGS, where=where, name=name)


PACK_OPTIONS: frozenset[str] = frozenset({"pack", "pack_bytes", "compress", "max_message_bytes"})
"""The packed-message options (issue #13) and the message size limit, for transports whose
producer publishes message bodies (AMQP, STOMP): add them to ``url_options`` and
:data:`PACK_TYPES` to ``option_types``."""

PACK_TYPES: Mapping[str, Coercer] = {
    "pack": _pack_count,
    "pack_bytes": to_size,
    "compress": _encoding,
    "max_message_bytes": to_size,
}
"""How the packed-message options are read."""

DEFAULT_MAX_MESSAGE_BYTES: int = 16 * 1024 * 1024
"""The broker's message size limit the AMQP and STOMP producers assume without
``max_message_bytes=``: RabbitMQ 4's default ``max_message_size`` (3.x: 128 MiB; ActiveMQ's
STOMP frames: larger), so a record above it is refused before it is sent."""
MIN_MAX_MESSAGE_BYTES: int = 1024


@dataclass(frozen=True, slots=True)
class Scheme:
    """One URL scheme of a transport: whether it means TLS, and the port a host without one
    gets (unused by transports whose URLs name no host)."""

    tls: bool = False
    default_port: int = 0


@dataclass(frozen=True, slots=True)
class URLParts:
    """A URL split once, for the endpoint class of its transport (:meth:`Endpoint.from_parts`).

    ``query`` holds the query parameters with the keyword options applied over them; ``where``
    is the URL with its password masked, for error messages.
    """

    scheme: str
    tls: bool
    default_port: int
    userinfo: str
    hostlist: str
    path: str
    query: dict[str, Any]
    where: str

    @classmethod
    def split(cls, url: str, scheme: Scheme, options: Mapping[str, Any]) -> URLParts:
        """Split ``url`` (whose scheme is ``scheme``); ``options`` win over the query."""
        name, rest = split_scheme(url)
        try:
            parts = urlsplit(f"x://{rest}")
        except ValueError as exc:  # an unclosed "[" of an IPv6 address
            msg = f"{redact_url(url)}: not a valid URL ({exc})"
            raise ConfigurationError(msg) from None
        netloc = rest.partition("/")[0].split("?", 1)[0]
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = dict(pairs)
        if len(query) < len(pairs):  # ?pack=5&pack=6: which one was meant is unknowable
            twice = sorted({k for k, _ in pairs if sum(1 for j, _ in pairs if j == k) > 1})
            msg = f"{redact_url(url)}: option {', '.join(map(repr, twice))} given more than once"
            raise ConfigurationError(msg + "; keep one")
        query.update({k: v for k, v in options.items() if v is not None})
        userinfo, _, hostlist = netloc.rpartition("@")
        return cls(
            scheme=name,
            tls=scheme.tls,
            default_port=scheme.default_port,
            userinfo=userinfo,
            hostlist=hostlist,
            path=unquote(parts.path),
            query=query,
            where=redact_url(url),
        )


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
            check_pem_file(getattr(self, name), where="", name=f"TLS option {name}")
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

    ``transport`` names the transport (``"amqp"``, ``"stomp"``, ``"local"``...); ``tls`` is
    ``None`` for plain TCP. The fields here are common to every transport; each transport's
    subclass adds its own (``exchange``, ``destination``, ``path``...), see its module.

    For transport modules, a subclass is a frozen, slotted, keyword-only dataclass that sets
    the class variables ``transport``, ``schemes``, ``url_options`` (and ``option_types`` for
    options that are not text) and overrides the hooks it needs: :meth:`path_fields`,
    :meth:`reconcile`, :meth:`validate`, :meth:`redacted_path`, :meth:`destination_parts`,
    :meth:`delivery_caveat`, :meth:`named_destination` (or :meth:`from_parts` entirely, for
    URLs that are not ``scheme://user:password@hosts/path?query``). It keeps this class's
    ``repr`` (the redacted URL) whatever its decorator says.
    """

    transport: ClassVar[str] = ""
    schemes: ClassVar[Mapping[str, Scheme]] = {}
    url_options: ClassVar[frozenset[str]] = COMMON_OPTIONS
    option_types: ClassVar[Mapping[str, Coercer]] = COMMON_TYPES
    needs_hosts: ClassVar[bool] = True
    #: The broker's message size limit assumed without ``max_message_bytes=`` (transports
    #: whose producer publishes message bodies); ``None``: this option means nothing here.
    default_max_message_bytes: ClassVar[int | None] = None

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
    pack: int | None = None
    pack_bytes: int | None = None
    compress: str | None = None
    max_message_bytes: int | None = None

    def __init_subclass__(cls) -> None:
        # Runs before a subclass's @dataclass, which then leaves an existing __repr__ alone:
        # a generated one would list every field (user name, file paths) instead of the URL.
        cls.__repr__ = Endpoint.__repr__  # type: ignore[method-assign]

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_url(cls: type[_E], url: str | Endpoint, **options: Any) -> _E:
        """Parse ``url``; keyword ``options`` override query parameters of the same name.

        Called on a subclass (``AMQPEndpoint.from_url``), it also refuses URLs of another
        transport.
        """
        if isinstance(url, Endpoint):
            endpoint = url.with_options(**options) if options else url
        else:
            scheme, _ = split_scheme(url)  # refuses what is not a URL
            kind = transport_for(url).endpoint  # refuses an unknown scheme, listing the known
            parts = URLParts.split(url, kind.schemes[scheme], options)
            _refuse_unknown(parts.query, kind.url_options, parts.where)
            endpoint = kind.from_parts(parts)
        if not isinstance(endpoint, cls):
            expected = " or ".join(f"{scheme}://" for scheme in cls.schemes)
            article = "an" if cls.transport[:1] in "aeiou" else "a"
            msg = (
                f"{endpoint.redacted()} is not {article} {cls.transport} endpoint (use {expected})"
            )
            raise ConfigurationError(msg)
        return endpoint

    @classmethod
    def from_parts(cls, url: URLParts) -> Endpoint:
        """Build the endpoint from a split URL whose options are known to be this class's.

        This default reads ``user:password@host:port,host...``, the path (:meth:`path_fields`),
        the options (typed per ``option_types``; ``password_file``/``password_env`` read now)
        and the TLS options, which need a TLS scheme.
        """
        values: dict[str, Any] = {"hosts": parse_hosts(url.hostlist, url.default_port, url.where)}
        values.update(_credentials(url.userinfo))
        values.update(cls.path_fields(url.path, url.where))
        values.update(cls.coerce_options(url.query, url.where))
        sources = [k for k in _PASSWORD_KEYS if k in url.query]
        if len(sources) > 1:
            msg = f"{url.where}: give only one of {', '.join(sources)}"
            raise ConfigurationError(msg)
        values.update(cls.tls_fields(values, url))
        cls.reconcile(values, url.where)
        return cls(**values)

    @classmethod
    def coerce_options(cls, query: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Option values (strings from a URL, or keyword values) as field values."""
        out: dict[str, Any] = {}
        for key, value in query.items():
            if key in _PASSWORD_KEYS:
                out["password"] = read_secret(key, value, where)
                continue
            coerce = cls.option_types.get(key, text)
            try:
                out[key] = coerce(value, where=where, name=key)
            except ConfigurationError as exc:
                # The URL's own wording, with the reason the shared rules give.
                reason = str(exc).removeprefix(f"{where}: {key} ")
                msg = f"{where}: option {key}={value!r} is not valid ({reason})"
                raise ConfigurationError(msg) from None
        return out

    @classmethod
    def tls_fields(cls, values: dict[str, Any], url: URLParts) -> dict[str, Any]:
        """Take the TLS options out of ``values`` into ``tls`` (for a TLS scheme only)."""
        keys = {k: values.pop(k) for k in _TLS_KEYS if k in values}
        if url.tls:
            try:
                return {"tls": TLSConfig(**keys)}
            except ConfigurationError as exc:
                msg = f"{url.where}: {exc}"
                raise ConfigurationError(msg) from None
        if keys:
            msg = (
                f"{url.where}: TLS options ({', '.join(keys)}) given for a plain-TCP URL; "
                f"use {cls.scheme_for(tls=True)}:// to enable TLS"
            )
            raise ConfigurationError(msg)
        return {}

    @classmethod
    def scheme_for(cls, *, tls: bool) -> str:
        """The scheme of this transport for plain TCP or TLS (the first one registered)."""
        for name, scheme in cls.schemes.items():
            if scheme.tls == tls:
                return name
        msg = f"the {cls.transport} transport has no {'TLS' if tls else 'plain'} URL scheme"
        raise ConfigurationError(msg)

    # -- hooks for transport modules ----------------------------------------------------------

    @classmethod
    def path_fields(cls, path: str, where: str) -> dict[str, Any]:
        """The fields the (percent-decoded) URL path gives; by default the path means nothing."""
        return {}

    @classmethod
    def reconcile(cls, values: dict[str, Any], where: str) -> None:
        """Make options that depend on each other agree, before construction (in place).

        An explicit option is never silently overridden: contradictions are refused here.
        """

    def validate(self, where: str) -> None:
        """Refuse values this transport cannot use (called on every construction and copy)."""

    def redacted_path(self) -> str:
        """What follows the hosts in :meth:`redacted` (path and query, secret-free)."""
        return ""

    def destination_parts(self) -> dict[str, str]:
        """The options that decide where records go, in a fixed order (:meth:`destination_key`)."""
        return {"vhost": self.vhost}

    @classmethod
    def named_destination(
        cls, kind: Literal["queue", "topic"], name: str, *, exchange: str = ""
    ) -> tuple[str, dict[str, Any]]:
        """The URL path and options that address the queue or the topic ``name``.

        Consumers of a queue compete for its messages; every subscriber of a topic gets every
        message published while it subscribes. ``exchange`` is the exchange that queues are
        bound to, where the transport has exchanges. Used by the DIRAC-style
        ``service::Queues::name`` addresses (:mod:`mqlogging.backends.services`).
        """
        msg = f"the {cls.transport} transport has no named queues or topics"
        raise ConfigurationError(msg)

    def with_spool_defaults(self, defaults: Mapping[str, Any]) -> Endpoint:
        """A copy whose spool options not set by the URL are taken from ``defaults``.

        Only spools (``local://``) have spool options: any other endpoint is returned as it is.
        """
        return self

    # -- validation and copies ----------------------------------------------------------------

    def __post_init__(self) -> None:
        if not self.schemes:
            msg = f"{type(self).__name__} has no URL scheme; build endpoints with from_url()"
            raise TypeError(msg)
        where = self.redacted()
        if self.needs_hosts and not self.hosts:
            msg = f"{where}: no host given"
            raise ConfigurationError(msg)
        for name in ("connect_timeout", "timeout"):
            if getattr(self, name) <= 0:
                msg = f"{where}: {name} must be a positive number of seconds"
                raise ConfigurationError(msg)
        if self.heartbeat < 0 or self.prefetch < 1:
            msg = f"{where}: heartbeat must be >= 0 and prefetch >= 1"
            raise ConfigurationError(msg)
        self._validate_packing(where)
        self.validate(where)

    def _validate_packing(self, where: str) -> None:
        """``pack``/``pack_bytes``/``compress``: in range, and ``compress`` only with packing."""
        if self.pack is not None and self.pack < 1:
            msg = f"{where}: pack must be a number of records >= 1 (omit it: one per message)"
            raise ConfigurationError(msg)
        if self.pack_bytes is not None and not 1024 <= self.pack_bytes <= MAX_PACK_BYTES:
            msg = f"{where}: pack_bytes must be from 1KiB to {MAX_PACK_BYTES // 2**20}MiB"
            raise ConfigurationError(msg)
        if self.compress is not None and self.pack is None and self.pack_bytes is None:
            msg = f"{where}: compress={self.compress} needs packed messages: add pack=200"
            raise ConfigurationError(msg)
        if self.compress is not None and self.compress not in ENCODINGS:
            msg = f"{where}: compress must be one of {', '.join(ENCODINGS)}"
            raise ConfigurationError(msg)
        self._validate_message_limit(where)

    def _validate_message_limit(self, where: str) -> None:
        """``max_message_bytes`` is at least 1KiB, and a packed message (up to ``pack_bytes``
        of records) fits in it: a config that would make the broker refuse every full pack
        is refused here, not record by record later."""
        limit = self.message_limit()
        if limit is None:
            return
        if limit < MIN_MAX_MESSAGE_BYTES:
            msg = f"{where}: max_message_bytes must be at least 1KiB (the broker's limit)"
            raise ConfigurationError(msg)
        if self.pack_bytes is not None and self.pack_bytes > limit:
            msg = (
                f"{where}: pack_bytes={self.pack_bytes} is above max_message_bytes={limit}: "
                "the broker would refuse full packed messages; lower pack_bytes"
            )
            raise ConfigurationError(msg)

    def message_limit(self) -> int | None:
        """The largest message body the broker takes (``max_message_bytes``, or the
        transport's :attr:`default_max_message_bytes`), ``None`` where no such limit
        applies: a producer refuses a larger body alone, before sending it, instead of
        having the broker refuse it and the rest of the batch with it."""
        if self.max_message_bytes is None:
            return self.default_max_message_bytes
        return self.max_message_bytes

    def pack_options(self) -> PackOptions | None:
        """How the producer packs records (``None``: one record per message, the default).

        ``pack`` alone packs up to that many records within :data:`DEFAULT_PACK_BYTES`;
        ``pack_bytes`` alone packs by size only.
        """
        if self.pack is None and self.pack_bytes is None:
            return None
        records = self.pack if self.pack is not None else 2**31
        max_bytes = self.pack_bytes if self.pack_bytes is not None else DEFAULT_PACK_BYTES
        compress: Any = self.compress
        return PackOptions(records, max_bytes, compress)

    def with_options(self: _E, **options: Any) -> _E:
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
        """The URL scheme: the transport's, with TLS or without."""
        return self.scheme_for(tls=self.tls is not None)

    def redacted(self) -> str:
        """The URL with the password masked: safe for logs, errors, metrics labels and the CLI."""
        user = ""
        if self.username is not None:
            user = quote(self.username, safe="") + (":***" if self.password else "") + "@"
        hosts = ",".join(str(h) for h in self.hosts)
        return f"{self.scheme}://{user}{hosts}{self.redacted_path()}"

    def destination_key(self) -> str:
        """A stable, secret-free string naming where this endpoint's records go.

        Endpoints with the same key deliver to the same place. Different keys are treated as
        different destinations (the key is textual: ``localhost`` and ``127.0.0.1`` differ).
        The handler uses it to refuse an endpoint listed twice and to name the default spool
        directory, so a spool is only replayed to its own destination; it must therefore stay
        the same across runs and releases: changing what it covers moves default spools.

        Covered (each changes where a record ends up): the transport and TLS (``scheme``), the
        hosts in URL order (names compared without case, never resolved), and the transport's
        :meth:`destination_parts` (the vhost and, for AMQP, ``exchange``, ``routing_key``,
        ``queue`` and ``binding_key``; for STOMP the ``destination``; for ``local`` the
        directory).
        Not covered (they change how records travel, not where): user name and password (a
        secret must never reach a directory name), timeouts, heartbeat, prefetch, TLS file
        paths, ``persistent``, ``declare``, and the *kind* of exchange or queue
        (``exchange_type``, ``queue_type``, ``dead_letter_exchange``): the broker refuses a
        second declaration of the same name with other settings, so these never make two
        distinct destinations.
        """
        hosts = ",".join(str(h).lower() for h in self.hosts)  # DNS names ignore case
        parts = self.destination_parts()
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in parts.items())
        return f"{self.scheme}://{hosts}/?{query}"

    def delivery_caveat(self) -> str | None:
        """One line saying how this destination can drop records by design, or ``None``.

        Publishing code prints it once at configuration time (issue #11, defect 14). It is a
        warning, not an error: a lossy destination is a legitimate choice for live views, and
        refusing it would override the user. Transports whose broker confirms and then drops
        (STOMP topics) say so here.
        """
        return None

    def prepare_local(self) -> None:
        """Create or check what this endpoint keeps on this machine; raise a one-line
        :class:`~mqlogging.errors.ConfigurationError` if it cannot be used.

        Called once when a handler is configured with the endpoint (not when a URL is merely
        parsed: ``mqlogging tail`` or a config check must not create directories), so a
        local directory that would fail later fails at configuration instead. Nothing by
        default; the Elasticsearch endpoint creates its rejected spool's directory.
        """

    def __repr__(self) -> str:
        return f"Endpoint({self.redacted()!r})"

    __str__ = redacted

    def credentials(self) -> tuple[str, str] | None:
        """``(username, password)`` for the broker, or ``None`` when none were configured."""
        if self.username is None:
            return None
        return self.username, self.password.reveal() if self.password else ""


# -- helpers ---------------------------------------------------------------------------------


def _refuse_unknown(query: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    for key in query:
        if key not in known:
            hint = did_you_mean(key, known)
            msg = f"unknown option {key!r} for {where} ({hint}known: {', '.join(sorted(known))})"
            raise ConfigurationError(msg)


def _credentials(userinfo: str) -> dict[str, Any]:
    if not userinfo:
        return {}
    user, sep, password = userinfo.partition(":")
    out: dict[str, Any] = {"username": unquote(user)}
    if sep:
        out["password"] = Secret(unquote(password))
    return out


def parse_hosts(hostlist: str, default_port: int, where: str) -> tuple[Host, ...]:
    """``h1:port,[::1]:port,h3`` as hosts, in order; at least one."""
    hosts = tuple(_parse_host(item, default_port, where) for item in hostlist.split(",") if item)
    if not hosts:
        scheme = where.split("://", maxsplit=1)[0]
        msg = f"{where}: no host given; write e.g. {scheme}://broker.example.org/"
        raise ConfigurationError(msg)
    return hosts


def _parse_host(item: str, default_port: int, where: str) -> Host:
    if item.startswith("["):
        host, _, port_s = item[1:].partition("]")
        port_s = port_s.lstrip(":")
    else:
        host, _, port_s = item.partition(":")
    port = port_number(port_s) if port_s else default_port
    if not port:
        msg = f"{where}: port {port_s!r} of host {host!r} is not a number from 1 to 65535"
        raise ConfigurationError(msg)
    if not host:
        msg = f"{where}: empty host name in the host list"
        raise ConfigurationError(msg)
    return Host(host, port)


def read_secret(key: str, value: Any, where: str) -> Secret:
    """A secret option's value, read now: ``NAME`` itself, ``NAME_file`` (the file's content,
    stripped) or ``NAME_env`` (the variable's value), as ``key`` says (``password``,
    ``password_file``, ``api_key_env``, ``token_file``...). Used by every transport that
    takes a secret, so each reads and refuses them alike."""
    if isinstance(value, Secret):
        return value
    name = key.removesuffix("_file").removesuffix("_env")
    if key.endswith("_file"):
        try:
            return Secret(Path(str(value)).read_text(encoding="utf-8").strip())
        except OSError as exc:
            msg = f"{where}: cannot read {key} {str(value)!r}: {exc.strerror}"
            raise ConfigurationError(msg) from None
    if key.endswith("_env") and key != name:
        if str(value) not in os.environ:
            msg = f"{where}: {key}={value!r} but that variable is not set"
            raise ConfigurationError(msg)
        return Secret(os.environ[str(value)])
    return Secret(str(value))
