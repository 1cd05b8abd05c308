"""A throwaway grid PKI for the HTTPS ingest tests: a CA, users, and an RFC 3820 proxy.

:func:`make_pilot_pki` writes into one directory:

=================  ===========================================================================
``ca``             the test CA (PEM): the ingest's ``client_ca``, the handler's ``ca_certs``
``ca_key``         its key (for :func:`make_crl`)
``server``/_key    the ingest's certificate for ``127.0.0.1`` (IP SAN)
``user``/_key      a user certificate, subject :data:`USER_DN` (``CN=pilot alice,O=mqlt``)
``proxy``          an RFC 3820 proxy made from the user certificate, as grid tools write it:
                   one file with the proxy certificate, its key and the user certificate;
                   subject ``USER_DN`` + ``CN=<serial>``, ProxyCertInfo (inheritAll), critical
``expired``/_key   a user certificate of the same CA whose validity ended yesterday
``stranger``/_key  a user certificate from an unrelated CA
``revoked``/_key   a second user certificate of the CA, subject :data:`REVOKED_DN`, revoked
                   by ``crl``; ``revoked_proxy``: a proxy made from it (file as ``proxy``)
``crl``            a CRL (PEM) of the CA revoking ``revoked``; next update in 7 days
``crl_empty``      a CRL (PEM) of the CA revoking nothing (write it over ``crl`` to unrevoke)
``cadir``          a hashed CA directory (as /etc/grid-security/certificates): ``<hash>.0``
                   is the CA, ``<hash>.r0`` a copy of ``crl``
=================  ===========================================================================

:func:`make_crl` signs further CRLs of the test CA (e.g. one that expired).

Nothing here imports pytest.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["REVOKED_DN", "USER_DN", "PilotPKI", "make_crl", "make_pilot_pki"]

USER_DN = "CN=pilot alice,O=mqlt"
"""The RFC 4514 subject of the user certificate: the identity the ingest must report."""

REVOKED_DN = "CN=pilot mallory,O=mqlt"
"""The subject of the revoked user certificate."""

# ProxyCertInfo ::= SEQUENCE { proxyPolicy SEQUENCE { policyLanguage id-ppl-inheritAll } }
_PROXY_CERT_INFO = bytes.fromhex("300c300a06082b06010505071501")


@dataclass(frozen=True)
class PilotPKI:
    """Paths of the generated PEM files (see the module docstring)."""

    ca: str
    ca_key: str
    server: str
    server_key: str
    user: str
    user_key: str
    proxy: str
    expired: str
    expired_key: str
    stranger: str
    stranger_key: str
    revoked: str
    revoked_key: str
    revoked_proxy: str
    crl: str
    crl_empty: str
    cadir: str


def make_pilot_pki(directory: Path) -> PilotPKI:
    """Generate the files of the module docstring into ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)

    def pem_key(key: Any) -> bytes:
        return key.private_bytes(  # type: ignore[no-any-return]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )

    def pem(cert: Any) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)  # type: ignore[no-any-return]

    def save(name: str, data: bytes) -> str:
        path = directory / name
        path.write_bytes(data)
        path.chmod(0o600)
        return str(path)

    def dn(*rdns: tuple[Any, str]) -> Any:
        return x509.Name([x509.NameAttribute(oid, value) for oid, value in rdns])

    def build(subject: Any, issuer: Any, key: Any, *, ca: bool, start: Any, end: Any) -> Any:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )

    def new_ca(cn: str) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        name = dn((NameOID.COMMON_NAME, cn))
        cert = build(name, name, key, ca=True, start=now - day, end=now + 30 * day)
        return key, cert.sign(key, hashes.SHA256())

    def new_leaf(ca: tuple[Any, Any], subject: Any, *, end: Any = now + 30 * day,
                 sans: list[Any] | None = None) -> tuple[Any, Any]:  # fmt: skip
        key = ec.generate_private_key(ec.SECP256R1())
        builder = build(subject, ca[1].subject, key, ca=False, start=now - 10 * day, end=end)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(ca[0], hashes.SHA256())

    ca = new_ca("mqlt grid CA")
    other = new_ca("some other grid CA")
    user_dn = dn((NameOID.ORGANIZATION_NAME, "mqlt"), (NameOID.COMMON_NAME, "pilot alice"))
    loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    server = new_leaf(ca, dn((NameOID.COMMON_NAME, "127.0.0.1")), sans=[loopback])
    user = new_leaf(ca, user_dn)
    expired = new_leaf(ca, dn((NameOID.COMMON_NAME, "pilot expired")), end=now - day)
    stranger = new_leaf(other, dn((NameOID.COMMON_NAME, "pilot stranger")))

    revoked_dn = dn((NameOID.ORGANIZATION_NAME, "mqlt"), (NameOID.COMMON_NAME, "pilot mallory"))
    revoked = new_leaf(ca, revoked_dn)
    proxy, proxy_key = _proxy(user_dn, user[0], now)
    revoked_proxy, revoked_proxy_key = _proxy(revoked_dn, revoked[0], now)
    ca_key = save("ca.key", pem_key(ca[0]))
    ca_pem = save("ca.pem", pem(ca[1]))
    crl = save("crl.pem", make_crl(ca_pem, ca_key, [revoked[1].serial_number]))
    cadir = directory / "certificates"
    cadir.mkdir(exist_ok=True)
    name_hash = _subject_hash(ca_pem)
    (cadir / f"{name_hash}.0").write_bytes(pem(ca[1]))
    (cadir / f"{name_hash}.r0").write_bytes(Path(crl).read_bytes())
    return PilotPKI(
        ca=ca_pem,
        ca_key=ca_key,
        server=save("server.pem", pem(server[1])),
        server_key=save("server.key", pem_key(server[0])),
        user=save("user.pem", pem(user[1])),
        user_key=save("user.key", pem_key(user[0])),
        proxy=save("proxy.pem", pem(proxy) + pem_key(proxy_key) + pem(user[1])),
        expired=save("expired.pem", pem(expired[1])),
        expired_key=save("expired.key", pem_key(expired[0])),
        stranger=save("stranger.pem", pem(stranger[1])),
        stranger_key=save("stranger.key", pem_key(stranger[0])),
        revoked=save("revoked.pem", pem(revoked[1])),
        revoked_key=save("revoked.key", pem_key(revoked[0])),
        revoked_proxy=save(
            "revoked_proxy.pem", pem(revoked_proxy) + pem_key(revoked_proxy_key) + pem(revoked[1])
        ),
        crl=crl,
        crl_empty=save("crl_empty.pem", make_crl(ca_pem, ca_key, [])),
        cadir=str(cadir),
    )


def _proxy(user_dn: Any, user_key: Any, now: datetime.datetime) -> tuple[Any, Any]:
    """An RFC 3820 proxy of ``user_dn`` signed by ``user_key``: subject = user subject + one
    CN (RFC 3820 3.4), critical ProxyCertInfo (inheritAll). Returns (certificate, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID, ObjectIdentifier

    proxy_key = ec.generate_private_key(ec.SECP256R1())
    serial = x509.random_serial_number()
    proxy_dn = x509.Name([*user_dn, x509.NameAttribute(NameOID.COMMON_NAME, str(serial % 10**9))])
    day = datetime.timedelta(days=1)
    proxy = (
        x509.CertificateBuilder()
        .subject_name(proxy_dn)
        .issuer_name(user_dn)
        .public_key(proxy_key.public_key())
        .serial_number(serial)
        .not_valid_before(now - day)
        .not_valid_after(now + day)
        .add_extension(
            x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.5.5.7.1.14"), _PROXY_CERT_INFO),
            critical=True,
        )
        .sign(user_key, hashes.SHA256())
    )
    return proxy, proxy_key


def make_crl(ca_pem: str, ca_key_pem: str, serials: list[int], *,
             next_update: datetime.timedelta = datetime.timedelta(days=7)) -> bytes:  # fmt: skip
    """A PEM CRL signed by the CA in ``ca_pem``/``ca_key_pem`` revoking ``serials``; its next
    update is ``next_update`` from now (negative: an expired CRL)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    ca = x509.load_pem_x509_certificate(Path(ca_pem).read_bytes())
    key = serialization.load_pem_private_key(Path(ca_key_pem).read_bytes(), None)
    now = datetime.datetime.now(datetime.timezone.utc)
    last = min(now, now + next_update) - datetime.timedelta(hours=1)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(last)
        .next_update(now + next_update)
    )
    for serial in serials:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(last)
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
    return crl.public_bytes(serialization.Encoding.PEM)


def _subject_hash(cert_pem: str) -> str:
    """OpenSSL's subject-name hash of a certificate (the ``<hash>`` of a hashed CA directory)."""
    out = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", cert_pem],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout.strip()
