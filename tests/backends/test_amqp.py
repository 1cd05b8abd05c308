"""The AMQP backend against a real RabbitMQ node (private, from ``harness/brokers.py``).

Every test uses its own queue (and exchange) name; tests that stop or kill the broker leave it
to the ``rabbitmq`` fixture to start it again for the next test.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
import stomp

from harness.brokers import RabbitMQ
from harness.helpers import BlackholeServer, free_port, wait_until
from harness.proxy import in_front
from harness.tls import make_pki
from mqlogging._ids import new_id
from mqlogging._types import Delivery, Message
from mqlogging.backends.amqp import AMQPConsumer, AMQPProducer
from mqlogging.errors import BackendError, ConnectError, NotConfirmed, PublishTimeout

pytestmark = pytest.mark.rabbitmq

SECRET = "s3cret-Pa55word-never-shown"


def _messages(n: int, tag: str = "m") -> list[Message]:
    return [Message(new_id(), f'{{"id":"{tag}-{i}","n":{i}}}'.encode()) for i in range(n)]


def _url(rabbitmq: RabbitMQ, queue: str, **query: str) -> str:
    params = {"exchange": f"{queue}.x", "queue": queue, "routing_key": "app.logs"}
    params.update(query)
    return rabbitmq.amqp_url + "?" + "&".join(f"{k}={v}" for k, v in params.items())


def _drain(consumer: AMQPConsumer, expected: int, timeout: float = 20.0) -> list[Delivery]:
    """Fetch and ack until ``expected`` deliveries arrived (or fail at the deadline)."""
    got: list[Delivery] = []

    def more() -> bool:
        batch = consumer.fetch(500, 0.2)
        consumer.ack(batch)
        got.extend(batch)
        return len(got) >= expected

    wait_until(more, timeout=timeout, interval=0, message=f"{expected} deliveries")
    return got


def _ids(items: list[Delivery] | list[Message]) -> list[str]:
    return [item.id for item in items]


class TestRoundTrip:
    def test_amqp_to_amqp_preserves_ids_and_order(
        self, rabbitmq: RabbitMQ, queue_name: str
    ) -> None:
        """Batches published with confirms arrive once each, in order, with their record ids;
        the consumer starts first and declares the topology itself."""
        url = _url(rabbitmq, queue_name)
        sent = _messages(1200)
        with AMQPConsumer(url) as consumer, AMQPProducer(url) as producer:
            assert consumer.fetch(10, 0.1) == []  # declares exchange, queue and binding
            for start in range(0, len(sent), 500):
                producer.publish_batch(sent[start : start + 500])
            got = _drain(consumer, len(sent))
        assert _ids(sent) == _ids(got)
        assert [m.body for m in sent] == [d.body for d in got]
        assert not any(d.redelivered for d in got)
        assert rabbitmq.queue_depth(queue_name) == 0

    def test_message_properties(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """Each message is persistent JSON with the record id as ``message_id`` and as the
        ``mqlogging-id`` header."""
        msg = _messages(1)[0]
        with AMQPProducer(_url(rabbitmq, queue_name)) as producer:
            producer.publish_batch([msg])
        with rabbitmq.amqp_channel() as ch:
            method, props, body = ch.basic_get(queue_name, auto_ack=True)
        assert method is not None
        assert (msg.id, msg.body) == (props.message_id, body)
        assert (props.delivery_mode, props.content_type) == (2, "application/json")
        assert {"mqlogging-id": msg.id} == props.headers

    def test_transient_when_persistent_false(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """``persistent=false`` publishes with delivery mode 1."""
        with AMQPProducer(_url(rabbitmq, queue_name, persistent="false")) as producer:
            producer.publish_batch(_messages(1))
        with rabbitmq.amqp_channel() as ch:
            _, props, _ = ch.basic_get(queue_name, auto_ack=True)
        assert props.delivery_mode == 1

    def test_default_exchange_routes_to_queue(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """With ``exchange=`` (empty) records go through the default exchange to ``queue``."""
        url = f"{rabbitmq.amqp_url}?exchange=&queue={queue_name}"
        sent = _messages(20)
        with AMQPProducer(url) as producer:
            producer.publish_batch(sent)
        with AMQPConsumer(url) as consumer:
            assert _ids(sent) == _ids(_drain(consumer, 20))

    def test_amqp_to_stomp(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """Records published over AMQP are readable over STOMP from the same RabbitMQ queue,
        with the record id in the ``mqlogging-id`` header."""
        sent = _messages(50)
        with AMQPProducer(_url(rabbitmq, queue_name)) as producer:
            producer.publish_batch(sent)
        frames: list[Any] = []
        lock = threading.Lock()

        class Listener(stomp.ConnectionListener):  # type: ignore[misc]
            def on_message(self, frame: Any) -> None:
                with lock:
                    frames.append(frame)

        conn = stomp.Connection([(rabbitmq.host, rabbitmq.stomp_port)], heartbeats=(0, 0))
        conn.set_listener("l", Listener())
        conn.connect("guest", "guest", wait=True)
        try:
            conn.subscribe(f"/amq/queue/{queue_name}", id="1", ack="auto")
            wait_until(lambda: len(frames) >= 50, message="50 STOMP messages")
        finally:
            conn.disconnect()
        assert _ids(sent) == [f.headers["mqlogging-id"] for f in frames]
        assert [m.body.decode() for m in sent] == [f.body for f in frames]
        assert {"application/json"} == {f.headers["content-type"] for f in frames}


class TestTopology:
    def test_unroutable_message_is_not_confirmed(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """A batch to an exchange with no matching binding raises NotConfirmed (mandatory +
        basic.return), and once a queue is bound the same producer publishes fine."""
        exchange = f"{queue_name}.x"
        with rabbitmq.amqp_channel() as ch:
            ch.exchange_declare(exchange, exchange_type="topic", durable=True)
        url = _url(rabbitmq, queue_name, declare="false")
        with AMQPProducer(url) as producer:
            with pytest.raises(NotConfirmed, match=r"unroutable.*312 NO_ROUTE"):
                producer.publish_batch(_messages(5))
            with rabbitmq.amqp_channel() as ch:
                ch.queue_declare(queue_name, durable=True)
                ch.queue_bind(queue_name, exchange, routing_key="#")
            sent = _messages(5)
            producer.publish_batch(sent)
        assert rabbitmq.queue_depth(queue_name) == 5

    def test_declare_false_names_missing_exchange(
        self, rabbitmq: RabbitMQ, queue_name: str
    ) -> None:
        """``declare=false`` with an absent exchange fails at connect with its name and the fix."""
        with (
            AMQPProducer(_url(rabbitmq, queue_name, declare="false")) as producer,
            pytest.raises(ConnectError) as info,
        ):
            producer.publish_batch(_messages(1))
        assert f"exchange '{queue_name}.x' does not exist" in str(info.value)
        assert "declare=true" in str(info.value)

    def test_consumer_declare_false_names_missing_queue(
        self, rabbitmq: RabbitMQ, queue_name: str
    ) -> None:
        """A consumer with ``declare=false`` and no queue says which queue is missing."""
        url = f"{rabbitmq.amqp_url}?exchange=&queue={queue_name}&declare=false"
        with AMQPConsumer(url) as consumer, pytest.raises(ConnectError) as info:
            consumer.fetch(1, 0.1)
        assert f"queue '{queue_name}' does not exist" in str(info.value)

    def test_existing_queue_with_other_arguments(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """A queue that exists as classic while the endpoint asks for quorum gives a one-line
        error that names the differing argument and the fix; no queue is changed."""
        with AMQPProducer(_url(rabbitmq, queue_name)) as producer:
            producer.publish_batch(_messages(1))
        with (
            AMQPProducer(_url(rabbitmq, queue_name, queue_type="quorum")) as producer,
            pytest.raises(ConnectError) as info,
        ):
            producer.publish_batch(_messages(1))
        text = str(info.value)
        assert "\n" not in text
        assert f"queue '{queue_name}' already exists with different settings" in text
        assert "x-queue-type" in text
        assert "queue_type" in text
        assert rabbitmq.queue_depth(queue_name) == 1

    def test_quorum_queue_with_dead_letter_exchange(
        self, rabbitmq: RabbitMQ, queue_name: str
    ) -> None:
        """``queue_type=quorum`` and ``dead_letter_exchange`` are declared: a message rejected
        without requeue lands in the dead-letter queue; the others stay."""
        dlx, dlq = f"{queue_name}.dlx", f"{queue_name}.dead"
        with rabbitmq.amqp_channel() as ch:
            ch.exchange_declare(dlx, exchange_type="fanout", durable=True)
            ch.queue_declare(dlq, durable=True)
            ch.queue_bind(dlq, dlx)
        url = _url(rabbitmq, queue_name, queue_type="quorum", dead_letter_exchange=dlx)
        sent = _messages(3)
        with AMQPProducer(url) as producer:
            producer.publish_batch(sent)
        with AMQPConsumer(url) as consumer:
            got = wait_until(lambda: consumer.fetch(3, 0.2) or None)
            consumer.nack(got[:1], requeue=False)
            consumer.ack(got[1:])
        wait_until(lambda: rabbitmq.queue_depth(dlq) == 1, message="one dead letter")
        with rabbitmq.amqp_channel() as ch:
            _, props, _ = ch.basic_get(dlq, auto_ack=True)
            arguments = ch.queue_declare(queue_name, passive=True)
        assert sent[0].id == props.message_id
        assert arguments.method.message_count == 0


class TestFaults:
    def test_confirms_are_real_when_broker_is_killed(
        self, rabbitmq: RabbitMQ, queue_name: str
    ) -> None:
        """SIGKILL of the broker while batches are in flight: the batch in flight is reported
        unconfirmed, every message reported confirmed before is in the queue after the
        restart, and the same producer publishes again once the broker is back."""
        url = _url(rabbitmq, queue_name)
        confirmed: list[str] = []
        failures: list[BaseException] = []
        stop = threading.Event()
        producer = AMQPProducer(url)

        def publish() -> None:
            while not stop.is_set():
                batch = _messages(500)
                try:
                    producer.publish_batch(batch)
                except BackendError as exc:
                    failures.append(exc)
                    return
                confirmed.extend(_ids(batch))

        worker = threading.Thread(target=publish, daemon=True)
        worker.start()
        try:
            wait_until(lambda: len(confirmed) >= 1500, timeout=30, message="3 confirmed batches")
            rabbitmq.sync_definitions()  # the queue is new: see RabbitMQ.sync_definitions
            rabbitmq.kill()
            worker.join(timeout=30)
        finally:
            stop.set()
        assert not worker.is_alive()
        assert len(failures) == 1
        assert isinstance(failures[0], (PublishTimeout, ConnectError))
        rabbitmq.start()
        stored: set[str] = set()
        with AMQPConsumer(url) as consumer:
            depth = rabbitmq.queue_depth(queue_name)
            stored.update(_ids(_drain(consumer, depth)))
        assert set(confirmed) <= stored
        # The producer recovers on the same object, reconnecting on its own.
        again = _messages(10)
        producer.publish_batch(again)
        producer.close()
        assert rabbitmq.queue_depth(queue_name) == 10

    def test_broker_down_at_start_then_recovery(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """With the broker down, publish raises ConnectError promptly (nothing sent); after the
        broker starts, the same producer publishes and the consumer reads it. (The broker is
        down and back through :func:`harness.proxy.in_front`: refused, then reachable.)"""
        down, url = in_front(_url(rabbitmq, queue_name, connect_timeout="2"), rabbitmq.amqp_port)
        try:
            producer = AMQPProducer(url)
            with pytest.raises(ConnectError, match="connection refused"):
                producer.publish_batch(_messages(3))
            with pytest.raises(ConnectError):
                AMQPConsumer(url).fetch(1, 0.1)
            down.start()
            sent = _messages(3)
            producer.publish_batch(sent)
            producer.close()
            with AMQPConsumer(url) as consumer:
                assert _ids(sent) == _ids(_drain(consumer, 3))
        finally:
            down.close()

    def test_blackhole_times_out_and_fails_over(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """A host that accepts TCP but never answers costs about connect_timeout, then the next
        host of the URL (the real broker) takes the batch; alone, it raises ConnectError."""
        with BlackholeServer() as hole:
            alone = f"amqp://guest:guest@127.0.0.1:{hole.port}/?connect_timeout=1"
            started = time.monotonic()
            with pytest.raises(ConnectError, match="no answer within connect_timeout=1s"):
                AMQPProducer(alone).publish_batch(_messages(1))
            assert time.monotonic() - started < 10  # generous: 1 s timeout, loaded machine
            both = (
                f"amqp://guest:guest@127.0.0.1:{hole.port},127.0.0.1:{rabbitmq.amqp_port}/"
                f"?connect_timeout=1&exchange={queue_name}.x&queue={queue_name}"
            )
            sent = _messages(5)
            with AMQPProducer(both) as producer:
                producer.publish_batch(sent)
            assert hole.accepted >= 2
        assert rabbitmq.queue_depth(queue_name) == 5

    def test_refused_host_lists_every_host(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """When no host works the error names each host and why, on one line."""
        port1, port2 = free_port(), free_port()
        url = f"amqp://guest:guest@127.0.0.1:{port1},127.0.0.1:{port2}/"
        with pytest.raises(ConnectError) as info:
            AMQPProducer(url).publish_batch(_messages(1))
        text = str(info.value)
        assert f"127.0.0.1:{port1}: connection refused; 127.0.0.1:{port2}: connection refused" in (
            text
        )
        assert "\n" not in text

    def test_consumer_survives_broker_restart(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """Deliveries in hand when the broker dies are redelivered after the restart; acking
        the stale ones is a no-op; nothing is lost or left over."""
        url = _url(rabbitmq, queue_name)
        sent = _messages(20)
        with AMQPProducer(url) as producer:
            producer.publish_batch(sent)
        consumer = AMQPConsumer(url, prefetch=10)
        first = wait_until(lambda: consumer.fetch(5, 0.2) or None)
        rabbitmq.sync_definitions()  # the queue is new: see RabbitMQ.sync_definitions
        rabbitmq.kill()
        with pytest.raises(ConnectError):
            consumer.fetch(5, 1.0)
        rabbitmq.start()
        consumer.ack(first)  # stale: ignored, the broker will redeliver them
        got = _drain(consumer, 20)
        consumer.close()
        assert sorted(_ids(sent)) == sorted(_ids(got))
        assert set(_ids(first)) <= {d.id for d in got if d.redelivered}
        assert rabbitmq.queue_depth(queue_name) == 0


class TestCredentials:
    def test_bad_password_is_a_one_line_error_without_password(
        self, rabbitmq: RabbitMQ, queue_name: str
    ) -> None:
        """A refused login is a ConnectError saying so for the user; the password appears in
        no error, repr or str."""
        url = f"amqp://guest:{SECRET}@127.0.0.1:{rabbitmq.amqp_port}/?queue={queue_name}"
        producer, consumer = AMQPProducer(url), AMQPConsumer(url)
        with pytest.raises(ConnectError) as p_info:
            producer.publish_batch(_messages(1))
        with pytest.raises(ConnectError) as c_info:
            consumer.fetch(1, 0.1)
        for exc in (p_info.value, c_info.value):
            text = str(exc)
            assert "login refused for user 'guest'" in text
            assert "\n" not in text
            assert SECRET not in text
            assert SECRET not in repr(exc)
            assert SECRET not in str(exc.__cause__)
        for obj in (producer, consumer):
            assert SECRET not in repr(obj)
            assert SECRET not in str(obj)
            assert "guest:***@" in repr(obj)

    def test_unknown_vhost(self, rabbitmq: RabbitMQ) -> None:
        """A vhost the user may not use is reported as such (not as a generic failure)."""
        url = f"amqp://guest:guest@127.0.0.1:{rabbitmq.amqp_port}/nosuchvhost"
        with pytest.raises(ConnectError, match="access to vhost 'nosuchvhost' refused"):
            AMQPProducer(url).publish_batch(_messages(1))


class TestConsumer:
    def test_prefetch_bounds_unacked_in_flight(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """With prefetch=10 the broker hands at most 10 unacked messages to the consumer; acking
        frees room for more."""
        url = _url(rabbitmq, queue_name)
        with AMQPProducer(url) as producer:
            producer.publish_batch(_messages(50))
        with AMQPConsumer(url, prefetch=10) as consumer:
            first = consumer.fetch(50, 1.0)
            assert len(first) == 10
            wait_until(lambda: rabbitmq.queue_depth(queue_name) == 40, message="40 ready")
            assert consumer.fetch(50, 0.3) == []
            consumer.ack(first[:4])
            second = wait_until(lambda: consumer.fetch(50, 0.2) or None)
            assert len(second) == 4
            wait_until(lambda: rabbitmq.queue_depth(queue_name) == 36, message="36 ready")

    def test_fetch_returns_at_most_max_in_order(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """fetch(max) never returns more than max; later fetches continue in order."""
        url = _url(rabbitmq, queue_name)
        sent = _messages(30)
        with AMQPProducer(url) as producer:
            producer.publish_batch(sent)
        got: list[Delivery] = []
        with AMQPConsumer(url) as consumer:

            def step() -> bool:
                batch = consumer.fetch(7, 0.2)
                assert len(batch) <= 7
                got.extend(batch)
                return len(got) >= 30

            wait_until(step, interval=0)
            consumer.ack(got)
        assert _ids(sent) == _ids(got)

    def test_partial_acks_and_redelivery_after_close(
        self, rabbitmq: RabbitMQ, queue_name: str
    ) -> None:
        """Acked deliveries (a prefix and scattered ones) are gone; the unacked ones come back,
        flagged redelivered, after the consumer closes. Double acks are harmless."""
        url = _url(rabbitmq, queue_name)
        sent = _messages(10)
        with AMQPProducer(url) as producer:
            producer.publish_batch(sent)
        with AMQPConsumer(url) as consumer:
            got = collect(consumer, 10)
            acked = [got[i] for i in (0, 1, 2, 5, 7)]
            consumer.ack(acked)
            consumer.ack(acked)  # repeated: ignored, must not close the channel
            assert consumer.fetch(1, 0.2) == []
        with AMQPConsumer(url) as consumer:
            again = collect(consumer, 5)
            consumer.ack(again)
        assert [sent[i].id for i in (3, 4, 6, 8, 9)] == _ids(again)
        assert all(d.redelivered for d in again)
        assert rabbitmq.queue_depth(queue_name) == 0

    def test_nack_requeue_and_reject(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """nack(requeue=True) gives messages back for redelivery; requeue=False drops them
        (no dead-letter exchange configured)."""
        url = _url(rabbitmq, queue_name)
        sent = _messages(4)
        with AMQPProducer(url) as producer:
            producer.publish_batch(sent)
        with AMQPConsumer(url) as consumer:
            got = collect(consumer, 4)
            consumer.nack(got[:2], requeue=True)
            consumer.nack(got[2:], requeue=False)
            back = collect(consumer, 2)
            consumer.ack(back)
            assert consumer.fetch(5, 0.3) == []
        assert _ids(sent[:2]) == _ids(back)
        assert all(d.redelivered for d in back)
        assert rabbitmq.queue_depth(queue_name) == 0

    def test_foreign_messages_without_id_stay_distinct(
        self, rabbitmq: RabbitMQ, queue_name: str
    ) -> None:
        """Two identical messages without message_id get two ids (a hash of the body made them
        one Elasticsearch document: a silent loss); the price is a new id on redelivery."""
        url = f"{rabbitmq.amqp_url}?exchange=&queue={queue_name}"
        with AMQPConsumer(url) as consumer:
            consumer.fetch(1, 0.1)  # declares the queue
            with rabbitmq.amqp_channel() as ch:
                for _ in range(2):
                    props = pika.BasicProperties(delivery_mode=2)
                    ch.basic_publish("", queue_name, b'{"x":1}', props)
            got = collect(consumer, 2)
            consumer.ack(got)
        assert got[0].body == got[1].body
        assert got[0].id != got[1].id


def collect(consumer: AMQPConsumer, n: int) -> list[Delivery]:
    """Fetch (without acking) until exactly ``n`` deliveries are in hand."""
    got: list[Delivery] = []

    def more() -> bool:
        got.extend(consumer.fetch(n - len(got), 0.2))
        return len(got) >= n

    wait_until(more, interval=0, message=f"{n} deliveries")
    return got


# -- TLS and x509 (EXTERNAL) login, on a node of their own ------------------------------------


def _write_pki(directory: Path) -> dict[str, str]:
    """The shared throwaway PKI (``harness/tls.py``): CA, server certificate for 127.0.0.1, a
    client certificate whose CN is the RabbitMQ user ``mqlt-x509``, an unrelated CA."""
    return make_pki(directory).as_dict()


class _TLSRabbitMQ(RabbitMQ):
    """The private node plus the x509 login plugin (EXTERNAL mechanism)."""

    def _prepare(self) -> None:
        super()._prepare()
        plugins = self.dir / "conf" / "enabled_plugins"
        plugins.write_text("[rabbitmq_stomp,rabbitmq_auth_mechanism_ssl].\n")


@pytest.fixture(scope="module")
def tls_rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A RabbitMQ node with a TLS listener (peer verification, client certificate optional)
    and a password-less user ``mqlt-x509`` that can only log in with its certificate.
    Yields ``(host:port of the TLS listener, PEM paths)``."""
    pki = _write_pki(tmp_path_factory.mktemp("pki"))
    tls_port = free_port()
    ssl_options = (
        f'[{{cacertfile,"{pki["ca"]}"}},{{certfile,"{pki["server"]}"}},'
        f'{{keyfile,"{pki["server_key"]}"}},{{verify,verify_peer}},'
        "{fail_if_no_peer_cert,false}]"
    )
    broker = _TLSRabbitMQ(
        extra_erl_args=f"-rabbit ssl_listeners [{tls_port}] -rabbit ssl_options {ssl_options}",
        extra_config=(
            "auth_mechanisms.1 = PLAIN\nauth_mechanisms.2 = AMQPLAIN\n"
            "auth_mechanisms.3 = EXTERNAL\nssl_cert_login_from = common_name"
        ),
    )
    try:
        broker.start()
        for args in (
            ("add_user", "mqlt-x509", "unused-password"),
            ("clear_password", "mqlt-x509"),
            ("set_permissions", "-p", "/", "mqlt-x509", ".*", ".*", ".*"),
        ):
            result = broker.rabbitmqctl(*args)
            assert result.returncode == 0, result.stderr
        yield f"127.0.0.1:{tls_port}", pki
    finally:
        broker.close()


class TestTLS:
    def test_password_login_over_tls(
        self, tls_rabbitmq: tuple[str, dict[str, str]], queue_name: str
    ) -> None:
        """amqps:// with the CA verifies the server and carries a PLAIN login; records make
        the round trip."""
        where, pki = tls_rabbitmq
        url = f"amqps://guest:guest@{where}/?ca_certs={pki['ca']}&queue={queue_name}"
        sent = _messages(10)
        with AMQPProducer(url) as producer:
            producer.publish_batch(sent)
        with AMQPConsumer(url) as consumer:
            assert _ids(sent) == _ids(_drain(consumer, 10))

    def test_x509_login_without_username(
        self, tls_rabbitmq: tuple[str, dict[str, str]], queue_name: str
    ) -> None:
        """A client certificate and no user name log in with EXTERNAL as the certificate's CN
        (a user that has no password, so no other mechanism could succeed)."""
        where, pki = tls_rabbitmq
        url = (
            f"amqps://{where}/?ca_certs={pki['ca']}&certfile={pki['client']}"
            f"&keyfile={pki['client_key']}&queue={queue_name}"
        )
        sent = _messages(10)
        with AMQPProducer(url) as producer:
            producer.publish_batch(sent)
        with AMQPConsumer(url) as consumer:
            assert _ids(sent) == _ids(_drain(consumer, 10))

    def test_untrusted_server_certificate(self, tls_rabbitmq: tuple[str, dict[str, str]]) -> None:
        """A server certificate from a CA the client does not trust is a ConnectError that
        says the verification failed (no fallback to plain text)."""
        where, pki = tls_rabbitmq
        url = f"amqps://guest:guest@{where}/?ca_certs={pki['other_ca']}&connect_timeout=5"
        with pytest.raises(ConnectError, match="TLS certificate verification failed"):
            AMQPProducer(url).publish_batch(_messages(1))


def test_giving_up_a_link_logs_no_pika_error(
    rabbitmq: RabbitMQ, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A producer that gives up its connection (no confirm within ``timeout``: the broker is
    frozen) raises :class:`PublishTimeout` and nothing more: no ERROR line from pika in the
    application's log (the failure is the handler's to report, once, as a counter).
    Observed: ``Unexpected connection close detected: StreamLostError: ('given up by
    mqlogging',)`` at ERROR, once per link given up (every retry of a frozen broker, every
    host left in a memory alarm) (review 12, D3); before that, an ``AssertionError`` traceback
    from ``_on_stream_terminated`` (review 11, L1)."""
    url = f"{rabbitmq.amqp_url}?exchange=&queue={queue_name}&timeout=0.5"
    caplog.set_level(logging.ERROR, logger="pika")
    with AMQPProducer(url) as producer:
        producer.publish_batch([Message(new_id(), b"{}")])
        rabbitmq.freeze()
        try:
            with pytest.raises(PublishTimeout):
                producer.publish_batch([Message(new_id(), b"{}")])
        finally:
            rabbitmq.thaw()
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("pika")]
    assert logged == []


def test_a_large_batch_to_a_blocked_broker_fails_within_timeout(
    rabbitmq: RabbitMQ, queue_name: str
) -> None:
    """RabbitMQ in a memory alarm stops reading. A batch larger than the socket buffers
    (300 x 60 KB) fails within about ``timeout`` (1 s), as a small one does ("blocks
    publishing"), so the sender thread can spool and the handler's flush()/close() keep
    their deadlines. Observed: publish_batch does not return while the alarm lasts (more
    than 8 minutes in a manual run): pika's flush of its write buffer waits for the broker
    to read, and the broker's heartbeats keep the connection alive. Before the review 11
    fix ``blocked_connection_timeout`` closed such a connection."""
    url = f"{rabbitmq.amqp_url}?exchange=&queue={queue_name}&timeout=1&connect_timeout=1"
    producer = AMQPProducer(url)
    producer.publish_batch([Message(new_id(), b"{}")])
    batch = [Message(new_id(), b'{"pad":"' + b"x" * 60_000 + b'"}') for _ in range(300)]
    done = threading.Event()

    def attempt() -> None:
        try:
            producer.publish_batch(batch)
        except BackendError:
            pass
        finally:
            done.set()

    result = rabbitmq.rabbitmqctl("set_vm_memory_high_watermark", "0.0000001")
    assert result.returncode == 0, result.stderr
    thread = threading.Thread(target=attempt, daemon=True)
    try:
        thread.start()
        returned = done.wait(5.0)  # timeout=1, plus slack for a loaded machine
    finally:
        rabbitmq.rabbitmqctl("set_vm_memory_high_watermark", "0.4")
        thread.join(60)
        producer.close()
    assert returned, "publish_batch still running 5 s into a batch with timeout=1"
