"""TLS-enabled variants of the private brokers, for the security tests (and anyone else).

- :class:`TLSRabbitMQ` — a RabbitMQ node with an AMQPS listener and a STOMP-over-TLS listener,
  ``verify_peer`` (a client certificate is checked when sent, optional otherwise), the
  ``rabbitmq_auth_mechanism_ssl`` plugin for x509 login (``EXTERNAL`` on AMQP,
  ``ssl_cert_login`` on STOMP), and the password-less user ``mqlt-x509`` (the client
  certificate's CN). The same listeners serve the *expired* certificate to clients that ask for
  ``expired.mqlt.test`` by SNI (Erlang's ``sni_hosts``), so one node covers every case.
- :func:`make_tls_activemq` — an ActiveMQ broker with a ``stomp+ssl`` connector, PKCS#12 key and
  trust stores in ``<sslContext>``. Java picks the key store's only key, so a broker presenting
  the expired certificate needs a broker of its own (pass ``pki.expired_p12``).

The certificates come from :func:`harness.tls.make_pki`. Like :mod:`harness.brokers`, nothing
here imports pytest.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass

from harness.brokers import HOST, ActiveMQ, RabbitMQ, reserve_port
from harness.tls import CLIENT_CN, EXPIRED_SNI, PKI, STORE_PASSWORD

__all__ = ["TLSActiveMQ", "TLSRabbitMQ", "make_tls_activemq"]


def _rabbit_hash(password: str) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


class TLSRabbitMQ(RabbitMQ):
    """A private node with TLS listeners (``.amqps_port``, ``.stomps_port``) and the x509
    (``EXTERNAL``) login plugin."""

    def __init__(self, pki: PKI) -> None:
        self.amqps_port = reserve_port()
        self.stomps_port = reserve_port({self.amqps_port})
        expired = f'[{{certfile,"{pki.expired}"}},{{keyfile,"{pki.expired_key}"}}]'
        sni = f'{{sni_hosts,[{{"{EXPIRED_SNI}",{expired}}}]}}'
        ssl_options = (
            f'[{{cacertfile,"{pki.ca}"}},{{certfile,"{pki.server}"}},{{keyfile,"{pki.server_key}"}},'
            f"{{verify,verify_peer}},{{fail_if_no_peer_cert,false}},{sni}]"
        )
        super().__init__(
            extra_erl_args=" ".join(
                [
                    f'-rabbit ssl_listeners [{{"{HOST}",{self.amqps_port}}}]',
                    f"-rabbit ssl_options {ssl_options}",
                    f'-rabbitmq_stomp ssl_listeners [{{"{HOST}",{self.stomps_port}}}]',
                    "-rabbitmq_stomp ssl_cert_login true",
                    # No implicit guest login for a CONNECT without credentials: a STOMP
                    # session without login header succeeds only through its certificate.
                    "-rabbitmq_stomp default_user []",
                ]
            ),
            extra_config="",
        )
        if " " in ssl_options:
            msg = "Erlang terms in ERL args must not contain spaces (a path has one?)"
            raise ValueError(msg)
        self.extra_config = self._auth_config()

    def _auth_config(self) -> str:
        """Users come from a definitions file imported at boot: three rabbitmqctl calls would
        cost 5-10 s. mqlt-x509 has no password, so only its certificate can log it in."""
        definitions = {
            "users": [
                {"name": "guest", "password_hash": _rabbit_hash("guest"),
                 "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"]},
                {"name": CLIENT_CN, "password_hash": "",
                 "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []},
            ],
            "vhosts": [{"name": "/"}],
            "permissions": [
                {"user": user, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
                for user in ("guest", CLIENT_CN)
            ],
        }  # fmt: skip
        defs_path = self.dir / "definitions.json"
        defs_path.write_text(json.dumps(definitions))
        return "\n".join(
            [
                "auth_mechanisms.1 = PLAIN",
                "auth_mechanisms.2 = AMQPLAIN",
                "auth_mechanisms.3 = EXTERNAL",
                "ssl_cert_login_from = common_name",
                f"load_definitions = {defs_path}",
            ]
        )

    def _prepare(self) -> None:
        super()._prepare()
        plugins = ["rabbitmq_stomp", "rabbitmq_auth_mechanism_ssl"]
        if self.management_port:
            plugins.append("rabbitmq_management")
        (self.dir / "conf" / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")

    @property
    def ports(self) -> tuple[int, ...]:
        return (*super().ports, self.amqps_port, self.stomps_port)


@dataclass
class TLSActiveMQ:
    """An ActiveMQ broker and the port of its ``stomp+ssl`` connector."""

    broker: ActiveMQ
    ssl_port: int


def make_tls_activemq(pki: PKI, keystore: str) -> TLSActiveMQ:
    """An ActiveMQ broker (not started) whose ``stomp+ssl`` connector presents the key in
    *keystore* (``pki.server_p12`` or ``pki.expired_p12``) and trusts the test CA."""
    port = reserve_port()
    ssl_context = (
        "<sslContext>"
        f'<sslContext keyStore="file:{keystore}" keyStorePassword="{STORE_PASSWORD}" '
        'keyStoreType="pkcs12" '
        f'trustStore="file:{pki.truststore_p12}" trustStorePassword="{STORE_PASSWORD}" '
        'trustStoreType="pkcs12"/>'
        "</sslContext>"
    )
    connector = f'<transportConnector name="stomp+ssl" uri="stomp+ssl://{HOST}:{port}"/>'
    broker = ActiveMQ(extra_xml=ssl_context, extra_connectors=connector, extra_ports=(port,))
    return TLSActiveMQ(broker, port)
