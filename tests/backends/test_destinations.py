"""Where records go: endpoint identity, default-exchange routing, lossy destinations, topics.

Regression tests for issue #11 defects 12 (identity ignored ``queue``), 13 (an explicit
``routing_key`` overridden with the default exchange), 14 (destinations that drop records by
design, silently) and 18 (DIRAC topics over AMQP were a competing queue). Records are counted
end to end at the real brokers' queues.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from harness.brokers import ActiveMQ, RabbitMQ
from harness.drain import drain_amqp, seqs
from harness.helpers import wait_until
from mqlogging._ids import new_id
from mqlogging._types import Message
from mqlogging.backends import Endpoint
from mqlogging.backends.amqp import AMQPConsumer, AMQPProducer
from mqlogging.backends.services import create_consumer, create_producer
from mqlogging.errors import BackendError, ConfigurationError
from mqlogging.handlers import MQHandler

SECRET = "n0t-in-the-key"


def _messages(n: int) -> list[Message]:
    return [Message(new_id(), f'{{"seq":{i}}}'.encode()) for i in range(n)]


def _fetch_all(consumer: AMQPConsumer, expected: int) -> list[str]:
    """Ids of everything ``consumer`` gets until ``expected`` arrived and the queue is idle."""
    ids: list[str] = []

    def more() -> bool:
        batch = consumer.fetch(1000, 0.2)
        consumer.ack(batch)
        ids.extend(d.id for d in batch)
        return len(ids) >= expected

    wait_until(more, timeout=30, interval=0, message=f"{expected} deliveries")
    while batch := consumer.fetch(1000, 0.5):  # anything beyond is a duplicate: catch it
        consumer.ack(batch)
        ids.extend(d.id for d in batch)
    return ids


# -- defect 13: the default exchange and an explicit routing key -------------------------------


class TestDefaultExchange:
    def test_explicit_routing_key_names_the_queue(
        self, rabbitmq: RabbitMQ, queue_name: str
    ) -> None:
        """``exchange=&routing_key=Q`` (the AMQP way to address queue Q) delivers every
        confirmed record to Q, once each, not to the default queue ``logs``."""
        url = f"{rabbitmq.amqp_url}?exchange=&routing_key={queue_name}"
        sent = _messages(3000)
        with AMQPProducer(url) as producer:
            producer.publish_batch(sent)
        assert rabbitmq.queue_depth(queue_name) == 3000
        with AMQPConsumer(f"{rabbitmq.amqp_url}?exchange=&queue={queue_name}") as consumer:
            got = _fetch_all(consumer, 3000)
        assert [m.id for m in sent] == got

    @pytest.mark.parametrize(
        ("query", "needle"),
        [
            ("exchange=&routing_key=a&queue=b", "routing_key='a' and queue='b'"),
            ("exchange=&queue=a&binding_key=x", "binding_key has no effect"),
            ("exchange=&queue=", "give the queue"),
        ],
    )
    def test_contradictions_are_refused_in_one_line(self, query: str, needle: str) -> None:
        """Options the default exchange cannot honour together are refused, never overridden."""
        with pytest.raises(ConfigurationError) as info:
            Endpoint.from_url(f"amqp://h/?{query}")
        assert needle in str(info.value)
        assert "\n" not in str(info.value)

    def test_direct_construction_is_checked_too(self) -> None:
        """An Endpoint built or copied without a URL gets the same check."""
        ep = Endpoint.from_url("amqp://h/?exchange=&queue=jobs")
        assert (ep.routing_key, ep.queue) == ("jobs", "jobs")
        with pytest.raises(ConfigurationError, match="routing key is the queue name"):
            ep.with_options(routing_key="other")


# -- defect 12: endpoint identity ----------------------------------------------------------------


class TestDestinationKey:
    BASE = "amqp://u:" + SECRET + "@h1,h2:5673/vh?exchange=x&routing_key=r&queue=q&binding_key=b"

    @pytest.mark.parametrize(
        "other",
        [
            "amqp://u@h1,h2:5673/vh?exchange=x&routing_key=r&queue=q2&binding_key=b",
            "amqp://u@h1,h2:5673/vh?exchange=x&routing_key=r&queue=q&binding_key=b2",
            "amqp://u@h1,h2:5673/vh?exchange=x&routing_key=r2&queue=q&binding_key=b",
            "amqp://u@h1,h2:5673/vh?exchange=x2&routing_key=r&queue=q&binding_key=b",
            "amqp://u@h1,h2:5673/vh2?exchange=x&routing_key=r&queue=q&binding_key=b",
            "amqp://u@h2:5673,h1/vh?exchange=x&routing_key=r&queue=q&binding_key=b",
            "amqp://u@h1,h2:5674/vh?exchange=x&routing_key=r&queue=q&binding_key=b",
        ],
    )
    def test_every_routing_option_changes_the_key(self, other: str) -> None:
        """Queue, binding key, routing key, exchange, vhost, host order and port are part of
        where records go, so they make a different key."""
        assert Endpoint.from_url(self.BASE).destination_key() != (
            Endpoint.from_url(other).destination_key()
        )

    def test_transport_options_and_secrets_do_not(self) -> None:
        """Timeouts, heartbeat, credentials and exchange/queue kinds leave the key unchanged;
        the password never appears in it."""
        base = Endpoint.from_url(self.BASE)
        other = Endpoint.from_url(
            self.BASE.replace(f"u:{SECRET}@", "v:other@")
            + "&timeout=3&connect_timeout=1&heartbeat=0&queue_type=quorum&persistent=false"
        )
        assert base.destination_key() == other.destination_key()
        assert SECRET not in base.destination_key()
        assert "@" not in base.destination_key()

    def test_stomp_and_local(self) -> None:
        """STOMP keys cover the destination and vhost; local keys the directory."""
        a = Endpoint.from_url("stomp://h/queue/a").destination_key()
        assert a != Endpoint.from_url("stomp://h/queue/b").destination_key()
        assert a != Endpoint.from_url("stomp://h/queue/a?vhost=v").destination_key()
        assert (
            Endpoint.from_url("local:///tmp/x/").destination_key()
            == Endpoint.from_url("local:///tmp/x").destination_key()
        )

    def test_default_spool_directories_differ_by_queue(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Two handlers that differ only in their queue get two default spool directories, so
        neither replays the other's records to the wrong queue."""
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
        a = MQHandler("amqp://127.0.0.1/?exchange=x&queue=a")
        b = MQHandler("amqp://127.0.0.1/?exchange=x&queue=b")
        try:
            assert a.config.spool_dir != b.config.spool_dir
        finally:
            a.close()
            b.close()

    def test_same_destination_twice_is_refused(self, tmp_path: Path) -> None:
        """The same destination listed twice (whatever the timeouts) is still refused."""
        with pytest.raises(ConfigurationError, match="listed twice"):
            MQHandler(
                ["amqp://127.0.0.1/?queue=a", "amqp://127.0.0.1/?queue=a&timeout=3"],
                spool=str(tmp_path),
            )

    @pytest.mark.rabbitmq
    def test_endpoints_differing_only_in_queue(
        self, rabbitmq: RabbitMQ, queue_name: str, tmp_path: Path
    ) -> None:
        """Two endpoints that differ only in their queue are accepted; with failover every
        record reaches the exchange once, and each of the two bound queues holds all of them,
        in order, none twice."""
        base = f"{rabbitmq.amqp_url}?exchange={queue_name}.x&routing_key=app&binding_key=app"
        first, second = f"{base}&queue={queue_name}.a", f"{base}&queue={queue_name}.b"
        handler = MQHandler([first, second], strategy="failover", spool=str(tmp_path))
        logger = logging.getLogger(f"dest.{queue_name}")
        logger.propagate = False
        logger.addHandler(handler)
        try:
            # The second endpoint's queue exists once its producer connected; declare it now.
            with AMQPConsumer(second) as consumer:
                consumer.fetch(1, 0)
            for i in range(2000):
                logger.warning("record %d", i, extra={"seq": i})
            assert handler.flush(30)
        finally:
            logger.removeHandler(handler)
            handler.close()
        assert list(range(2000)) == seqs(drain_amqp(rabbitmq, f"{queue_name}.a", 2000))
        assert list(range(2000)) == seqs(drain_amqp(rabbitmq, f"{queue_name}.b", 2000))


# -- defect 14: destinations that drop records by design ----------------------------------------


class TestLossyDestinations:
    @pytest.mark.parametrize(
        ("destination", "needle"),
        [
            ("/exchange/amq.topic/nowhere", "mqlogging rabbitmq setup"),
            ("/topic/live", "/queue/logs"),
        ],
    )
    def test_handler_warns_once_at_configuration(
        self,
        rabbitmq: RabbitMQ,
        activemq: ActiveMQ,
        destination: str,
        needle: str,
        capsys: pytest.CaptureFixture[str],
        tmp_path: Path,
    ) -> None:
        """A STOMP topic or exchange destination gets one stderr line when the handler is
        configured, naming the alternative; records still go where the user asked (a live
        subscriber of the topic receives them)."""
        for broker in (rabbitmq, activemq):
            if destination.startswith("/exchange/") and broker is activemq:
                continue
            spool = tmp_path / type(broker).__name__  # a spool directory per destination
            handler = MQHandler(broker.stomp_url + destination, spool=str(spool))
            handler.close()
            lines = [x for x in capsys.readouterr().err.splitlines() if "warning" in x]
            assert len(lines) == 1, lines
            assert destination in lines[0]
            assert needle in lines[0]
            assert "dropped" in lines[0] or "drops" in lines[0]

    def test_queue_destinations_do_not_warn(
        self, rabbitmq: RabbitMQ, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        """Queues keep records until consumed: no warning for them or for AMQP (whose
        producer publishes with ``mandatory``)."""
        urls = (rabbitmq.stomp_url + "/queue/q", rabbitmq.amqp_url + "?exchange=amq.topic")
        for k, url in enumerate(urls):  # a spool directory per destination
            MQHandler(url, spool=str(tmp_path / f"s{k}")).close()
        assert "warning" not in capsys.readouterr().err

    @pytest.mark.rabbitmq
    def test_amqp_exchange_without_queue_keeps_records(
        self, rabbitmq: RabbitMQ, queue_name: str, tmp_path: Path
    ) -> None:
        """The AMQP analogue needs no warning: records published to an exchange no queue is
        bound to come back (``mandatory``), are kept, and all 500 arrive, in order, once a
        queue is bound."""
        exchange = f"{queue_name}.x"
        url = f"{rabbitmq.amqp_url}?exchange={exchange}&routing_key=app&queue="
        handler = MQHandler(url, spool=str(tmp_path / "s"), retry_max=0.5)
        logger = logging.getLogger(f"unbound.{queue_name}")
        logger.propagate = False
        logger.addHandler(handler)
        try:
            for i in range(500):
                logger.warning("record %d", i, extra={"seq": i})
            wait_until(lambda: handler.stats()["endpoints"][handler.config.endpoints[0].redacted()]
                       ["failures"] > 0, timeout=20, message="a returned batch")  # fmt: skip
            assert handler.stats()["confirmed"] == 0
            with rabbitmq.amqp_channel() as ch:
                ch.queue_declare(queue_name, durable=True)
                ch.queue_bind(queue_name, exchange, routing_key="app")
            wait_until(lambda: handler.stats()["confirmed"] >= 500, timeout=30,
                       message="the kept records replayed")  # fmt: skip
        finally:
            logger.removeHandler(handler)
            handler.close()
        assert list(range(500)) == seqs(drain_amqp(rabbitmq, queue_name, 500))

    def test_services_producer_warns_too(
        self, rabbitmq: RabbitMQ, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The DIRAC-style producer of a STOMP topic says so once, on stderr."""
        services = {"mq": {"type": "rabbitmq", "host": "127.0.0.1", "port": rabbitmq.stomp_port}}
        with create_producer("mq::Topics::live", services=services):
            pass
        assert "/topic/live delivers only to consumers subscribed" in capsys.readouterr().err


# -- defect 18: topics fan out -------------------------------------------------------------------


def _services(rabbitmq: RabbitMQ) -> dict[str, Any]:
    return {
        "amqp": {"type": "amqp", "host": "127.0.0.1", "port": rabbitmq.amqp_port},
        "stomp": {"type": "rabbitmq", "host": "127.0.0.1", "port": rabbitmq.stomp_port},
    }


class _Inbox:
    """Collects a consumer's messages (thread-safe) and tells probes from data."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.data: list[int] = []
        self.probes = 0

    def __call__(self, _headers: Any, message: Any) -> None:
        with self.lock:
            if message.get("probe"):
                self.probes += 1
            else:
                self.data.append(int(message["n"]))


def _probe_until_all_subscribed(producer: Any, inboxes: list[_Inbox]) -> None:
    """Subscribers bind asynchronously: publish probes until each of them received one."""

    def everyone_hears() -> bool:
        try:
            producer.put({"probe": True})
        except BackendError:
            return False  # AMQP: no subscriber bound yet, the broker returned the probe
        return all(inbox.probes for inbox in inboxes)

    wait_until(everyone_hears, timeout=20, interval=0.05, message="subscribers bound")


@pytest.mark.rabbitmq
@pytest.mark.parametrize("service", ["amqp", "stomp"])
def test_every_topic_subscriber_gets_every_message(rabbitmq: RabbitMQ, queue_name: str,
                                                   service: str) -> None:  # fmt: skip
    """Two subscribers of one topic each receive all 500 messages, once each, in order."""
    services = _services(rabbitmq)
    address = f"{service}::Topics::{queue_name}"
    inboxes = [_Inbox(), _Inbox()]
    consumers = [create_consumer(address, inbox, services=services) for inbox in inboxes]
    try:
        with create_producer(address, services=services) as producer:
            _probe_until_all_subscribed(producer, inboxes)
            for i in range(500):
                producer.put({"n": i})
        wait_until(lambda: all(len(x.data) >= 500 for x in inboxes), timeout=30)
    finally:
        for consumer in consumers:
            consumer.close()
    assert [list(range(500))] * 2 == [x.data for x in inboxes]


@pytest.mark.rabbitmq
def test_queue_consumers_still_compete(rabbitmq: RabbitMQ, queue_name: str) -> None:
    """Two consumers of one DIRAC queue over AMQP share the messages: together all 500,
    none twice."""
    services = _services(rabbitmq)
    address = f"amqp::Queues::{queue_name}"
    inboxes = [_Inbox(), _Inbox()]
    consumers = [create_consumer(address, inbox, services=services) for inbox in inboxes]
    try:
        with create_producer(address, services=services) as producer:
            for i in range(500):
                producer.put({"n": i})
        wait_until(lambda: sum(len(x.data) for x in inboxes) >= 500, timeout=30)
    finally:
        for consumer in consumers:
            consumer.close()
    counts = Counter(n for x in inboxes for n in x.data)
    assert set(range(500)) == set(counts)
    assert {1} == set(counts.values())


@pytest.mark.rabbitmq
def test_subscription_survives_a_broker_restart(rabbitmq: RabbitMQ, queue_name: str) -> None:
    """An AMQP subscriber (``queue=``) gets a fresh private queue after the broker restarts and
    receives what is published from then on, in order, each message once."""
    url = f"{rabbitmq.amqp_url}?exchange={queue_name}.x&exchange_type=fanout&queue="
    consumer = AMQPConsumer(url)
    producer = AMQPProducer(url)
    try:
        consumer.fetch(1, 0)  # connect: declares the exchange and binds the private queue
        before = _messages(100)
        producer.publish_batch(before)
        assert [m.id for m in before] == _fetch_all(consumer, 100)
        rabbitmq.sync_definitions()  # the exchange is new: see RabbitMQ.sync_definitions
        rabbitmq.kill()
        rabbitmq.start()
        producer.close()

        def subscribed_again() -> bool:
            consumer.fetch(1, 0.1)  # reconnects and binds a new private queue
            try:
                producer.publish_batch(_messages(1))  # returned while nobody is bound
            except BackendError:
                return False
            return True

        wait_until(subscribed_again, timeout=30, message="subscription back after restart")
        after = _messages(1000)
        producer.publish_batch(after)
        got = _fetch_all(consumer, 1000)
        assert [m.id for m in after] == got[-1000:]
        assert len(got) - 1000 <= 1  # at most the probe that proved the binding
    finally:
        producer.close()
        consumer.close()


@pytest.mark.rabbitmq
def test_queues_behind_a_named_exchange_stay_apart(rabbitmq: RabbitMQ, queue_name: str) -> None:
    """A DIRAC service with an ``exchange``: each queue is bound by its own name, so a put to
    one queue reaches only that queue (300 to a, 200 to b; counted at the broker)."""
    services = {"mq": {"type": "amqp", "host": "127.0.0.1", "port": rabbitmq.amqp_port,
                       "exchange": f"{queue_name}.x"}}  # fmt: skip
    a, b = f"{queue_name}.a", f"{queue_name}.b"
    with (
        create_producer(f"mq::Queues::{a}", services=services) as pa,
        create_producer(f"mq::Queues::{b}", services=services) as pb,
    ):
        for i in range(300):
            pa.put({"n": i})
        for i in range(200):
            pb.put({"n": i})
    assert (rabbitmq.queue_depth(a), rabbitmq.queue_depth(b)) == (300, 200)
