"""Who is posting: bearer tokens and X.509 client certificates (RFC 3820 proxies included).

Tokens come from a file (one per line) and/or an environment variable (comma-separated); each
entry is ``token`` or ``name:token``. They are compared with :func:`hmac.compare_digest`
against every configured token (constant time per token, and the loop never stops early), so
timing does not tell how much of a guess was right. The identity of a token is ``token:<name>``,
or ``token:<first 12 hex digits of its SHA-256>`` when it has no name: never the token itself.
The file is read again when its modification time or size changes, so removing a line revokes
that token on the next request, without a restart.

The identity of a certificate is the RFC 4514 subject of the *end-entity* certificate: for an
RFC 3820 proxy certificate (it carries the ProxyCertInfo extension) the proxies are walked
back to the first certificate that is not one, so ``CN=alice,...`` is the identity whether
Alice posts with her own certificate or with any depth of proxy made from it. The chain is the
one OpenSSL verified (``get_verified_chain``), parsed with ``cryptography``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigurationError

__all__ = [
    "PROXY_CERT_INFO_OID",
    "TokenStore",
    "certificate_identity",
    "server_context",
    "verified_chain",
]

_ENCODING_DER = 2  # _ssl.ENCODING_DER: the format argument of Certificate.public_bytes

PROXY_CERT_INFO_OID = "1.3.6.1.5.5.7.1.14"
"""The RFC 3820 ProxyCertInfo extension: a certificate that has it is a proxy certificate."""


@dataclass(frozen=True, slots=True)
class _Token:
    value: bytes
    identity: str


def _parse_tokens(entries: list[str], origin: str) -> list[_Token]:
    out = []
    for raw in entries:
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        name, sep, value = entry.partition(":")  # a token with ':' in it needs a name
        if not sep:
            value, name = entry, ""
        if len(value) < 16:
            msg = f"{origin}: a token must be at least 16 characters long"
            raise ConfigurationError(msg)
        label = name or hashlib.sha256(value.encode()).hexdigest()[:12]
        out.append(_Token(value.encode(), f"token:{label}"))
    return out


class TokenStore:
    """The accepted bearer tokens; thread-safe; the file is re-read when it changes."""

    def __init__(self, *, file: str = "", env: str = "") -> None:
        self._file = file
        self._env = env
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._from_file: list[_Token] = []
        self._from_env: list[_Token] = []

    def check(self) -> None:
        """Read the file and the variable now; a problem is a one-line ConfigurationError."""
        if self._env:
            if self._env not in os.environ:
                msg = f"tokens_env={self._env!r} but that variable is not set"
                raise ConfigurationError(msg)
            entries = os.environ[self._env].split(",")
            self._from_env = _parse_tokens(entries, f"tokens_env={self._env}")
        if self._file:
            self._reload(strict=True)

    def _reload(self, *, strict: bool) -> None:
        try:
            st = os.stat(self._file)
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return
            lines = Path(self._file).read_text(encoding="utf-8").splitlines()
            tokens = _parse_tokens(lines, f"tokens_file={self._file}")
        except (OSError, UnicodeDecodeError, ConfigurationError) as exc:
            if strict:
                msg = f"tokens_file={self._file!r} cannot be used: {exc}"
                raise ConfigurationError(msg) from None
            self._from_file, self._stamp = [], None  # fail closed: no file, no file tokens
            return
        self._from_file, self._stamp = tokens, stamp

    @property
    def enabled(self) -> bool:
        """Whether tokens are configured at all."""
        return bool(self._file or self._env)

    def identity(self, presented: str) -> str | None:
        """The identity of ``presented`` if it is an accepted token, else ``None``."""
        with self._lock:
            if self._file:
                self._reload(strict=False)
            tokens = self._from_file + self._from_env
        candidate = presented.encode()
        found = None
        for token in tokens:  # no early exit: every token is compared
            if hmac.compare_digest(token.value, candidate):
                found = token.identity
        return found


def certificate_identity(chain_der: list[bytes]) -> str | None:
    """The end-entity subject (RFC 4514) of a verified chain, leaf first; ``None`` if empty.

    Proxy certificates (RFC 3820 ProxyCertInfo) are skipped from the leaf on: the first
    certificate without the extension is the end entity whose subject identifies the user.
    """
    from cryptography import x509

    for der in chain_der:
        cert = x509.load_der_x509_certificate(der)
        oids = {ext.oid.dotted_string for ext in cert.extensions}
        if PROXY_CERT_INFO_OID not in oids:
            return cert.subject.rfc4514_string()
    return None


def verified_chain(ssl_object: Any) -> list[bytes]:
    """The DER certificates OpenSSL verified for this connection, leaf first ([] if none).

    ``SSLObject.get_verified_chain`` is public from Python 3.13; before, the same method is
    on the ``_ssl`` object it wraps (there since 3.10).
    """
    getter = getattr(ssl_object, "get_verified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_verified_chain", None)
    if getter is None:  # pragma: no cover - Python < 3.10
        der = ssl_object.getpeercert(binary_form=True)
        return [der] if der else []
    chain = getter() or []
    return [c.public_bytes(_ENCODING_DER) if hasattr(c, "public_bytes") else c for c in chain]


def server_context(
    *, certfile: str, keyfile: str | None, client_ca: str, allow_proxy_certs: bool,
    require_cert: bool,
) -> ssl.SSLContext:  # fmt: skip
    """The server's TLS context: TLS 1.2+, its certificate, and client certificates verified
    against ``client_ca`` (a file or a hashed directory) when given — required when no other
    way to authenticate is configured, else optional (a presented one is still verified)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        msg = f"cannot load the server certificate {certfile!r}: {exc}"
        raise ConfigurationError(msg) from exc
    if client_ca:
        try:
            if os.path.isdir(client_ca):
                ctx.load_verify_locations(capath=client_ca)
            else:
                ctx.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError) as exc:
            msg = f"cannot load client_ca {client_ca!r}: {exc}"
            raise ConfigurationError(msg) from exc
        ctx.verify_mode = ssl.CERT_REQUIRED if require_cert else ssl.CERT_OPTIONAL
        if allow_proxy_certs:
            ctx.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
    return ctx
