"""The plain ``http(s)://`` / ``tcp://`` URLs of the HTTP-speaking sinks: checked once at
start, and shown only with the password masked (they are not broker endpoints, so
:class:`~mqlogging.backends.endpoints.Endpoint` does not parse them)."""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

from ...errors import ConfigurationError

__all__ = ["check_http_url", "client_ssl_context", "redact_http"]


def check_http_url(url: str, name: str, *, require_port: bool = False) -> None:
    """Refuse ``url`` (the value of option ``name``) unless it is an http(s)/tcp URL with a
    host, and with a port when ``require_port``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        msg = f"{name}: {redact_http(url)!r} is not a valid URL ({exc})"
        raise ConfigurationError(msg) from None
    if parts.scheme not in ("http", "https", "tcp", "tcp+ssl") or not parts.hostname:
        msg = (
            f"{name}: {redact_http(url)!r} is not an http(s) URL with a host, e.g. https://es1:9200"
        )
        raise ConfigurationError(msg)
    if require_port and port is None:
        msg = f"{name}: {redact_http(url)!r} needs a port, e.g. tcp://logstash:5000"
        raise ConfigurationError(msg)


def redact_http(url: str) -> str:
    """Mask a password in ``scheme://user:pass@host`` (safe for labels and messages)."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if at:
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    return f"{scheme}{sep}{netloc}{slash}{tail}"


def client_ssl_context(
    ca_certs: str | None, *, verify: bool, certfile: str | None, keyfile: str | None
) -> ssl.SSLContext:
    """The TLS context an HTTP-speaking sink connects with: the system's CAs (or
    ``ca_certs``), verification on unless ``verify`` is false, a client certificate when
    ``certfile`` is given."""
    ctx = ssl.create_default_context(cafile=ca_certs)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if certfile:
        ctx.load_cert_chain(certfile, keyfile)
    return ctx
