"""AMQPTap and STOMPTap through the public Tap API, against the real brokers.

A tap is a non-destructive live view: it sees a copy of every new record while the queue the
collector reads keeps all of them. Each test checks both sides: the bodies the tap returned
and the count left in the collector's queue.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from harness.brokers import ActiveMQ, RabbitMQ
from harness.helpers import free_port, wait_until
from mqlogging._ids import new_id
from mqlogging._types import Message
from mqlogging.backends import open_consumer, open_producer
from mqlogging.backends.amqp import AMQPTap
from mqlogging.backends.base import Tap, TapOptions
from mqlogging.backends.stomp import STOMPTap
from mqlogging.errors import ConfigurationError, ConnectError

N = 200


def _messages(count: int, first: int = 0) -> list[Message]:
    return [Message(new_id(), json.dumps({"seq": i}).encode()) for i in range(first, first + count)]


def _publish(url: str, messages: list[Message]) -> None:
    with open_producer(url) as producer:
        producer.publish_batch(messages)


def _poll(tap: Tap, count: int) -> list[int]:
    """The ``seq`` of the first ``count`` bodies the tap returns (fails after a deadline)."""
    bodies: list[bytes] = []

    def enough() -> bool:
        bodies.extend(tap.poll(0.5))
        return len(bodies) >= count

    wait_until(enough, timeout=30, message=f"{count} copies through the tap")
    return [json.loads(body)["seq"] for body in bodies]


def _more(tap: Tap, seconds: float) -> list[bytes]:
    """Whatever the tap returns within ``seconds`` (several polls): proves nothing repeats."""
    deadline = time.monotonic() + seconds
    bodies: list[bytes] = []
    while time.monotonic() < deadline:
        bodies.extend(tap.poll(max(0.0, deadline - time.monotonic())))
    return bodies


def _drain(url: str, expected: int) -> list[int]:
    """Consume (and ack) the queue's records, as the collector would: ``expected`` of them,
    then whatever else arrives within half a second."""
    seqs: list[int] = []
    with open_consumer(url) as consumer:

        def take(timeout: float) -> bool:
            batch = consumer.fetch(1000, timeout)
            consumer.ack(batch)
            seqs.extend(json.loads(d.body)["seq"] for d in batch)
            return len(seqs) >= expected

        wait_until(lambda: take(0.2), timeout=30, message=f"{expected} records in the queue")
        take(0.5)
    return seqs


class TestAMQPTap:
    def test_copies_new_records_and_consumes_none(
        self, rabbitmq: RabbitMQ, queue_name: str
    ) -> None:
        """The tap's own exclusive queue gets a copy of every record published after it
        opened, in order; the collector's queue still holds every record (the one published
        before included); the tap queue is deleted on close."""
        url = f"{rabbitmq.amqp_url}?exchange={queue_name}-x&queue={queue_name}"
        _publish(url, _messages(1, first=-1))  # the backlog: not shown
        with AMQPTap(url, TapOptions()) as tap:
            assert "exclusive queue amq.gen-" in tap.mode
            tap_queue = tap.mode.split("exclusive queue ")[1].split()[0]
            _publish(url, _messages(N))
            assert list(range(N)) == _poll(tap, N)
            assert tap.poll(0.2) == []
            assert rabbitmq.queue_depth(queue_name) == N + 1
        wait_until(lambda: not rabbitmq.queue_exists(tap_queue), message="tap queue deleted")

    def test_binding_chooses_the_records(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """``TapOptions.binding`` replaces the endpoint's binding key: a tap bound to another
        routing key gets no copy of records it does not match."""
        url = f"{rabbitmq.amqp_url}?exchange={queue_name}-x&queue={queue_name}&routing_key=app.pay"
        _publish(url, _messages(1, first=-1))
        with (
            AMQPTap(url, TapOptions(binding="app.*")) as match,
            AMQPTap(url, TapOptions(binding="db.*")) as other,
        ):
            assert "with key 'app.*'" in match.mode
            _publish(url, _messages(5))
            assert list(range(5)) == _poll(match, 5)
            assert other.poll(0.2) == []

    def test_default_exchange_is_refused_before_connecting(self) -> None:
        """An endpoint publishing through the default exchange has no copy to tap: a one-line
        ConfigurationError (no connection attempt, no password in it)."""
        url = f"amqp://guest:secret@127.0.0.1:{free_port()}/?exchange=&queue=q"
        with pytest.raises(ConfigurationError, match="default exchange") as info:
            AMQPTap(url)
        assert "secret" not in str(info.value)

    def test_unreachable_broker_fails_in_the_constructor(self) -> None:
        """Opening a tap connects: an unreachable broker is a ConnectError right away."""
        url = f"amqp://guest:secret@127.0.0.1:{free_port()}/?exchange=logs&connect_timeout=2"
        with pytest.raises(ConnectError, match="connection refused") as info:
            AMQPTap(url)
        assert "secret" not in str(info.value)


class TestSTOMPTap:
    def test_rabbitmq_exchange_copy(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """RabbitMQ ``/queue/NAME`` with ``TapOptions.exchange``: subscribes to
        ``/exchange/X/#`` and sees every new record once; the queue keeps them all."""
        amqp = f"{rabbitmq.amqp_url}?exchange={queue_name}-x&queue={queue_name}"
        _publish(amqp, _messages(1, first=-1))  # declares the exchange and the queue
        url = f"{rabbitmq.stomp_url}/queue/{queue_name}"
        with STOMPTap(url, TapOptions(exchange=f"{queue_name}-x")) as tap:
            assert f"own subscription to /exchange/{queue_name}-x/#" in tap.mode
            _publish(amqp, _messages(N))
            assert list(range(N)) == _poll(tap, N)
            assert rabbitmq.queue_depth(queue_name) == N + 1

    def test_rabbitmq_queue_without_exchange_is_refused(
        self, rabbitmq: RabbitMQ, queue_name: str
    ) -> None:
        """A RabbitMQ ``/queue/`` cannot be copied without an exchange: ConfigurationError
        naming the way out, and nothing was subscribed (the queue was not even created)."""
        with pytest.raises(ConfigurationError, match="--exchange NAME"):
            STOMPTap(f"{rabbitmq.stomp_url}/queue/{queue_name}")
        assert not rabbitmq.queue_exists(queue_name)

    @pytest.mark.parametrize("backlog", [False, True])
    def test_activemq_queue_browser(
        self, activemq: ActiveMQ, queue_name: str, backlog: bool
    ) -> None:
        """ActiveMQ ``/queue/``: a repeated browser shows each new record once (the waiting
        ones first only with ``backlog``), and a consumer still gets every record."""
        url = f"{activemq.stomp_url}/queue/{queue_name}"
        _publish(url, _messages(3, first=-3))
        with STOMPTap(url, TapOptions(backlog=backlog)) as tap:
            assert tap.mode.startswith(f"queue browser on /queue/{queue_name}")
            if backlog:
                assert _poll(tap, 3) == [-3, -2, -1]
            _publish(url, _messages(N))
            assert list(range(N)) == _poll(tap, N)
            assert _more(tap, 1.5) == []  # three more browses: nothing repeated
        assert [-3, -2, -1, *range(N)] == _drain(url, N + 3)

    def test_activemq_exchange_option_is_refused(self, activemq: ActiveMQ, queue_name: str) -> None:
        """``TapOptions.exchange`` names an AMQP exchange: refused on ActiveMQ."""
        with pytest.raises(ConfigurationError, match="RabbitMQ only"):
            STOMPTap(f"{activemq.stomp_url}/queue/{queue_name}", TapOptions(exchange="x"))

    def test_wrong_transport_is_refused(self, rabbitmq: RabbitMQ) -> None:
        """Each tap class takes its own transport's URLs only."""
        with pytest.raises(ConfigurationError, match="use stomp://"):
            STOMPTap(f"{rabbitmq.amqp_url}?exchange=logs")

    def test_topic_subscription(self, broker: Any, queue_name: str) -> None:
        """A ``/topic/`` destination is subscribed as it is: a copy of every new record."""
        url = f"{broker.stomp_url}/topic/{queue_name}"
        with STOMPTap(url) as tap:
            assert f"own subscription to /topic/{queue_name}" in tap.mode
            _publish(url, _messages(N))
            assert list(range(N)) == _poll(tap, N)


@pytest.fixture(params=["rabbitmq", "activemq"])
def broker(request: pytest.FixtureRequest) -> Any:
    """The running broker (RabbitMQ STOMP or ActiveMQ) the test is parametrised with."""
    return request.getfixturevalue(request.param)
