"""The Kafka consumer while it holds (``fetch(0)``): give-backs, rebalances, commits failing,
static members closed and restarted (review 8's hostile cases).

All run against the noida-db Kafka stand-in (``kafka`` fixture). The cases that only show
held-up behaviour beyond the quick representative are ``slow``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, TopicPartition

from harness.helpers import wait_until
from harness.kafka import KafkaAdmin, stamped_message
from mqlogging._types import Delivery
from mqlogging.backends import open_consumer, open_producer
from mqlogging.backends.kafka import KafkaConsumer, _Partition
from mqlogging.errors import ConnectError


def _take(consumer: Any, expected: int, timeout: float = 20.0) -> list[Delivery]:
    """Fetch (without acking) until ``expected`` deliveries arrived."""
    got: list[Delivery] = []

    def more() -> bool:
        got.extend(consumer.fetch(expected - len(got), 0.2))
        return len(got) >= expected

    wait_until(more, timeout=timeout, interval=0.0, message=f"{expected} deliveries")
    return got


def _offset(d: Delivery) -> int:
    return int(d.headers["offset"])


def _prefixes(deliveries: list[Delivery], part: int) -> list[Delivery]:
    """The first ``1/part`` of each partition's ``deliveries`` (lowest offsets)."""
    by_partition: dict[str, list[Delivery]] = {}
    for d in deliveries:
        by_partition.setdefault(d.headers["partition"], []).append(d)
    out: list[Delivery] = []
    for each in by_partition.values():
        each.sort(key=_offset)
        out += each[: len(each) // part]
    return out


@pytest.mark.parametrize(
    "held_first",
    [True, pytest.param(False, marks=pytest.mark.slow)],
    ids=["nack-while-holding", "nack-then-hold"],
)
def test_records_given_back_around_a_hold_come_again_after_resume(
    kafka: KafkaAdmin, queue_name: str, held_first: bool
) -> None:
    """Held up in review: records given back (nack requeue) come again once the consumer
    resumes, whether it was already holding (its window full) when they were given back, or
    held at once after (before the seek's records came back); everything is then acked and
    the lag ends at 0."""
    url, _sent = kafka.filled_topic(queue_name, 100)
    with open_consumer(url, group=queue_name, prefetch=50) as c:
        got = _take(c, 50)
        if held_first:
            for _ in range(3):
                assert c.fetch(0, 0.2) == []
        back = [d for d in got if 20 <= _offset(d) < 30]
        c.nack(back)
        c.ack([d for d in got if d not in back])
        for _ in range(3):
            assert c.fetch(0, 0.2) == []
        seen: list[int] = []

        def rest() -> bool:
            batch = c.fetch(50, 0.2)
            seen.extend(_offset(d) for d in batch)
            c.ack(batch)
            return kafka.lag(queue_name, queue_name) == 0

        wait_until(rest, timeout=15, interval=0.0, message=f"lag 0; seen {seen}")
        assert sorted(seen) == list(range(20, 30)) + list(range(50, 100))


def test_rebalance_while_holding_keeps_what_stays_with_the_member(
    kafka: KafkaAdmin, queue_name: str
) -> None:
    """Member A holds 300 records of a 3-partition topic, a third of them acked (commits in
    flight; the first third of each partition's, so its next owner reads from the first record
    in flight), while B joins, reads and acks everything of its partitions, and leaves; A then
    acks the rest and reads everything else. Every record is acked, the lag ends at 0, and
    exactly A's in-flight records of the partitions B took are handed out twice: a partition
    the rebalance gave back to A keeps its in-flight records (acking them is not void) and
    is read on from where A was, so none of its records comes twice."""
    kafka.create_topic(queue_name, partitions=3)
    url = kafka.url(queue_name)
    sent = [stamped_message(f"h:{i % 9}:p", i) for i in range(600)]
    with open_producer(url) as producer:
        producer.publish_batch(sent)
    handed: Counter[str] = Counter()
    b_partitions: set[str] = set()

    def note(batch: list[Delivery]) -> list[Delivery]:
        handed.update(d.id for d in batch)
        return batch

    with open_consumer(url, group=queue_name, prefetch=100) as a:
        first = note(_take(a, 300))
        done = _prefixes(first, 3)
        a.ack(done)
        in_flight = [d for d in first if d not in done]
        assert a.fetch(0, 0.1) == []
        with open_consumer(url, group=queue_name, prefetch=100) as b:
            empty = [0]

            def b_read_its_partitions() -> bool:
                assert a.fetch(0, 0.1) == []
                batch = note(b.fetch(100, 0.2))
                b.ack(batch)
                b_partitions.update(d.headers["partition"] for d in batch)
                empty[0] = 0 if batch or not b_partitions else empty[0] + 1
                return empty[0] >= 3

            wait_until(b_read_its_partitions, timeout=30, interval=0.0, message="B read")
        a.ack(in_flight)  # void for the partitions B took, not for those A kept

        def a_read_the_rest() -> bool:
            batch = note(a.fetch(100, 0.2))
            a.ack(batch)
            return kafka.lag(queue_name, queue_name) == 0

        wait_until(a_read_the_rest, timeout=30, interval=0.0, message="lag 0")
    twice = {i for i, n in handed.items() if n > 1}
    taken = {d.id for d in in_flight if d.headers["partition"] in b_partitions}
    kept = {d.id for d in in_flight} - taken
    assert set(handed) == {m.id for m in sent}
    assert kept, f"A kept none of the partitions it had records in flight of ({b_partitions})"
    assert twice == taken
    assert max(handed.values()) <= 2


@pytest.mark.slow
def test_close_while_holding_with_a_commit_failing(kafka: Any, queue_name: str) -> None:
    """Held up in review: a member holds 100 records, acks 60 of them out of order while the broker is
    stopped (the commit fails), keeps holding, and is closed while the broker is still down:
    close returns within its bound. After the restart a new member of the group reads every
    record not acked, and everything is acked in the end (lag 0)."""
    url, _sent = kafka.filled_topic(queue_name, 100)
    with open_consumer(url, group=queue_name, prefetch=100, timeout=3) as c:
        got = _take(c, 100)
        assert c.fetch(0, 0.2) == []
        kafka.stop()
        acked = got[40:] + got[:20]  # out of order: 40.. first, then 0..19
        c.ack(got[40:])
        for _ in range(3):
            with contextlib.suppress(ConnectError):  # the broker is down: holding says so
                assert c.fetch(0, 0.3) == []
        c.ack(got[:20])
        started = time.monotonic()
        c.close()
        took = time.monotonic() - started
    assert took < 8
    kafka.start()
    seen: list[int] = []
    with open_consumer(url, group=queue_name) as again:

        def drained() -> bool:
            batch = again.fetch(100, 0.2)
            seen.extend(_offset(d) for d in batch)
            again.ack(batch)
            return kafka.lag(queue_name, queue_name) == 0 and len(seen) > 0

        wait_until(drained, timeout=30, interval=0.0, message="lag 0")
    assert set(range(20, 40)) <= set(seen)
    assert len(acked) == 80


def test_static_member_closed_and_restarted_in_place_takes_its_partitions_back(
    kafka: KafkaAdmin, queue_name: str
) -> None:
    """Two static members (``group_instance``) share a 2-partition topic; B is closed (a
    static member does not leave the group on close: librdkafka sends no LeaveGroup for a
    ``group.instance.id``, KIP-345, so its partitions wait for it, up to the session
    timeout on Kafka, for ever on the stand-in). Records are published meanwhile; B
    restarted under the same name takes its partitions back and, with A, reads every one
    of them exactly once, none of those B committed before it closed."""
    kafka.create_topic(queue_name, partitions=2)
    url = kafka.url(queue_name)
    sent = [stamped_message(f"h:{i % 8}:p", i) for i in range(80)]
    with open_producer(url) as producer:
        producer.publish_batch(sent)
    handed: Counter[str] = Counter()

    def read(members: list[Any], ids: set[str]) -> Callable[[], bool]:
        def more() -> bool:
            for m in members:
                batch = m.fetch(100, 0.1)
                m.ack(batch)
                handed.update(d.id for d in batch)
            return ids <= set(handed)

        return more

    with open_consumer(url, group=queue_name, group_instance="a") as a:
        with open_consumer(url, group=queue_name, group_instance="b") as b:
            wait_until(read([a, b], {m.id for m in sent}), timeout=30, message="both read")
        later = [stamped_message(f"h:{i % 8}:p", i) for i in range(80, 160)]
        with open_producer(url) as producer:
            producer.publish_batch(later)
        with open_consumer(url, group=queue_name, group_instance="b") as b:
            wait_until(read([a, b], {m.id for m in later}), timeout=10, message="B back")
            everything = read([a, b], {m.id for m in sent + later})
            wait_until(
                lambda: everything() and kafka.lag(queue_name, queue_name) == 0,
                timeout=10,
                interval=0.0,
                message="lag 0",
            )
    assert set(handed) == {m.id for m in sent + later}
    assert max(handed.values()) == 1


# -- bookkeeping of the rebalance and commit callbacks, driven directly (no client) ------------


def _member() -> tuple[KafkaConsumer, object]:
    """A consumer whose callbacks believe ``handle`` is its client (nothing is connected)."""
    consumer = KafkaConsumer("kafka://127.0.0.1:1/t", group="g")
    handle = consumer._handle = object()
    consumer._token = handle
    return consumer, handle


def test_a_partition_lost_twice_before_reading_keeps_its_floor() -> None:
    """A partition that came back with a floor (settled before, commit not confirmed) and is
    lost again before it read anything keeps that floor for its next assignment (it was
    dropped: those records were handed out again)."""
    consumer, handle = _member()
    consumer._parts[0] = _Partition(generation=2, floor=50)
    consumer._parts[1] = _Partition(generation=2, floor=50, committed=50)
    consumer._on_lost(handle, [TopicPartition("t", 0), TopicPartition("t", 1)])
    assert consumer._floors == {0: 50}  # 1: the coordinator has 50 already, no floor needed


def test_a_failed_commit_warns_only_for_partitions_still_owned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A commit report failing for a partition revoked meanwhile (nothing retries it) is an
    INFO line, not the "retrying" warning; one failing for a partition still owned warns."""
    consumer, handle = _member()
    caplog.set_level(logging.INFO, logger="mqlogging.backends.kafka")
    refused = KafkaError(KafkaError.ILLEGAL_GENERATION)
    consumer._on_commit(handle, refused, [TopicPartition("t", 0, 10)])
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "no longer assigned" in caplog.text
    caplog.clear()
    consumer._parts[1] = _Partition(generation=1, committing=10)
    consumer._on_commit(handle, refused, [TopicPartition("t", 1, 10)])
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "retrying every" in caplog.text
    assert consumer._parts[1].committing == -1
