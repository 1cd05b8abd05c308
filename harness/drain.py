"""Endpoint URLs per test queue, and draining a queue to count records end to end.

Used by the handler, collector and CLI tests to check what arrived: ids, order, duplicates.

- :func:`amqp_url` / :func:`stomp_url` — an endpoint that reaches exactly one test queue.
- :func:`drain_amqp` / :func:`drain_stomp` — consume until the expected records are there, then
  until the queue stays empty for a moment (so duplicates are caught too).
- :func:`seqs`, :func:`record_id`, :func:`is_marker` — read the documents drained.

Nothing here imports pytest; pika is imported by :class:`harness.brokers.RabbitMQ` when used.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from typing import Any

from harness.brokers import ActiveMQ, RabbitMQ
from mqlogging.backends import open_consumer
from mqlogging.wire import read_meta

__all__ = [
    "amqp_url",
    "drain_amqp",
    "drain_stomp",
    "is_marker",
    "record_id",
    "seqs",
    "stomp_url",
]

#: Deliveries acknowledged at once while draining (and the consumer's prefetch is 4 times it).
_ACK_EVERY = 500


def amqp_url(rabbitmq: RabbitMQ, queue: str, **query: Any) -> str:
    """An AMQP endpoint publishing straight to ``queue`` (default exchange)."""
    params = {"exchange": "", "queue": queue, **query}
    return rabbitmq.amqp_url + "?" + "&".join(f"{k}={v}" for k, v in params.items())


def stomp_url(broker: RabbitMQ | ActiveMQ, queue: str) -> str:
    """A STOMP endpoint for ``queue`` (a queue, not a topic: messages wait for a consumer)."""
    return f"{broker.stomp_url}/queue/{queue}"


class _AmqpDrain:
    """What one :func:`drain_amqp` call has received so far, across channels.

    Acknowledgements go in batches of ``_ACK_EVERY``; ``last_tag`` is the newest delivery not
    yet acknowledged (0: none), acknowledged before the channel closes.
    """

    def __init__(self, queue: str, expected: int | Collection[int]) -> None:
        self.queue = queue
        self.docs: list[dict[str, Any]] = []
        self.count = expected if isinstance(expected, int) else None
        self.wanted = None if isinstance(expected, int) else set(expected)
        self.seen: set[int] = set()
        self.last_tag = 0

    def on_message(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        """pika callback: keep the document with its ``_mid`` and ``_redelivered``."""
        doc = json.loads(body)
        doc["_mid"] = props.message_id
        doc["_redelivered"] = method.redelivered
        self.docs.append(doc)
        if "seq" in doc:
            self.seen.add(int(doc["seq"]))
        self.last_tag = method.delivery_tag
        if len(self.docs) % _ACK_EVERY == 0:
            channel.basic_ack(method.delivery_tag, multiple=True)
            self.last_tag = 0  # acked: acking the same tag again closes the channel

    def satisfied(self) -> bool:
        """The expected count arrived, or every wanted ``seq`` value."""
        if self.wanted is None:
            return len(self.docs) >= (self.count or 0)
        return self.wanted <= self.seen

    def shortfall(self, timeout: float) -> str:
        """The message of the AssertionError raised when the deadline passes unsatisfied."""
        missing = len(self.wanted - self.seen) if self.wanted is not None else "?"
        return f"{len(self.docs)} records arrived in {self.queue} in {timeout}s ({missing} missing)"


def drain_amqp(
    rabbitmq: RabbitMQ,
    queue: str,
    expected: int | Collection[int],
    timeout: float = 60.0,
    idle: float = 0.5,
) -> list[dict[str, Any]]:
    """Consume ``queue`` until ``expected`` is met (a count of messages, or a set of ``seq``
    values that must all have arrived), then until the queue is empty and nothing arrived for
    ``idle`` seconds (to catch duplicates). Each document gets ``_mid`` (the AMQP
    ``message_id``) and ``_redelivered``.

    Raises:
        AssertionError: ``expected`` was not met within ``timeout`` seconds.
    """
    drain = _AmqpDrain(queue, expected)
    deadline = time.monotonic() + timeout
    while True:
        _consume_once(rabbitmq, drain, deadline, timeout, idle)
        # Deliveries in flight at the cancel went back to the queue: fetch them too.
        if rabbitmq.queue_depth(queue) == 0 or time.monotonic() > deadline:
            return drain.docs


def _consume_once(
    rabbitmq: RabbitMQ, drain: _AmqpDrain, deadline: float, timeout: float, idle: float
) -> None:
    """One consumer on a fresh channel: until satisfied, then until empty and idle; then
    cancel and acknowledge what is left."""
    with rabbitmq.amqp_channel() as ch:
        ch.queue_declare(drain.queue, durable=True)
        ch.basic_qos(prefetch_count=4 * _ACK_EVERY)
        drain.last_tag = 0
        tag = ch.basic_consume(drain.queue, drain.on_message)
        while not drain.satisfied():
            if time.monotonic() > deadline:
                raise AssertionError(drain.shortfall(timeout))
            ch.connection.process_data_events(time_limit=0.2)
        _until_idle(ch, drain, deadline, idle)
        ch.basic_cancel(tag)
        if drain.last_tag:
            ch.basic_ack(drain.last_tag, multiple=True)
        ch.connection.process_data_events(time_limit=0)


def _until_idle(ch: Any, drain: _AmqpDrain, deadline: float, idle: float) -> None:
    """Keep consuming until the queue is empty and nothing arrived for ``idle`` seconds (or
    the deadline): duplicates delivered after the last expected record are caught too."""
    while time.monotonic() < deadline:
        count = len(drain.docs)
        ch.connection.process_data_events(time_limit=idle)
        ready = ch.queue_declare(drain.queue, passive=True).method.message_count
        if len(drain.docs) == count and ready == 0:
            return


def drain_stomp(
    url: str, expected: int, timeout: float = 60.0, idle: float = 0.5
) -> list[dict[str, Any]]:
    """Like :func:`drain_amqp` for a STOMP queue (ActiveMQ), through the STOMP consumer."""
    docs: list[dict[str, Any]] = []
    with open_consumer(url) as consumer:
        deadline = time.monotonic() + timeout
        while len(docs) < expected:
            if time.monotonic() > deadline:
                msg = f"only {len(docs)} of {expected} records arrived at {url} in {timeout}s"
                raise AssertionError(msg)
            batch = consumer.fetch(1000, 0.2)
            consumer.ack(batch)
            docs.extend(_doc(d.body, d.id) for d in batch)
        while batch := consumer.fetch(1000, idle):
            consumer.ack(batch)
            docs.extend(_doc(d.body, d.id) for d in batch)
    return docs


def _doc(body: bytes, mid: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(body)
    doc["_mid"] = mid
    return doc


def is_marker(doc: dict[str, Any]) -> bool:
    """The handler's own drop marker (mqlogging.wire), not a record the test logged."""
    return bool(read_meta(doc).dropped)


def seqs(docs: list[dict[str, Any]]) -> list[int]:
    """The ``seq`` extra field of each logged record, in arrival order (markers skipped)."""
    return [int(d["seq"]) for d in docs if not is_marker(d)]


def record_id(doc: dict[str, Any]) -> str:
    """The record id of an ECS document (``event.id``)."""
    return str(doc["event"]["id"])
