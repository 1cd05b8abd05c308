"""A throwaway public-key infrastructure for the TLS tests, built with ``cryptography``.

:func:`make_pki` writes, into one directory, everything the TLS tests need to prove that
verification is on and says what is wrong:

=====================  ========================================================================
``ca``                 the test CA (PEM); clients trust it with ``ca_certs=``
``other_ca``           an unrelated CA: trusting it instead is the "wrong CA" case
``server``             server certificate for ``127.0.0.1`` only (IP SAN, no DNS name), so
                       dialling ``localhost`` is a genuine hostname mismatch
``expired``            server certificate, valid for ``127.0.0.1`` and ``expired.mqlt.test``,
                       whose validity ended yesterday (RabbitMQ serves it by SNI, see
                       ``tests/security/conftest.py``)
``client``             client certificate, CN ``mqlt-x509`` (the RabbitMQ user for EXTERNAL)
``*_key``              the matching private keys (PEM, unencrypted)
``server_p12``         PKCS#12 key store (server key + chain) for Java brokers (ActiveMQ)
``expired_p12``        the same for the expired certificate
``truststore_p12``     PKCS#12 Java trust store holding the test CA
=====================  ========================================================================

Generation costs ~50 ms (EC P-256 keys), so a session builds the set once
(``tests/security/conftest.py`` has the session fixture). Nothing here imports pytest, so the
benchmarks can use it too. The PKCS#12 password is :data:`STORE_PASSWORD` (it protects
nothing: the files live in a temporary directory of the test run).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CLIENT_CN", "EXPIRED_SNI", "PKI", "STORE_PASSWORD", "make_pki"]

#: Common name of the client certificate; RabbitMQ maps it to a user of the same name.
CLIENT_CN = "mqlt-x509"
#: SNI name under which the TLS RabbitMQ node serves the expired certificate.
EXPIRED_SNI = "expired.mqlt.test"
#: Password of the PKCS#12 stores (Java refuses password-less key stores).
STORE_PASSWORD = "mqlt-store-pass"


@dataclass(frozen=True)
class PKI:
    """Paths of the generated files (see the module docstring for what each one is)."""

    directory: Path
    ca: str
    other_ca: str
    server: str
    server_key: str
    expired: str
    expired_key: str
    client: str
    client_key: str
    server_p12: str
    expired_p12: str
    truststore_p12: str

    def as_dict(self) -> dict[str, str]:
        """The PEM paths under the names the older ``tests/backends`` fixtures used."""
        return {
            "ca": self.ca,
            "other_ca": self.other_ca,
            "server": self.server,
            "server_key": self.server_key,
            "client": self.client,
            "client_key": self.client_key,
        }


def make_pki(directory: Path) -> PKI:
    """Generate the CA, server, expired-server and client certificates into ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)

    def save_key(name: str, key: Any) -> str:
        path = directory / f"{name}.key"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        return str(path)

    def save_cert(name: str, cert: Any) -> str:
        path = directory / f"{name}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return str(path)

    def name(cn: str) -> Any:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def make_ca(cn: str) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - day)
            .not_valid_after(now + 30 * day)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        return key, cert

    def issue(
        ca_key: Any,
        ca_cert: Any,
        cn: str,
        *,
        server: bool,
        sans: list[Any] | None = None,
        not_before: datetime.datetime = now - day,
        not_after: datetime.datetime = now + 30 * day,
    ) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    def p12(name_: str, key: Any, cert: Any, ca_cert: Any) -> str:
        path = directory / f"{name_}.p12"
        path.write_bytes(
            pkcs12.serialize_key_and_certificates(
                name_.encode(), key, cert, [ca_cert],
                serialization.BestAvailableEncryption(STORE_PASSWORD.encode()),
            )
        )  # fmt: skip
        return str(path)

    loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    ca_key, ca_cert = make_ca("mqlogging test CA")
    _, other_ca = make_ca("some other CA")
    server_key, server_cert = issue(ca_key, ca_cert, "127.0.0.1", server=True, sans=[loopback])
    expired_key, expired_cert = issue(
        ca_key, ca_cert, EXPIRED_SNI, server=True,
        sans=[loopback, x509.DNSName(EXPIRED_SNI)],
        not_before=now - 10 * day, not_after=now - day,
    )  # fmt: skip
    client_key, client_cert = issue(ca_key, ca_cert, CLIENT_CN, server=False)

    truststore = directory / "truststore.p12"
    truststore.write_bytes(
        pkcs12.serialize_java_truststore(
            [pkcs12.PKCS12Certificate(ca_cert, b"mqlt-ca")],
            serialization.BestAvailableEncryption(STORE_PASSWORD.encode()),
        )
    )
    return PKI(
        directory=directory,
        ca=save_cert("ca", ca_cert),
        other_ca=save_cert("other_ca", other_ca),
        server=save_cert("server", server_cert),
        server_key=save_key("server", server_key),
        expired=save_cert("expired", expired_cert),
        expired_key=save_key("expired", expired_key),
        client=save_cert("client", client_cert),
        client_key=save_key("client", client_key),
        server_p12=p12("server", server_key, server_cert, ca_cert),
        expired_p12=p12("expired", expired_key, expired_cert, ca_cert),
        truststore_p12=str(truststore),
    )
