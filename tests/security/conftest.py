"""Private TLS-enabled brokers for the security tests, started once per session.

- :func:`pki` — the throwaway CA and certificates of :mod:`tests.tls`.
- :func:`tls_rabbitmq` — a RabbitMQ node with an AMQPS listener and a STOMP-over-TLS listener,
  ``verify_peer`` (a client certificate is checked when sent, optional otherwise), the
  ``rabbitmq_auth_mechanism_ssl`` plugin for x509 login (``EXTERNAL`` on AMQP,
  ``ssl_cert_login`` on STOMP), and the password-less user ``mqlt-x509`` (the client
  certificate's CN). The same listeners serve the *expired* certificate to clients that ask for
  ``expired.mqlt.test`` by SNI (Erlang's ``sni_hosts``), so one node covers every case.
- :func:`tls_activemq` / :func:`expired_activemq` — ActiveMQ brokers with a ``stomp+ssl``
  connector, PKCS#12 key and trust stores in ``<sslContext>``; the second one presents the
  expired certificate (Java picks the key store's only key, so it needs a broker of its own).
- :func:`mgmt_rabbitmq` — a separate node with the management plugin, for
  ``mqlogging rabbitmq setup`` (least privilege).

Nobody stops or kills these brokers in the tests, so there is no per-test restart fixture.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.brokers import HOST, ActiveMQ, BrokerNotInstalled, RabbitMQ, _reserve_port
from tests.tls import CLIENT_CN, EXPIRED_SNI, PKI, STORE_PASSWORD, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """CA, server, expired-server and client certificates, generated once per session."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def _rabbit_hash(password: str) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


class TLSRabbitMQ(RabbitMQ):
    """A private node with TLS listeners and the x509 (``EXTERNAL``) login plugin."""

    def __init__(self, pki: PKI) -> None:
        self.amqps_port = _reserve_port()
        self.stomps_port = _reserve_port({self.amqps_port})
        sni = f'{{sni_hosts,[{{"{EXPIRED_SNI}",[{{certfile,"{pki.expired}"}},{{keyfile,"{pki.expired_key}"}}]}}]}}'
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
        assert " " not in ssl_options, "Erlang terms in ERL args must not contain spaces"
        # Users come from a definitions file imported at boot: three rabbitmqctl calls would
        # cost 5-10 s. mqlt-x509 has no password, so only its certificate can log it in.
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
        self.extra_config = "\n".join(
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


def _start(broker: RabbitMQ | ActiveMQ) -> None:
    try:
        broker.ensure_running()
    except BrokerNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def tls_rabbitmq(pki: PKI) -> Iterator[TLSRabbitMQ]:
    """The TLS RabbitMQ node (``.amqps_port``, ``.stomps_port``), booted on first use."""
    broker = TLSRabbitMQ(pki)
    try:
        _start(broker)
        yield broker
    finally:
        broker.close()


@dataclass
class TLSActiveMQ:
    """An ActiveMQ broker and the port of its ``stomp+ssl`` connector."""

    broker: ActiveMQ
    ssl_port: int


def _activemq(pki: PKI, keystore: str) -> TLSActiveMQ:
    port = _reserve_port()
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


@pytest.fixture(scope="session")
def _activemq_pair(pki: PKI) -> Iterator[tuple[TLSActiveMQ, TLSActiveMQ]]:
    """Both TLS ActiveMQ brokers, booted in parallel (a JVM start costs seconds each)."""
    pair = (_activemq(pki, pki.server_p12), _activemq(pki, pki.expired_p12))
    errors: list[BaseException] = []

    def boot(amq: TLSActiveMQ) -> None:
        try:
            amq.broker.ensure_running()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=boot, args=(amq,)) for amq in pair]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            if isinstance(errors[0], BrokerNotInstalled):
                pytest.fail(str(errors[0]), pytrace=False)
            raise errors[0]
        yield pair
    finally:
        for amq in pair:
            amq.broker.close()


@pytest.fixture(scope="session")
def tls_activemq(_activemq_pair: tuple[TLSActiveMQ, TLSActiveMQ]) -> TLSActiveMQ:
    """ActiveMQ with a ``stomp+ssl`` connector presenting the valid server certificate."""
    return _activemq_pair[0]


@pytest.fixture(scope="session")
def expired_activemq(_activemq_pair: tuple[TLSActiveMQ, TLSActiveMQ]) -> TLSActiveMQ:
    """ActiveMQ whose ``stomp+ssl`` connector presents the expired server certificate."""
    return _activemq_pair[1]


@pytest.fixture(scope="session")
def mgmt_rabbitmq() -> Iterator[RabbitMQ]:
    """A private node with the management plugin (HTTP API on ``.management_port``)."""
    broker = RabbitMQ(management_port=0)
    try:
        _start(broker)
        yield broker
    finally:
        broker.close()
