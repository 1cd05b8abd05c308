"""``[[sources]] type = "http"``: the HTTPS ingest source's configuration.

Read like every collector table (:mod:`mqlogging.collector._table`: by the fields' types).
Everything that could fail at the first request fails here instead: the server certificate
and key, the client CA file or directory, the token file or variable, the listen address.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..._coerce import port_number
from ...errors import ConfigurationError
from .._table import FromTable, PemPath, PositiveFloat, PositiveInt, check_fields
from .auth import TokenStore
from .crl import CrlCheck, CrlStore

if TYPE_CHECKING:
    from ...backends.base import Consumer

__all__ = ["HttpSourceConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSourceConfig(FromTable):
    """An HTTPS endpoint that takes records by ``POST`` (see :mod:`mqlogging.collector.ingest`).

    ``listen``: ``host:port``. ``path``: the ingest path. TLS is on unless ``tls = false``
    (plain HTTP, e.g. behind a TLS-terminating proxy on the same host): then ``certfile``
    must not be given and client certificates cannot be used. ``certfile``/``keyfile``: the
    server's certificate (chain) and key. ``client_ca``: a CA file or a hashed CA directory
    (``c_rehash``) that client certificates are verified against; with it, a client may
    authenticate by certificate. ``allow_proxy_certs``: also accept RFC 3820 proxy
    certificates (the identity is then the end-entity certificate's subject).
    ``crl_check``: ``"off"`` (the default), ``"leaf"`` or ``"chain"``: refuse (403) revoked
    client certificates — the end-entity certificate (a proxy's user certificate), with
    ``"chain"`` also the CAs below the trust anchor — against the CRLs of ``crl_file`` (PEM)
    and, when ``client_ca`` is a hashed directory, its ``<hash>.r0`` files (fetch-crl's);
    they are looked at again every ``crl_refresh`` seconds (60), so a rewritten CRL takes
    effect without a restart (:mod:`mqlogging.collector.ingest.crl`). With checks on, a
    certificate whose CA has no CRL, or only an expired one, is refused too (fail closed).
    That is why the default is ``"off"``: turned on by default, a site whose CA directory
    lacks a CRL for some CA, or whose fetch-crl stopped, would lock out those pilots (their
    records pile up in their spools) on upgrade; the start logs a warning when client
    certificates are accepted without CRL checks.
    ``allowed_subjects``: when given, only these certificate subjects (RFC 4514 strings, as in
    ``mqlogging.ingest.identity``) are let in; others get 403. ``tokens_file`` /
    ``tokens_env``: bearer tokens, one per line (file) or comma-separated (variable), each
    ``token`` or ``name:token``; the file is read again when it changes, so removing a line
    revokes a token without a restart (a token that contains ``:`` must be given a name).
    At least one way to authenticate is required.
    ``max_body_bytes``: the largest request body, before and after gzip (413 above).
    ``max_records``: most records (lines or array elements) in one request; more is 413
    before any per-record work (the https:// endpoint then sends halves), so one request
    cannot keep a parser thread busy for long.
    ``max_inflight_bytes``: record bytes waiting to be handed on; a request that would exceed
    it gets 429 with ``Retry-After`` (bodies being received count too). ``timeout``: seconds a
    request waits for its records to be handed on before it gets 503 with ``Retry-After``
    (``retry_after`` seconds); keep it below the clients' own request timeout (the handler's
    ``timeout``, 10 s by default), so they hear 503 rather than time out.
    ``body_timeout``: seconds to receive a request's body once its headers are in; a slower
    upload gets 408 and its connection is closed, so a pilot killed mid-request (a half-open
    connection) holds its share of ``max_inflight_bytes`` that long at most, not until TCP
    gives up hours later.
    ``idle_timeout``: seconds a connection may stay open without a complete request (before
    its first one, between keep-alive requests, or with its headers still arriving); then it
    is closed, so idle or half-open connections of many pilots cannot run the collector out
    of file descriptors (aiohttp's own default is about an hour).
    ``prefetch``: most records handed to the pipeline and not yet settled.
    ``remember_ids``: how many ids of records handed on lately are remembered, so a client
    resending them (its earlier request got 503 after some were published) does not publish
    them again (about 100 bytes each).
    """

    type: Literal["http"] = "http"
    name: str = ""
    listen: str = "0.0.0.0:8443"
    path: str = "/ingest"
    tls: bool = True
    certfile: PemPath | None = None
    keyfile: PemPath | None = None
    client_ca: str = ""
    allow_proxy_certs: bool = False
    crl_check: CrlCheck = "off"
    crl_file: str = ""
    crl_refresh: PositiveFloat = 60.0
    allowed_subjects: tuple[str, ...] = ()
    tokens_file: str = ""
    tokens_env: str = ""
    max_body_bytes: PositiveInt = 8 * 1024 * 1024
    max_records: PositiveInt = 20_000
    max_inflight_bytes: PositiveInt = 64 * 1024 * 1024
    timeout: PositiveFloat = 8.0
    retry_after: PositiveInt = 5
    body_timeout: PositiveFloat = 30.0
    idle_timeout: PositiveFloat = 60.0
    prefetch: PositiveInt = 10000
    remember_ids: PositiveInt = 100_000

    def __post_init__(self) -> None:
        check_fields(self)
        self.address  # noqa: B018 - refuses a bad listen address now
        if not self.path.startswith("/"):
            msg = f"path={self.path!r} must start with '/', e.g. /ingest"
            raise ConfigurationError(msg)
        self._check_tls()
        self._check_crl()
        if not (self.tokens_file or self.tokens_env or self.client_ca):
            msg = (
                "no way to authenticate: set tokens_file, tokens_env (bearer tokens) "
                "and/or client_ca (X.509 client certificates)"
            )
            raise ConfigurationError(msg)
        self.tokens().check()
        self.crls().check()

    def _check_tls(self) -> None:
        if self.allowed_subjects and not self.client_ca:
            msg = "allowed_subjects needs client_ca (without it no certificate is checked)"
            raise ConfigurationError(msg)
        if not self.tls:
            if self.certfile or self.keyfile or self.client_ca:
                msg = "tls = false but certfile/keyfile/client_ca given; remove them or drop tls"
                raise ConfigurationError(msg)
            return
        if not self.certfile:
            msg = "certfile (and keyfile) are required for HTTPS; set tls = false for plain HTTP"
            raise ConfigurationError(msg)
        if self.client_ca and not os.path.exists(self.client_ca):
            msg = f"client_ca={self.client_ca!r}: no such file or directory"
            raise ConfigurationError(msg)
        if self.allow_proxy_certs and not self.client_ca:
            msg = "allow_proxy_certs = true needs client_ca (the CAs of the user certificates)"
            raise ConfigurationError(msg)

    def _check_crl(self) -> None:
        """The CRL options' contradictions (whether the CRLs load: :meth:`CrlStore.check`)."""
        if self.crl_check == "off":
            if self.crl_file:
                msg = "crl_file given but crl_check = 'off'; set crl_check = 'leaf' or 'chain'"
                raise ConfigurationError(msg)
            return
        if not self.client_ca:
            msg = f"crl_check = {self.crl_check!r} needs client_ca (no certificate is checked)"
            raise ConfigurationError(msg)
        if not os.path.isdir(self.client_ca) and not self.crl_file:
            msg = (
                f"crl_check = {self.crl_check!r} with client_ca a file needs crl_file "
                "(a PEM file of CRLs); a hashed CA directory holds them as <hash>.r0"
            )
            raise ConfigurationError(msg)

    @property
    def label(self) -> str:
        """Metric label / log name: the configured name, else ``http:<listen><path>``."""
        return self.name or f"http:{self.listen}{self.path}"

    @property
    def address(self) -> tuple[str, int]:
        """``listen`` as ``(host, port)``."""
        host, sep, port_s = self.listen.rpartition(":")
        port = port_number(port_s)
        if not sep or port is None:
            msg = f"listen={self.listen!r} must be host:port, e.g. 0.0.0.0:8443"
            raise ConfigurationError(msg)
        return host.strip("[]") or "0.0.0.0", port

    @property
    def max_in_flight(self) -> int:
        """Records handed to the pipeline and not settled, at most."""
        return self.prefetch

    @property
    def fetch_when_full(self) -> bool:
        """The pipeline need not call a full source: the server needs no servicing."""
        return False

    def tokens(self) -> TokenStore:
        """The bearer tokens this source accepts (re-read from the file when it changes)."""
        return TokenStore(file=self.tokens_file, env=self.tokens_env)

    def crls(self) -> CrlStore:
        """The CRLs client certificates are checked against (re-read when they change)."""
        ca_dir = self.client_ca if self.client_ca and os.path.isdir(self.client_ca) else ""
        return CrlStore(
            mode=self.crl_check, crl_file=self.crl_file, ca_dir=ca_dir, refresh=self.crl_refresh
        )

    def open(self, answered: Callable[[int], None] | None = None) -> Consumer:
        """The ingest server as a :class:`~mqlogging.backends.base.Consumer` (it starts
        listening on the first ``fetch``); ``answered`` gets the status of every answer."""
        from .server import IngestConsumer

        return IngestConsumer(self, answered)
