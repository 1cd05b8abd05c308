"""Revocation of client certificates: CRLs checked after the handshake, re-read when they change.

Why not OpenSSL's own CRL checks (``VERIFY_CRL_CHECK_LEAF`` / ``_CHAIN``)? Measured with
OpenSSL 3.0 and ``VERIFY_ALLOW_PROXY_CERTS``:

- ``_LEAF`` checks only the proxy (the leaf), which no CRL can revoke: a proxy made from a
  revoked user certificate is accepted.
- ``_CHAIN`` does refuse it, but CRLs are loaded into the context's store once: a hashed
  directory's ``<hash>.r0`` rewritten by fetch-crl is never read again (a CRL revoking a
  certificate after the start is ignored until a restart), and a CRL cannot be removed
  from a store, only added.

So the TLS handshake only verifies the chain (as before), and :class:`CrlStore` checks the
verified chain per request: the *end-entity* certificate (the first one that is not an RFC
3820 proxy; a proxy is issued by a user, for whom no CRL exists, and lives hours) against its
issuer's CRL (``crl_check = "leaf"``), and with ``"chain"`` every CA certificate below the
trust anchor too. A revoked certificate gets ``403`` naming the reason.

Where CRLs come from: ``crl_file`` (PEM, any number of CRLs) and, when ``client_ca`` is a
hashed directory, its ``<hash>.r<N>`` files (as fetch-crl writes them). They are looked at
again every ``crl_refresh`` seconds (a ``stat`` per file; only changed files are parsed), so
a CRL rewritten on disk takes effect within that interval, without a restart. A CRL is used
only when its signature verifies with the issuing CA's key from the verified chain, and the
newest one (by ``last_update``) of an issuer decides.

Fail closed, with the reason in the 403 and the log: with checks on, a certificate whose CA has
no (valid) CRL, or whose CA's newest CRL is past its ``next_update`` (fetch-crl stopped), is
refused. A CRL file that cannot be parsed when re-read (caught mid-write) keeps its previous
contents; a file that disappears takes its CRLs with it. Not supported: delta CRLs and
indirect CRLs (issued by someone else than the CA), as in the grid's CA distribution.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ...errors import ConfigurationError
from .auth import PROXY_CERT_INFO_OID

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["CrlCheck", "CrlStore"]

log = logging.getLogger("mqlogging.collector.ingest")

CrlCheck = Literal["off", "leaf", "chain"]
"""Which certificates are checked against CRLs (see the module docstring)."""

_PEM_BEGIN = b"-----BEGIN X509 CRL-----"


@dataclass(eq=False)
class _Crl:
    """One parsed CRL, its revoked serial numbers (a set: ``crl``'s own lookup is a linear
    scan, ~6 ms per request for 50 000 entries), and whom its signature was checked against
    (DER of the CA -> valid)."""

    crl: x509.CertificateRevocationList
    revoked: frozenset[int] = frozenset()
    signed_by: dict[bytes, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.revoked = frozenset(entry.serial_number for entry in self.crl)

    def signed(self, issuer: x509.Certificate) -> bool:
        """Whether ``issuer``'s key signed this CRL (checked once per CA certificate)."""
        from cryptography.hazmat.primitives import serialization

        key = issuer.public_bytes(serialization.Encoding.DER)
        if key not in self.signed_by:
            try:
                ok = self.crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
            except (TypeError, ValueError):
                ok = False
            self.signed_by[key] = ok
        return self.signed_by[key]


@dataclass(eq=False)
class _File:
    """A CRL file as last seen: ``(mtime_ns, size, inode)`` and the CRLs it held."""

    stamp: tuple[int, int, int]
    crls: list[_Crl]


def _parse(data: bytes) -> list[_Crl]:
    """Every CRL in ``data`` (PEM, one or more; or one DER); ValueError if there is none."""
    from cryptography import x509

    if _PEM_BEGIN not in data:
        return [_Crl(x509.load_der_x509_crl(data))]
    out = []
    for part in data.split(_PEM_BEGIN)[1:]:
        out.append(_Crl(x509.load_pem_x509_crl(_PEM_BEGIN + part)))
    return out


def _is_crl_name(name: str) -> bool:
    """``<8 hex digits>.r<N>``: a CRL in a hashed CA directory."""
    stem, dot, suffix = name.partition(".")
    return bool(dot) and len(stem) == 8 and suffix[:1] == "r" and suffix[1:].isdigit()


class CrlStore:
    """The CRLs of ``crl_file`` and of the hashed directory ``ca_dir``; thread-safe."""

    def __init__(
        self, *, mode: CrlCheck, crl_file: str = "", ca_dir: str = "", refresh: float = 60.0
    ) -> None:
        self.mode = mode
        self._file = crl_file
        self._dir = ca_dir
        self._refresh = refresh
        self._lock = threading.Lock()
        self._next_scan = 0.0
        self._files: dict[str, _File] = {}
        self._by_issuer: dict[x509.Name, list[_Crl]] = {}

    @property
    def enabled(self) -> bool:
        """Whether certificates are checked at all."""
        return self.mode != "off"

    def check(self) -> None:
        """Load every CRL now; a ``crl_file`` that does not load, or no CRL at all, is a
        one-line ConfigurationError (checks on and nothing to check against would refuse
        every client)."""
        if not self.enabled:
            return
        if self._file:
            try:
                _parse(Path(self._file).read_bytes())
            except (OSError, ValueError) as exc:
                msg = f"crl_file={self._file!r} cannot be loaded: {exc}"
                raise ConfigurationError(msg) from None
        with self._lock:
            self._scan()
        if not self._by_issuer:
            msg = (
                f"crl_check = {self.mode!r} but no CRL was found in client_ca={self._dir!r} "
                "(<hash>.r0 files; is fetch-crl running?); set crl_file or crl_check = 'off'"
            )
            raise ConfigurationError(msg)

    def refusal(self, chain_der: list[bytes]) -> str | None:
        """Why the verified chain ``chain_der`` (leaf first) is refused, or ``None``."""
        if not self.enabled:
            return None
        from cryptography import x509

        chain = [x509.load_der_x509_certificate(der) for der in chain_der]
        with self._lock:
            if time.monotonic() >= self._next_scan:
                self._scan()
            by_issuer = self._by_issuer
        for cert, issuer in self._to_check(chain):
            problem = _revocation_problem(cert, issuer, by_issuer.get(cert.issuer, []))
            if problem is not None:
                return problem
        return None

    def _to_check(
        self, chain: list[x509.Certificate]
    ) -> list[tuple[x509.Certificate, x509.Certificate | None]]:
        """``(certificate, its issuer)`` pairs to check: the end entity, and with ``chain``
        each CA certificate below the last (the trust anchor is not checked)."""
        start = 0
        while start < len(chain) and _is_proxy(chain[start]):
            start += 1
        stop = start + 1 if self.mode == "leaf" else max(start + 1, len(chain) - 1)
        return [
            (chain[i], chain[i + 1] if i + 1 < len(chain) else None)
            for i in range(start, min(stop, len(chain)))
        ]

    def _scan(self) -> None:
        """Re-read the CRL files that changed (lock held); rebuild the index by issuer."""
        self._next_scan = time.monotonic() + self._refresh
        paths = [self._file] if self._file else []
        if self._dir:
            try:
                names = sorted(os.listdir(self._dir))
            except OSError as exc:
                log.warning("ingest: cannot list client_ca %r for CRLs: %s", self._dir, exc)
                names = []
            paths += [os.path.join(self._dir, n) for n in names if _is_crl_name(n)]
        files = {}
        for path in paths:
            loaded = self._load(path, self._files.get(path))
            if loaded is not None:
                files[path] = loaded
        if files != self._files:
            index: dict[x509.Name, list[_Crl]] = {}
            for loaded in files.values():
                for crl in loaded.crls:
                    index.setdefault(crl.crl.issuer, []).append(crl)
            self._by_issuer = index
        self._files = files

    @staticmethod
    def _load(path: str, old: _File | None) -> _File | None:
        """The CRLs of ``path``: ``old`` when it did not change; its previous CRLs when it
        cannot be read or parsed now (caught mid-write: warned once per change); ``None``
        when it is gone."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if old is not None and old.stamp == stamp:
            return old
        try:
            crls = _parse(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("ingest: CRL %r cannot be read (%s); keeping its previous contents",
                        path, exc)  # fmt: skip
            return _File(stamp, old.crls if old is not None else [])
        log.info("ingest: loaded %d CRL(s) from %r", len(crls), path)
        return _File(stamp, crls)


def _is_proxy(cert: x509.Certificate) -> bool:
    return any(ext.oid.dotted_string == PROXY_CERT_INFO_OID for ext in cert.extensions)


def _revocation_problem(
    cert: x509.Certificate, issuer: x509.Certificate | None, candidates: list[_Crl]
) -> str | None:
    """Why ``cert`` is refused given its issuer's CRLs, or ``None`` if it is not revoked."""
    who = cert.subject.rfc4514_string()
    ca = cert.issuer.rfc4514_string()
    valid = [c for c in candidates if issuer is not None and c.signed(issuer)]
    if not valid:
        return f"no CRL of {ca!r} to check certificate {who!r} against"
    newest = max(valid, key=lambda c: c.crl.last_update_utc)
    expires = newest.crl.next_update_utc
    if expires is not None and expires < datetime.datetime.now(datetime.timezone.utc):
        return f"the CRL of {ca!r} expired at {expires:%Y-%m-%dT%H:%M:%SZ}"
    if cert.serial_number in newest.revoked:
        return f"certificate {who!r} (serial {cert.serial_number:x}) is revoked by {ca!r}"
    return None
