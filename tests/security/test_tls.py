"""TLS everywhere it applies: AMQPS and STOMP over TLS against RabbitMQ, STOMP over TLS against
ActiveMQ, through the backends (``open_producer``/``open_consumer``) and through ``MQHandler``.

Verification is on by default and the host name is checked: a client that trusts another CA,
a server with an expired certificate and a server whose certificate names another host are each
refused with one :class:`~mqlogging.errors.ConnectError` line that says what is wrong. x509
client certificates log in without a password (RabbitMQ ``EXTERNAL`` on AMQP,
``ssl_cert_login`` on STOMP).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.helpers import unique_name, wait_until
from harness.tls import EXPIRED_SNI, PKI
from mqlogging import MQHandler
from mqlogging._ids import new_id
from mqlogging._types import Delivery, Message
from mqlogging.backends import open_consumer, open_producer
from mqlogging.backends.base import Consumer
from mqlogging.errors import ConnectError

PASSWORD = "guest"


@dataclass
class Target:
    """One TLS listener: how to build URLs for it, and where the expired certificate is."""

    name: str
    scheme: str
    port: int
    expired_port: int
    expired_sni: str | None

    def url(
        self,
        queue: str,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        login: str | None = f"guest:{PASSWORD}",
        **query: str,
    ) -> str:
        userinfo = f"{login}@" if login else ""
        where = f"{host}:{port or self.port}"
        if self.scheme == "amqps":
            query = {"exchange": f"{queue}.x", "queue": queue, "routing_key": "app", **query}
            path = "/"
        else:
            path = f"/queue/{queue}"
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return f"{self.scheme}://{userinfo}{where}{path}{'?' + qs if qs else ''}"

    def expired_url(self, queue: str, ca: str) -> str:
        if self.expired_sni:
            return self.url(queue, ca_certs=ca, server_hostname=self.expired_sni)
        return self.url(queue, port=self.expired_port, ca_certs=ca)


@pytest.fixture(params=["amqps-rabbitmq", "stomp+ssl-rabbitmq", "stomp+ssl-activemq"])
def target(request: pytest.FixtureRequest) -> Target:
    """Each TLS listener in turn (brokers start only when a test needs them)."""
    if request.param == "stomp+ssl-activemq":
        good = request.getfixturevalue("tls_activemq")
        expired = request.getfixturevalue("expired_activemq")
        return Target(request.param, "stomp+ssl", good.ssl_port, expired.ssl_port, None)
    rabbit = request.getfixturevalue("tls_rabbitmq")
    if request.param == "amqps-rabbitmq":
        return Target(request.param, "amqps", rabbit.amqps_port, 0, EXPIRED_SNI)
    return Target(request.param, "stomp+ssl", rabbit.stomps_port, 0, EXPIRED_SNI)


def _messages(n: int) -> list[Message]:
    return [Message(new_id(), f'{{"n":{i}}}'.encode()) for i in range(n)]


def _drain(consumer: Consumer, expected: int, timeout: float = 20.0) -> list[Delivery]:
    got: list[Delivery] = []

    def more() -> bool:
        batch = consumer.fetch(expected - len(got), 0.2)
        consumer.ack(batch)
        got.extend(batch)
        return len(got) >= expected

    wait_until(more, timeout=timeout, interval=0, message=f"{expected} deliveries")
    return got


def _refused(url: str) -> str:
    """Publish one message to ``url``; return the ConnectError's message (it must fail)."""
    with pytest.raises(ConnectError) as info, open_producer(url) as producer:
        producer.publish_batch(_messages(1))
    text = str(info.value)
    assert "\n" not in text, "errors are one line"
    assert PASSWORD not in text.replace("guest:***", "").replace("'guest'", "")
    return text


class TestServerVerification:
    def test_valid_client_round_trip(self, target: Target, pki: PKI) -> None:
        """A client that trusts the test CA connects, and 20 records make the round trip
        (same ids, none lost, none duplicated)."""
        queue = unique_name("mqlt-tls")
        url = target.url(queue, ca_certs=pki.ca)
        sent = _messages(20)
        with open_producer(url) as producer:
            producer.publish_batch(sent)
        with open_consumer(url) as consumer:
            got = _drain(consumer, 20)
        assert [m.id for m in sent] == [d.id for d in got]

    def test_wrong_ca_is_refused(self, target: Target, pki: PKI) -> None:
        """Trusting an unrelated CA: refused, the message says the certificate failed
        verification (no fallback to an unverified or plain connection)."""
        text = _refused(target.url(unique_name("mqlt-tls"), ca_certs=pki.other_ca))
        assert (
            "TLS certificate verification failed: self-signed certificate in certificate chain"
            in text
        )

    def test_expired_server_certificate_is_refused(self, target: Target, pki: PKI) -> None:
        """A server presenting an expired certificate (signed by the trusted CA) is refused
        and the message says it expired."""
        text = _refused(target.expired_url(unique_name("mqlt-tls"), pki.ca))
        assert "TLS certificate verification failed: certificate has expired" in text

    def test_wrong_hostname_is_refused(self, target: Target, pki: PKI) -> None:
        """Dialling ``localhost`` while the certificate names only 127.0.0.1 is refused with a
        hostname mismatch: the host name is checked, not only the chain."""
        text = _refused(target.url(unique_name("mqlt-tls"), host="localhost", ca_certs=pki.ca))
        assert "Hostname mismatch, certificate is not valid for 'localhost'" in text

    def test_verification_is_on_by_default(self, target: Target) -> None:
        """With no TLS options at all, the system trust store is used and the throwaway CA is
        not in it: refused. Verification is never off unless asked for."""
        text = _refused(target.url(unique_name("mqlt-tls")))
        assert "TLS certificate verification failed" in text

    def test_verify_false_is_an_explicit_opt_out(self, target: Target) -> None:
        """``verify=false`` (explicit) accepts the unverified server: the only way to skip
        the checks, and it is visible in the URL."""
        queue = unique_name("mqlt-tls")
        with open_producer(target.url(queue, verify="false")) as producer:
            producer.publish_batch(_messages(1))
        with open_consumer(target.url(queue, verify="false")) as consumer:
            assert len(_drain(consumer, 1)) == 1


class TestClientCertificates:
    @pytest.mark.parametrize(
        ("port_attr", "name", "scheme"),
        [("amqps_port", "amqps", "amqps"), ("stomps_port", "stomps", "stomp+ssl")],
        ids=["amqp-external", "stomp-ssl-cert-login"],
    )
    def test_certificate_login(
        self, tls_rabbitmq: object, pki: PKI, port_attr: str, name: str, scheme: str
    ) -> None:
        """A client certificate and no user name log in as the certificate's CN ``mqlt-x509``
        (a user without password): AMQPS through ``EXTERNAL``, STOMP over TLS through RabbitMQ's
        ``ssl_cert_login``; 10 records round-trip."""
        target = Target(name, scheme, getattr(tls_rabbitmq, port_attr), 0, None)
        queue = unique_name("mqlt-x509")
        url = target.url(
            queue, login=None, ca_certs=pki.ca, certfile=pki.client, keyfile=pki.client_key
        )
        sent = _messages(10)
        with open_producer(url) as producer:
            producer.publish_batch(sent)
        with open_consumer(url) as consumer:
            assert [m.id for m in sent] == [d.id for d in _drain(consumer, 10)]

    def test_stomp_without_certificate_or_login_is_refused(
        self, tls_rabbitmq: object, pki: PKI
    ) -> None:
        """The same connection without the client certificate is refused: the certificate,
        not some default user, did the login in the test above."""
        port = tls_rabbitmq.stomps_port  # type: ignore[attr-defined]
        target = Target("stomps", "stomp+ssl", port, 0, None)
        text = _refused(target.url(unique_name("mqlt-x509"), login=None, ca_certs=pki.ca))
        assert "refused" in text


class TestHandlerOverTLS:
    def _logger(self, handler: logging.Handler) -> logging.Logger:
        logger = logging.getLogger(unique_name("mqlt.tls"))
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        return logger

    def test_handler_delivers_over_tls(self, target: Target, pki: PKI) -> None:
        """MQHandler with a TLS endpoint delivers every record once (50 emitted, 50 consumed,
        distinct ids)."""
        queue = unique_name("mqlt-tls-h")
        url = target.url(queue, ca_certs=pki.ca)
        if target.scheme == "amqps":
            with open_consumer(url):
                pass  # declare the queue before the first record
        handler = MQHandler(url, spool=False, close_timeout=20.0)
        logger = self._logger(handler)
        try:
            for i in range(50):
                logger.info("tls record %d", i)
            assert handler.flush(20.0)
        finally:
            handler.close()
        with open_consumer(url) as consumer:
            got = _drain(consumer, 50)
        assert len({d.id for d in got}) == 50
        assert handler.stats()["confirmed"] == 50

    def test_handler_refuses_untrusted_server(
        self, target: Target, pki: PKI, tmp_path: Path, capfd: pytest.CaptureFixture[str]
    ) -> None:
        """MQHandler never sends to a server it cannot verify: with a wrong CA nothing is
        confirmed, the records wait in the spool, and the reason reaches stderr and stats."""
        url = target.url(unique_name("mqlt-tls-h"), ca_certs=pki.other_ca)
        handler = MQHandler(url, spool=str(tmp_path / "spool"), close_timeout=2.0, retry_max=1.0)
        logger = self._logger(handler)
        try:
            for i in range(5):
                logger.info("never sent %d", i)
            stats: Callable[[], dict[str, object]] = handler.stats
            wait_until(lambda: stats()["spooled"] == 5, timeout=20.0, message="5 spooled")
        finally:
            handler.close()
        s = handler.stats()
        assert s["confirmed"] == 0
        errors = [e["last_error"] for e in s["endpoints"].values()]  # type: ignore[attr-defined]
        assert any(
            "certificate verify" in str(e) or "verification failed" in str(e) for e in errors
        )
        assert "verification failed" in capfd.readouterr().err
