"""Private TLS-enabled brokers for the security tests, started once per session.

The brokers themselves are :mod:`harness.tls_brokers`; these are the session fixtures.

- :func:`pki` — the throwaway CA and certificates of :mod:`harness.tls`.
- :func:`tls_rabbitmq` — :class:`~harness.tls_brokers.TLSRabbitMQ`: AMQPS and STOMP-over-TLS
  listeners, x509 login, the expired certificate served by SNI.
- :func:`tls_activemq` / :func:`expired_activemq` — ActiveMQ brokers with a ``stomp+ssl``
  connector; the second one presents the expired certificate.
- :func:`mgmt_rabbitmq` — a separate node with the management plugin, for
  ``mqlogging rabbitmq setup`` (least privilege).

Nobody stops or kills these brokers in the tests, so there is no per-test restart fixture.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from harness.brokers import ActiveMQ, BrokerNotInstalled, RabbitMQ
from harness.tls import PKI, make_pki
from harness.tls_brokers import TLSActiveMQ, TLSRabbitMQ, make_tls_activemq


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """CA, server, expired-server and client certificates, generated once per session."""
    return make_pki(tmp_path_factory.mktemp("pki"))


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


@pytest.fixture(scope="session")
def _activemq_pair(pki: PKI) -> Iterator[tuple[TLSActiveMQ, TLSActiveMQ]]:
    """Both TLS ActiveMQ brokers, booted in parallel (a JVM start costs seconds each)."""
    pair = (make_tls_activemq(pki, pki.server_p12), make_tls_activemq(pki, pki.expired_p12))
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
