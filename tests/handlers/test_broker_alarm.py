"""A RabbitMQ resource alarm (memory high watermark) blocks every publishing connection: the
broker stops reading what producers send. The handler must neither freeze its callers nor
lose or duplicate a record; it spools while blocked and delivers everything once the alarm
clears. Real RabbitMQ, alarm raised with ``rabbitmqctl set_vm_memory_high_watermark``."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.brokers import RabbitMQ
from harness.drain import amqp_url, drain_amqp, record_id, seqs, stomp_url
from harness.helpers import free_port, wait_until
from mqlogging import MQHandler
from mqlogging._ids import new_id
from mqlogging._types import Message
from mqlogging.backends import open_producer
from mqlogging.backends.endpoints import Endpoint
from mqlogging.errors import BackendError


def _watermark(rabbitmq: RabbitMQ, value: str) -> None:
    result = rabbitmq.rabbitmqctl("set_vm_memory_high_watermark", value)
    assert result.returncode == 0, result.stderr


def test_memory_alarm_blocks_publishing_without_loss(
    rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path, app_logger: Any
) -> None:
    """2,000 records logged while the broker's memory alarm blocks publishers: no emit()
    waits for the broker (none takes 0.5 s), and after the alarm clears every record arrives, in order,
    any second copy under the same record id."""
    handler = MQHandler(
        amqp_url(rabbitmq, queue_name), spool=str(spool_dir), timeout=2.0, retry_max=1.0
    )
    app_logger.addHandler(handler)
    app_logger.info("before the alarm", extra={"seq": 0})
    assert handler.flush(20)
    _watermark(rabbitmq, "0.0000001")  # every publisher is blocked from now on
    try:
        slowest = 0.0
        for i in range(1, 2001):
            started = time.monotonic()
            app_logger.info("during the alarm %d", i, extra={"seq": i})
            slowest = max(slowest, time.monotonic() - started)
        wait_until(lambda: handler.stats()["spooled"] > 0, 30, message="spooling while blocked")
    finally:
        _watermark(rabbitmq, "0.4")
    assert handler.flush(60)
    handler.close()
    docs = drain_amqp(rabbitmq, queue_name, set(range(2001)))
    assert slowest < 0.5  # blocked on the broker would be its 2 s timeout, or forever
    # Every record arrives, first copies in emit order. Batches published on the blocked
    # connection before it was given up are read by the broker once the alarm clears, next to
    # their replay: at-least-once copies with the same record id (one document in ES).
    assert list(range(2001)) == list(dict.fromkeys(seqs(docs)))
    ids: dict[int, set[str]] = {}
    for doc in docs:
        ids.setdefault(int(doc["seq"]), set()).add(record_id(doc))
    assert all(len(copies) == 1 for copies in ids.values())


# -- review 11 ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def second_rabbitmq() -> Iterator[RabbitMQ]:
    """A second private RabbitMQ node, so that one node can be in alarm while the other is
    not (an alarm is node-wide, and cluster-wide within a cluster)."""
    node = RabbitMQ()
    try:
        node.start()
        yield node
    finally:
        node.close()


def _url(scheme: str, rabbitmq: RabbitMQ, queue: str) -> str:
    """The endpoint of ``queue`` on ``rabbitmq`` over AMQP or STOMP (same queue)."""
    return stomp_url(rabbitmq, queue) if scheme == "stomp" else amqp_url(rabbitmq, queue)


def _two_host_url(scheme: str, first: RabbitMQ, second: RabbitMQ, queue: str) -> str:
    """One endpoint with two hosts (the two nodes), for ``queue``."""
    if scheme == "stomp":
        hosts = f"{first.host}:{first.stomp_port},{second.host}:{second.stomp_port}"
        return f"stomp://guest:guest@{hosts}/queue/{queue}"
    hosts = f"{first.host}:{first.amqp_port},{second.host}:{second.amqp_port}"
    return f"amqp://guest:guest@{hosts}/?exchange=&queue={queue}"


@pytest.mark.parametrize("scheme", ["amqp", "stomp"])
def test_multi_host_endpoint_fails_over_from_a_blocked_first_host(
    rabbitmq: RabbitMQ, second_rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path,
    app_logger: Any, scheme: str,
) -> None:  # fmt: skip
    """``amqp://h1,h2/...`` (or ``stomp://h1,h2/...``) with h1 in a memory alarm (it accepts
    connections, then blocks every publisher) and h2 healthy: the records are delivered
    through h2 within a few ``timeout`` periods, as they would be if h1 were down. Observed:
    every reconnection goes to h1 again, which accepts it, so h2 is never tried; flush()
    fails and everything sits in the spool for as long as the alarm lasts."""
    url = _two_host_url(scheme, rabbitmq, second_rabbitmq, queue_name)
    handler = MQHandler(url, spool=str(spool_dir), timeout=1.0, retry_max=0.5)
    app_logger.addHandler(handler)
    app_logger.info("before the alarm", extra={"seq": 0})
    assert handler.flush(20)
    _watermark(rabbitmq, "0.0000001")
    try:
        for i in range(1, 201):
            app_logger.info("during the alarm %d", i, extra={"seq": i})
        delivered = handler.flush(4)
        on_second = second_rabbitmq.queue_depth(queue_name)
    finally:
        _watermark(rabbitmq, "0.4")
    handler.close()
    assert delivered, handler.stats()["endpoints"]
    assert on_second == 200


@pytest.mark.parametrize("scheme", ["amqp", "stomp"])
def test_retries_against_a_blocked_broker_do_not_multiply_duplicates(
    rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path, app_logger: Any, scheme: str
) -> None:
    """A memory alarm long enough for several retries (``timeout=1``, ``retry_max=0.3``): once
    it clears, every record arrives, and none more than twice (one copy on the wire when the
    first attempt was given up, one from the spool). Observed: the head batch arrives once
    per retry (11 copies after a 15 s alarm, 4 here), and each abandoned connection stays
    open, blocked, on the broker with its copy unread (22 after 20 retries). STOMP the same
    (the broker stops reading; every reconnection writes the head batch again)."""
    handler = MQHandler(
        _url(scheme, rabbitmq, queue_name), spool=str(spool_dir), timeout=1.0, retry_max=0.3,
        batch_size=100,
    )  # fmt: skip
    app_logger.addHandler(handler)
    app_logger.info("before the alarm", extra={"seq": 0})
    assert handler.flush(20)
    name = next(iter(handler.stats()["endpoints"]))
    _watermark(rabbitmq, "0.0000001")
    try:
        for i in range(1, 301):
            app_logger.info("during the alarm %d", i, extra={"seq": i})
        wait_until(
            lambda: handler.stats()["endpoints"][name]["failures"] >= 3, 30,
            message="three attempts against the blocked broker",
        )  # fmt: skip
    finally:
        _watermark(rabbitmq, "0.4")
    assert handler.flush(30)
    handler.close()
    docs = drain_amqp(rabbitmq, queue_name, set(range(301)))
    copies = Counter(seqs(docs))
    assert set(copies) == set(range(301))
    assert max(copies.values()) <= 2, copies.most_common(3)


def test_blocked_endpoint_does_not_hold_up_the_others_with_strategy_all(
    rabbitmq: RabbitMQ, second_rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path,
    app_logger: Any,
) -> None:  # fmt: skip
    """``strategy="all"`` over two brokers, the first in a memory alarm: a record still
    reaches the healthy second broker about as fast as without the alarm (well under the
    ``timeout`` of 2 s), as the design promises ("a down endpoint gets its copies later
    without holding up the others"). Observed: every other record waits for the blocked
    endpoint's retry to time out (3.0 s with timeout=3, 10 s with the default)."""
    urls = [amqp_url(rabbitmq, queue_name), amqp_url(second_rabbitmq, queue_name)]
    handler = MQHandler(
        urls, strategy="all", spool=str(spool_dir), timeout=2.0, retry_max=0.2
    )  # fmt: skip
    app_logger.addHandler(handler)
    app_logger.info("before the alarm", extra={"seq": 0})
    assert handler.flush(20)
    _watermark(rabbitmq, "0.0000001")
    latencies = []
    try:
        for i in range(1, 4):
            before = second_rabbitmq.queue_depth(queue_name)
            started = time.monotonic()
            app_logger.info("during the alarm %d", i, extra={"seq": i})
            wait_until(lambda: second_rabbitmq.queue_depth(queue_name) > before, 20, 0.02)  # noqa: B023
            latencies.append(time.monotonic() - started)
    finally:
        _watermark(rabbitmq, "0.4")
    assert handler.flush(30)
    handler.close()
    assert max(latencies) < 1.0, [round(t, 2) for t in latencies]


def test_close_while_blocked_returns_in_time_and_the_next_run_ships_everything(
    rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path, app_logger: Any
) -> None:
    """close() while the broker blocks publishers returns within its close_timeout (the
    blocked connection, kept while the alarm lasts, is aborted, not closed gracefully: a
    blocked broker would never answer), the records stay in the spool, and the next handler
    ships every one of them once the alarm clears."""
    url = amqp_url(rabbitmq, queue_name)
    handler = MQHandler(url, spool=str(spool_dir), timeout=1.0, retry_max=0.3, close_timeout=3)
    app_logger.addHandler(handler)
    app_logger.info("before the alarm", extra={"seq": 0})
    assert handler.flush(20)
    _watermark(rabbitmq, "0.0000001")
    try:
        for i in range(1, 301):
            app_logger.info("during the alarm %d", i, extra={"seq": i})
        name = next(iter(handler.stats()["endpoints"]))
        wait_until(
            lambda: handler.stats()["endpoints"][name]["failures"] >= 2, 30,
            message="two attempts against the blocked broker",
        )  # fmt: skip
        started = time.monotonic()
        handler.close()
        took = time.monotonic() - started
        app_logger.removeHandler(handler)
    finally:
        _watermark(rabbitmq, "0.4")
    assert took < 3 + 2  # close_timeout, plus slack for a loaded machine
    nxt = MQHandler(url, spool=str(spool_dir), timeout=2.0)
    app_logger.addHandler(nxt)
    assert nxt.flush(30)
    nxt.close()
    docs = drain_amqp(rabbitmq, queue_name, set(range(301)))
    assert set(seqs(docs)) == set(range(301))


# -- review 12 ----------------------------------------------------------------------------------


def _publish(producer: Any, messages: list[Message]) -> bool:
    """True if the producer got ``messages`` confirmed, False if this attempt failed."""
    try:
        producer.publish_batch(messages)
    except BackendError:
        return False
    return True


def _batch(n: int) -> list[Message]:
    return [Message(rid, json.dumps({"id": rid}).encode()) for rid in (new_id() for _ in range(n))]


def test_producer_returns_to_a_recovered_host_while_the_other_stays_blocked(
    rabbitmq: RabbitMQ, second_rabbitmq: RabbitMQ, queue_name: str
) -> None:
    """``amqp://h1,h2`` both in a memory alarm, the producer has left h1 for h2 (both
    blocked); then h1's alarm clears while h2's goes on. A batch is confirmed through h1 (the
    primary) within a few seconds, as it would be had the producer never been on h2.
    Observed: every attempt fails at once with "blocks publishing": both hosts are in
    ``_fled`` and only a confirmed batch clears it, so the producer keeps its blocked link
    to h2 for as long as h2's alarm lasts (a disk alarm: hours), with h1 healthy."""
    url = _two_host_url("amqp", rabbitmq, second_rabbitmq, queue_name)
    producer = open_producer(Endpoint.from_url(url, timeout=1.0, connect_timeout=2.0))
    try:
        assert _publish(producer, _batch(1))  # connected to h1
        _watermark(rabbitmq, "0.0000001")
        _watermark(second_rabbitmq, "0.0000001")
        try:
            assert not _publish(producer, _batch(5))  # h1 blocks
            assert not _publish(producer, _batch(5))  # left for h2, which blocks too
            assert not _publish(producer, _batch(5))  # nowhere left to go
            _watermark(rabbitmq, "0.4")  # h1 recovers, h2 stays blocked
            recovered = _eventually(lambda: _publish(producer, _batch(5)), 6.0)
        finally:
            _watermark(rabbitmq, "0.4")
            _watermark(second_rabbitmq, "0.4")
    finally:
        producer.close()
    assert recovered, "no batch confirmed through the recovered first host within 6 s"


def _eventually(attempt: Any, seconds: float) -> bool:
    """``attempt()`` until it returns True or ``seconds`` pass (a retry loop, as the handler's)."""
    try:
        wait_until(attempt, seconds, 0.2)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize("scheme", ["amqp", "stomp"])
def test_retries_against_a_blocked_host_whose_peer_is_down_do_not_multiply_copies(
    rabbitmq: RabbitMQ, queue_name: str, scheme: str
) -> None:
    """``h1,h2`` with h1 in a memory alarm and h2 down (nothing listens): the same batch of 5,
    retried 6 times as the handler does, then the alarm clears and the batch goes through.
    Every record is in the queue at most twice (one copy left on the wire, one confirmed),
    plus once per attempt the broker confirmed before its alarm took effect.
    Observed: the producer leaves h1 (blocked), h2 refuses, so it connects to h1 again and
    writes the batch again on the new connection, abandoning the old one with its copy:
    one more copy per retry once the alarm clears."""
    down = f"127.0.0.1:{free_port()}"
    if scheme == "stomp":
        url = f"stomp://guest:guest@{rabbitmq.host}:{rabbitmq.stomp_port},{down}/queue/{queue_name}"
    else:
        url = f"amqp://guest:guest@{rabbitmq.host}:{rabbitmq.amqp_port},{down}/?exchange=&queue={queue_name}"
    producer = open_producer(Endpoint.from_url(url, timeout=1.0, connect_timeout=1.0))
    batch = _batch(5)
    try:
        assert _publish(producer, _batch(1))  # connected to h1; the queue exists
        _watermark(rabbitmq, "0.0000001")
        try:
            early = sum(_publish(producer, batch) for _ in range(6))
        finally:
            _watermark(rabbitmq, "0.4")
        wait_until(lambda: _publish(producer, batch), 20, 0.2, message="the batch confirmed")
    finally:
        producer.close()
    copies = Counter(doc["id"] for doc in drain_amqp(rabbitmq, queue_name, 11, idle=2.0))
    assert max(copies.values()) <= 2 + early, (sorted(copies.values()), early)
