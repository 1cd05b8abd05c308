"""Helpers for the MQHandler tests: endpoint URLs per test queue, and draining queues to count
records end to end (ids, order, duplicates)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pytest

from mqlogging.backends import open_consumer
from mqlogging.wire import read_meta
from tests.brokers import ActiveMQ, RabbitMQ


def amqp_url(rabbitmq: RabbitMQ, queue: str, **query: Any) -> str:
    """An AMQP endpoint publishing straight to ``queue`` (default exchange)."""
    params = {"exchange": "", "queue": queue, **query}
    return rabbitmq.amqp_url + "?" + "&".join(f"{k}={v}" for k, v in params.items())


def stomp_url(broker: RabbitMQ | ActiveMQ, queue: str) -> str:
    return f"{broker.stomp_url}/queue/{queue}"


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
    ``message_id``) and ``_redelivered``."""
    docs: list[dict[str, Any]] = []
    wanted = set(expected) if not isinstance(expected, int) else None
    seen: set[int] = set()
    last_tag = [0]

    def satisfied() -> bool:
        if wanted is None:
            return len(docs) >= int(expected)  # type: ignore[arg-type]
        return wanted <= seen

    deadline = time.monotonic() + timeout
    while True:
        with rabbitmq.amqp_channel() as ch:
            ch.queue_declare(queue, durable=True)
            ch.basic_qos(prefetch_count=2000)

            def on_message(channel: Any, method: Any, props: Any, body: bytes) -> None:
                doc = json.loads(body)
                doc["_mid"] = props.message_id
                doc["_redelivered"] = method.redelivered
                docs.append(doc)
                if "seq" in doc:
                    seen.add(int(doc["seq"]))
                last_tag[0] = method.delivery_tag
                if len(docs) % 500 == 0:
                    channel.basic_ack(method.delivery_tag, multiple=True)
                    last_tag[0] = 0  # acked: acking the same tag again closes the channel

            last_tag[0] = 0
            tag = ch.basic_consume(queue, on_message)
            while not satisfied():
                if time.monotonic() > deadline:
                    missing = len(wanted - seen) if wanted is not None else "?"
                    msg = (
                        f"{len(docs)} records arrived in {queue} in {timeout}s ({missing} missing)"
                    )
                    raise AssertionError(msg)
                ch.connection.process_data_events(time_limit=0.2)
            while time.monotonic() < deadline:  # then until empty and idle
                count = len(docs)
                ch.connection.process_data_events(time_limit=idle)
                ready = ch.queue_declare(queue, passive=True).method.message_count
                if len(docs) == count and ready == 0:
                    break
            ch.basic_cancel(tag)
            if last_tag[0]:
                ch.basic_ack(last_tag[0], multiple=True)
            ch.connection.process_data_events(time_limit=0)
        # Deliveries in flight at the cancel went back to the queue: fetch them too.
        if rabbitmq.queue_depth(queue) == 0 or time.monotonic() > deadline:
            return docs


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
    return str(doc["event"]["id"])


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def app_logger(request: pytest.FixtureRequest) -> Iterator[logging.Logger]:
    """A fresh, non-propagating logger; its handlers are closed and removed afterwards."""
    logger = logging.getLogger(f"app.{request.node.name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
