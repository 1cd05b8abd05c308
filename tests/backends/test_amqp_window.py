"""The AMQP consumer's adjustable prefetch window (``set_window``) against a real RabbitMQ.

RabbitMQ applies a per-consumer ``basic.qos`` only to consumers started after it, so the
consumer resubscribes on the same channel; these tests check the broker really pushes no more
than the new window, and that no delivery is lost, voided or duplicated by the change.
"""

from __future__ import annotations

import contextlib
from collections import Counter

import pytest

from harness.brokers import RabbitMQ
from harness.helpers import wait_until
from mqlogging._ids import new_id
from mqlogging._types import Delivery, Message
from mqlogging.backends.amqp import AMQPConsumer, AMQPProducer
from mqlogging.errors import ConnectError
from tests.backends.test_amqp import collect

pytestmark = pytest.mark.rabbitmq


def _messages(n: int) -> list[Message]:
    return [Message(new_id(), f'{{"n":{i}}}'.encode()) for i in range(n)]


class TestSetWindow:
    @pytest.mark.parametrize("queue_type", ["classic", "quorum"])
    def test_narrow_then_widen_bounds_pushes_and_loses_nothing(
        self, rabbitmq: RabbitMQ, queue_name: str, queue_type: str
    ) -> None:
        """Classic and quorum queues: prefetch 50, 50 fetched and unacked, window narrowed to 10: the 50 are still acked
        (their tags stay valid), then the broker pushes only 10 more; widened to 30 with those
        10 unacked it pushes 30 more; all 100 arrive exactly once and the queue ends empty."""
        url = f"{rabbitmq.amqp_url}?exchange=&queue={queue_name}&queue_type={queue_type}"
        sent = _messages(100)
        with AMQPProducer(url) as producer:
            producer.publish_batch(sent)
        got: list[Delivery] = []
        with AMQPConsumer(url, prefetch=50) as consumer:
            held = collect(consumer, 50)
            wait_until(lambda: rabbitmq.queue_depth(queue_name) == 50, message="50 ready")
            assert consumer.set_window(10) == 10
            consumer.ack(held)
            got += held
            narrow = collect(consumer, 10)
            assert consumer.fetch(100, 0.5) == []
            assert rabbitmq.queue_depth(queue_name) == 40
            assert consumer.set_window(30) == 30
            wide = collect(consumer, 30)
            assert consumer.fetch(100, 0.5) == []
            assert rabbitmq.queue_depth(queue_name) == 10
            consumer.ack(narrow + wide)
            got += narrow + wide
            rest = collect(consumer, 10)
            consumer.ack(rest)
            got += rest
            assert consumer.fetch(100, 0.3) == []
        counts = Counter(d.id for d in got)
        assert {m.id for m in sent} == set(counts)
        assert {1} == set(counts.values())
        assert rabbitmq.queue_depth(queue_name) == 0

    @pytest.mark.parametrize("queue_type", ["classic", "quorum"])
    def test_narrowing_returns_the_unfetched_backlog(
        self, rabbitmq: RabbitMQ, queue_name: str, queue_type: str
    ) -> None:
        """Classic and quorum queues: prefetch 50, 5 of the 50 pushed deliveries fetched: narrowing to 10 requeues the 45
        the client received but never handed out (the broker then holds 100 - 5 - 10 ready),
        so they no longer sit in client memory; all 100 still arrive exactly once."""
        url = f"{rabbitmq.amqp_url}?exchange=&queue={queue_name}&queue_type={queue_type}"
        sent = _messages(100)
        with AMQPProducer(url) as producer:
            producer.publish_batch(sent)
        with AMQPConsumer(url, prefetch=50) as consumer:
            held = collect(consumer, 5)
            wait_until(lambda: rabbitmq.queue_depth(queue_name) == 50, message="50 pushed")
            consumer.set_window(10)
            consumer.fetch(0, 0.2)  # lets the broker push the new consumer's window
            wait_until(lambda: rabbitmq.queue_depth(queue_name) == 85, message="45 returned")
            consumer.ack(held)
            got = list(held)
            while len(got) < 100:
                batch = collect(consumer, min(10, 100 - len(got)))
                consumer.ack(batch)
                got += batch
            assert consumer.fetch(10, 0.3) == []
        counts = Counter(d.id for d in got)
        assert {m.id for m in sent} == set(counts)
        assert {1} == set(counts.values())
        assert rabbitmq.queue_depth(queue_name) == 0

    def test_window_is_clamped_to_one_and_prefetch(
        self, rabbitmq: RabbitMQ, queue_name: str
    ) -> None:
        """The window never exceeds the configured prefetch nor drops below 1 (the user's
        bound stays the upper limit); 1 still delivers, one message at a time."""
        url = f"{rabbitmq.amqp_url}?exchange=&queue={queue_name}"
        sent = _messages(5)
        with AMQPProducer(url) as producer:
            producer.publish_batch(sent)
        with AMQPConsumer(url, prefetch=3) as consumer:
            assert consumer.set_window(1000) == 3
            assert consumer.set_window(0) == 1
            first = collect(consumer, 1)
            assert consumer.fetch(5, 0.5) == []
            consumer.ack(first)
            rest = [first[0]]
            for _ in range(4):
                one = collect(consumer, 1)
                consumer.ack(one)
                rest += one
        assert [m.id for m in sent] == [d.id for d in rest]
        assert rabbitmq.queue_depth(queue_name) == 0

    def test_subscription_queue_survives_a_window_change(
        self, rabbitmq: RabbitMQ, queue_name: str
    ) -> None:
        """A subscriber (private exclusive auto-delete queue) that changes its window mid-way
        keeps its queue: the messages already waiting in it, and those still unacked, all
        arrive once (cancelling the only consumer first would delete the queue with them)."""
        url = f"{rabbitmq.amqp_url}?exchange={queue_name}.x&exchange_type=fanout&queue="
        sent = _messages(40)
        with AMQPConsumer(url, prefetch=10) as consumer:
            consumer.fetch(1, 0.1)  # subscribes: declares and binds its queue
            with AMQPProducer(url) as producer:
                producer.publish_batch(sent)
            held = collect(consumer, 10)
            consumer.set_window(4)
            consumer.ack(held)
            got = list(held)
            while len(got) < 40:
                batch = collect(consumer, min(4, 40 - len(got)))
                consumer.ack(batch)
                got += batch
            assert consumer.fetch(10, 0.3) == []
        assert [m.id for m in sent] == [d.id for d in got]

    def test_window_survives_a_broker_restart(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """A window narrowed to 5 before the broker is killed is the prefetch of the new
        connection too (5 pushed, not the configured 30); the stale deliveries come back and
        all 40 arrive, nothing left over."""
        url = f"{rabbitmq.amqp_url}?exchange=&queue={queue_name}"
        sent = _messages(40)
        with AMQPProducer(url) as producer:
            producer.publish_batch(sent)
        consumer = AMQPConsumer(url, prefetch=30)
        try:
            stale = collect(consumer, 3)
            consumer.set_window(5)
            rabbitmq.sync_definitions()  # the queue is new: see RabbitMQ.sync_definitions
            rabbitmq.kill()
            with contextlib.suppress(ConnectError):
                # May hand out what arrived before the loss: void too, like ``stale``.
                stale += consumer.fetch(5, 1.0)
            rabbitmq.start()
            consumer.ack(stale)  # void: the broker redelivers them
            fresh = collect(consumer, 5)
            assert consumer.fetch(40, 0.5) == []
            assert rabbitmq.queue_depth(queue_name) == 35
            consumer.ack(fresh)
            got = list(fresh)
            while len(got) < 40:
                batch = collect(consumer, min(5, 40 - len(got)))
                consumer.ack(batch)
                got += batch
            assert consumer.fetch(40, 0.3) == []
        finally:
            consumer.close()
        assert sorted(m.id for m in sent) == sorted(d.id for d in got)
        assert rabbitmq.queue_depth(queue_name) == 0
