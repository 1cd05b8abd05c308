"""A throwaway grid PKI for the HTTPS ingest tests: a CA, users, and an RFC 3820 proxy.

:func:`make_pilot_pki` writes into one directory:

=================  ===========================================================================
``ca``             the test CA (PEM): the ingest's ``client_ca``, the handler's ``ca_certs``
``server``/_key    the ingest's certificate for ``127.0.0.1`` (IP SAN)
``user``/_key      a user certificate, subject :data:`USER_DN` (``CN=pilot alice,O=mqlt``)
``proxy``          an RFC 3820 proxy made from the user certificate, as grid tools write it:
                   one file with the proxy certificate, its key and the user certificate;
                   subject ``USER_DN`` + ``CN=<serial>``, ProxyCertInfo (inheritAll), critical
``expired``/_key   a user certificate of the same CA whose validity ended yesterday
``stranger``/_key  a user certificate from an unrelated CA
=================  ===========================================================================

Nothing here imports pytest.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["USER_DN", "PilotPKI", "make_pilot_pki"]

USER_DN = "CN=pilot alice,O=mqlt"
"""The RFC 4514 subject of the user certificate: the identity the ingest must report."""

# ProxyCertInfo ::= SEQUENCE { proxyPolicy SEQUENCE { policyLanguage id-ppl-inheritAll } }
_PROXY_CERT_INFO = bytes.fromhex("300c300a06082b06010505071501")


@dataclass(frozen=True)
class PilotPKI:
    """Paths of the generated PEM files (see the module docstring)."""

    ca: str
    server: str
    server_key: str
    user: str
    user_key: str
    proxy: str
    expired: str
    expired_key: str
    stranger: str
    stranger_key: str


def make_pilot_pki(directory: Path) -> PilotPKI:
    """Generate the files of the module docstring into ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID, ObjectIdentifier

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

    # The proxy: signed by the user's key, subject = user subject + one CN (RFC 3820 3.4).
    proxy_key = ec.generate_private_key(ec.SECP256R1())
    serial = x509.random_serial_number()
    proxy_dn = x509.Name([*user_dn, x509.NameAttribute(NameOID.COMMON_NAME, str(serial % 10**9))])
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
        .sign(user[0], hashes.SHA256())
    )
    return PilotPKI(
        ca=save("ca.pem", pem(ca[1])),
        server=save("server.pem", pem(server[1])),
        server_key=save("server.key", pem_key(server[0])),
        user=save("user.pem", pem(user[1])),
        user_key=save("user.key", pem_key(user[0])),
        proxy=save("proxy.pem", pem(proxy) + pem_key(proxy_key) + pem(user[1])),
        expired=save("expired.pem", pem(expired[1])),
        expired_key=save("expired.key", pem_key(expired[0])),
        stranger=save("stranger.pem", pem(stranger[1])),
        stranger_key=save("stranger.key", pem_key(stranger[0])),
    )
