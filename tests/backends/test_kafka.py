"""The Kafka transport (``kafka://``): URLs, producer, consumer group, tap.

Every test that talks to a broker runs against the noida-db Kafka stand-in (``kafka``
fixture, :mod:`harness.kafka`), one private process on a loopback port: it is not Apache
Kafka. ``test_real_cluster_round_trip`` runs the round trip against a real cluster when
``MQLOGGING_KAFKA_URL`` is set.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

import pytest

from harness.helpers import free_port, wait_until
from harness.kafka import KafkaAdmin, stamped_message
from mqlogging._ids import new_id
from mqlogging._types import Delivery, Message
from mqlogging.backends import TapOptions, open_consumer, open_producer, open_tap
from mqlogging.backends.kafka import KafkaEndpoint
from mqlogging.errors import ConfigurationError, ConnectError, PartlyRefused, PublishTimeout


def _drain(consumer: Any, expected: int, ack: bool = True, timeout: float = 20.0) -> list[Delivery]:
    got: list[Delivery] = []

    def more() -> bool:
        batch = consumer.fetch(1000, 0.2)
        got.extend(batch)
        if ack:
            consumer.ack(batch)
        return len(got) >= expected

    wait_until(more, timeout=timeout, interval=0.0, message=f"{expected} deliveries")
    return got


# -- URLs --------------------------------------------------------------------------------------


class TestEndpoint:
    def test_hosts_topic_and_defaults(self) -> None:
        """The path is the topic, hosts get 9092 (9093 with TLS), the password is masked."""
        ep = KafkaEndpoint.from_url("kafka://u:secret@k1:9000,k2/app.logs?group=g&linger_ms=20")
        assert [str(h) for h in ep.hosts] == ["k1:9000", "k2:9092"]
        assert (ep.topic, ep.group, ep.linger_ms, ep.compression) == ("app.logs", "g", 20.0, "lz4")
        assert ep.redacted() == "kafka://u:***@k1:9000,k2:9092/app.logs"
        assert "secret" not in repr(ep)
        assert KafkaEndpoint.from_url("kafka+ssl://k1/t").hosts[0].port == 9093

    @pytest.mark.parametrize(
        ("url", "hint"),
        [
            ("kafka://k1:9092", "give the topic as the URL path"),
            ("kafka://k1/bad topic!", "is not a Kafka topic name"),
            ("kafka://k1/t?compression=brotli", "compression must be one of"),
            ("kafka://k1/t?groupp=x", "did you mean 'group'"),
            ("kafka://k1/t?sasl_mechanism=PLAIN", "no user name"),
            ("kafka://u:p@k1/t?sasl_mechanism=GSSAPI", "sasl_mechanism must be one of"),
            ("kafka://k1/t?ca_certs=/etc/ssl/certs/ca-certificates.crt", "use kafka+ssl://"),
            ("kafka://k1/t?linger_ms=-1", "linger_ms must be"),
            ("kafka://k1/t?max_poll_interval=2", "max_poll_interval must be 6 to 86400 seconds"),
            ("kafka://k1/t?heartbeat=5", "unknown option 'heartbeat'"),
            ("kafka://k1/t?group_instance=a%20b", "group_instance 'a b' must be"),
            # Accepted at parse time before, refused by librdkafka (or confluent-kafka's
            # consume()) only when the handler's sender or the collector first used them.
            ("kafka://k1/t?timeout=400", "timeout must be at most 300"),
            ("kafka://k1/t?connect_timeout=3000000", "connect_timeout must be at most"),
            ("kafka://k1/t?prefetch=2000000", "prefetch must be at most 1000000"),
        ],
    )
    def test_bad_urls_are_one_line_errors(self, url: str, hint: str) -> None:
        """Every mistake in a Kafka URL is refused at parse time in one line that says what
        to write instead (and never with a password in it)."""
        with pytest.raises(ConfigurationError) as info:
            KafkaEndpoint.from_url(url)
        text = str(info.value)
        assert hint in text
        assert "\n" not in text

    def test_import_mqlogging_loads_no_kafka_client(self) -> None:
        """``import mqlogging`` and parsing a kafka:// URL import no Kafka client library:
        confluent-kafka is loaded only when a producer, consumer or tap is made."""
        code = (
            "import sys, mqlogging\n"
            "from mqlogging.backends.registry import transport_for\n"
            "transport_for('kafka://k1/t').endpoint.from_url('kafka://k1/t')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('confluent_kafka', 'kafka')))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "[]"


# -- producer and consumer against the stand-in ------------------------------------------------


def test_records_of_one_producer_stay_in_one_partition_in_order(
    kafka: KafkaAdmin, queue_name: str
) -> None:
    """Against the noida-db Kafka stand-in: 2,000 records of four producer identities
    interleaved over a 3-partition topic. Every record arrives once, and each producer's
    records sit in one partition in sequence order (the record key is the producer id)."""
    kafka.create_topic(queue_name, partitions=3)
    url = kafka.url(queue_name)
    sent = [stamped_message(f"host:{i % 4}:p", i) for i in range(2000)]
    with open_producer(url) as producer:
        for start in range(0, len(sent), 500):
            producer.publish_batch(sent[start : start + 500])
    with open_consumer(url, group=queue_name) as consumer:
        got = _drain(consumer, len(sent))
    assert sorted(m.id for m in sent) == sorted(d.id for d in got)
    by_producer: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for d in got:
        meta = json.loads(d.body)["mqlogging"]
        by_producer[meta["producer"]].append((int(d.headers["partition"]), meta["seq"]))
    for records in by_producer.values():
        assert len({p for p, _ in records}) == 1
        seqs = [s for _, s in records]
        assert sorted(seqs) == seqs


def test_offsets_are_committed_only_below_the_first_unacked_record(
    kafka: KafkaAdmin, queue_name: str
) -> None:
    """Against the noida-db Kafka stand-in: a consumer acks every record but one early one
    and closes; the next member of the group reads again from that record (nothing after an
    unacked record is lost by an out-of-order ack), and nothing before it."""
    url, sent = kafka.filled_topic(queue_name, 300)
    with open_consumer(url, group=queue_name) as first:
        got = _drain(first, 300, ack=False)
        first.ack(got[:100] + got[101:])  # record 100 is still with the sinks
    assert kafka.lag(queue_name, queue_name) == 200
    with open_consumer(url, group=queue_name) as second:
        again = _drain(second, 200)
    assert [m.id for m in sent[100:]] == [d.id for d in again]
    wait_until(lambda: kafka.lag(queue_name, queue_name) == 0, timeout=10)


def test_nack_with_requeue_reads_the_records_again(kafka: KafkaAdmin, queue_name: str) -> None:
    """Against the noida-db Kafka stand-in: records given back with ``nack(requeue=True)``
    are fetched again by the same consumer (the partition seeks back), then acked."""
    url, sent = kafka.filled_topic(queue_name, 50)
    with open_consumer(url, group=queue_name) as consumer:
        got = _drain(consumer, 50, ack=False)
        consumer.ack(got[:10])
        consumer.nack(got[10:])
        again = _drain(consumer, 40)
    assert [m.id for m in sent[10:]] == [d.id for d in again[:40]]
    wait_until(lambda: kafka.lag(queue_name, queue_name) == 0, timeout=10)


def test_nack_hands_out_again_only_the_records_given_back(
    kafka: KafkaAdmin, queue_name: str
) -> None:
    """Against the noida-db Kafka stand-in: of 100 fetched records, record 40 is given back
    with ``nack(requeue=True)`` after the records behind it up to 79 were acked, while 80..99
    are still in flight. Only record 40 is handed out again: the partition is read again from
    it, but the acked and the in-flight records are not handed out a second time (a file sink
    or an MQConsumer callback would get them twice, and a record nacked for good would bring
    the rest of its batch back on every try). Acking the in-flight ones still counts: the
    group's lag ends at 0."""
    url, sent = kafka.filled_topic(queue_name, 100)
    with open_consumer(url, group=queue_name) as consumer:
        got = _drain(consumer, 100, ack=False)
        consumer.ack(got[:40] + got[41:80])
        consumer.nack([got[40]])
        again = _drain(consumer, 1, ack=False)
        again += consumer.fetch(1000, 1.0)
        assert [sent[40].id] == [d.id for d in again]
        consumer.ack(again + got[80:])
        wait_until(lambda: kafka.lag(queue_name, queue_name) == 0, timeout=10)


def test_rebalance_between_two_members_loses_nothing(kafka: KafkaAdmin, queue_name: str) -> None:
    """Against the noida-db Kafka stand-in: one member holds fetched, unacked records when a
    second member joins and takes partitions from it. Acks of revoked records are void, the
    new owner reads them again: together the members ack every record, and the group's lag
    ends at 0."""
    kafka.create_topic(queue_name, partitions=4)
    url = kafka.url(queue_name)
    sent = [stamped_message(f"h:{i % 8}:p", i) for i in range(1200)]
    with open_producer(url) as producer:
        producer.publish_batch(sent)
    acked: set[str] = set()
    by_member = [0, 0]
    with open_consumer(url, group=queue_name) as a:
        held = _drain(a, 100, ack=False)  # fetched, still "with the sinks"
        with open_consumer(url, group=queue_name) as b:

            def everything() -> bool:
                for n, member in enumerate((a, b)):
                    batch = member.fetch(500, 0.2)
                    member.ack(batch)
                    acked.update(d.id for d in batch)
                    by_member[n] += len(batch)
                return len(acked) >= len(sent) and kafka.lag(queue_name, queue_name) == 0

            a.ack(held[:50])  # possibly void by now: its partitions may have moved
            acked.update(d.id for d in held[:50])
            wait_until(everything, timeout=30, interval=0.0, message="every record acked")
    assert {m.id for m in sent} == acked
    assert by_member[1] > 0  # the second member did take partitions over


def test_partitions_held_across_rebalances_are_read_again_after(
    kafka: KafkaAdmin, queue_name: str
) -> None:
    """Against the noida-db Kafka stand-in: member A holds (``fetch(0)``: its partitions
    are paused) while member B joins; A hands out nothing while it holds, whatever the group
    assigns it meanwhile. B takes a few records and leaves; A then gets every partition back,
    including those it had paused before the first rebalance (librdkafka keeps a pause across
    a revoke), and reads them: every record is acked, the group's lag ends at 0."""
    kafka.create_topic(queue_name, partitions=4)
    url = kafka.url(queue_name)
    sent = [stamped_message(f"h:{i % 8}:p", i) for i in range(800)]
    with open_producer(url) as producer:
        producer.publish_batch(sent)
    acked: set[str] = set()

    def settle(member: Any, batch: list[Delivery]) -> int:
        member.ack(batch)
        acked.update(d.id for d in batch)
        return len(batch)

    with open_consumer(url, group=queue_name) as a:
        _drain(a, 50, ack=False)  # with the sinks when the rebalance comes: void after it
        with open_consumer(url, group=queue_name) as b:

            def b_took_some() -> bool:
                assert a.fetch(0, 0.1) == []
                return settle(b, b.fetch(20, 0.1)) > 0

            wait_until(b_took_some, timeout=30, interval=0.0, message="B assigned")
            for _ in range(5):
                assert a.fetch(0, 0.1) == []

        def a_read_the_rest() -> bool:
            settle(a, a.fetch(500, 0.2))
            return len(acked) >= len(sent) and kafka.lag(queue_name, queue_name) == 0

        wait_until(a_read_the_rest, timeout=30, interval=0.0, message="A read everything")
    assert {m.id for m in sent} == acked


def test_a_failed_commit_is_made_again_once_the_broker_is_back(kafka: Any, queue_name: str) -> None:
    """Against the noida-db Kafka stand-in: a consumer acks 100 records while the broker is
    stopped (the commit cannot be made; after the restart the broker has forgotten the
    group's generation and refuses it, and the partition is assigned anew). With no further
    ack, the consumer's next fetches commit the settled offset and hand none of those records
    out again; a record acked just before ``close`` is committed by it (the lag is 0 as soon
    as close returns), and a new member of the group reads only what came after."""
    url, sent = kafka.filled_topic(queue_name, 100)
    with open_consumer(url, group=queue_name) as consumer:
        got = _drain(consumer, 100, ack=False)
        kafka.stop()
        consumer.ack(got)
        kafka.start()

        def committed() -> bool:
            with contextlib.suppress(ConnectError):
                assert consumer.fetch(100, 0.2) == []
            return kafka.lag(queue_name, queue_name) == 0

        wait_until(committed, timeout=30, interval=0.0, message="the settled offset committed")
        late = stamped_message("h:1:a", 100)
        with open_producer(url) as producer:
            producer.publish_batch([late])
        consumer.ack(_drain(consumer, 1, ack=False))
    assert kafka.lag(queue_name, queue_name) == 0
    last = stamped_message("h:1:a", 101)
    with open_producer(url) as producer:
        producer.publish_batch([last])
    with open_consumer(url, group=queue_name) as again:
        assert [d.id for d in _drain(again, 1)] == [last.id]
        assert again.fetch(100, 0.5) == []
    assert [m.id for m in sent] == [d.id for d in got]


def test_consumer_started_before_its_topic_exists_picks_it_up(
    kafka: KafkaAdmin, queue_name: str
) -> None:
    """Against the noida-db Kafka stand-in: a collector's consumer subscribed to a topic that
    does not exist yet (the collector started before the first handler logged) is told so,
    then receives the records within seconds of the topic's creation, not after librdkafka's
    default five-minute metadata refresh."""
    url = kafka.url(queue_name)
    sent = [stamped_message("h:1:a", i) for i in range(20)]
    with open_consumer(url, group=queue_name) as consumer:
        with pytest.raises(ConnectError, match="create the topic"):
            wait_until(lambda: consumer.fetch(10, 0.2) and False, timeout=5)
        kafka.create_topic(queue_name, partitions=1)
        with open_producer(url) as producer:
            producer.publish_batch(sent)
        got = _drain(consumer, 20, timeout=15)
    assert [m.id for m in sent] == [d.id for d in got]


def test_a_record_too_large_is_refused_alone(kafka: KafkaAdmin, queue_name: str) -> None:
    """Against the noida-db Kafka stand-in: a 1.2 MB record (above the client's 1 MB
    message.max.bytes) in a batch of three is refused for good, by id (PartlyRefused: the
    handler counts it as dropped, as too_large_for_broker like every transport); the two others are delivered, and the producer goes on."""
    kafka.create_topic(queue_name, partitions=1)
    url = kafka.url(queue_name)
    small = [stamped_message("h:1:a", 1), stamped_message("h:1:a", 3)]
    big = Message(new_id(), json.dumps({"x": "y" * 1_200_000}).encode())
    with open_producer(url) as producer:
        with pytest.raises(PartlyRefused) as info:
            producer.publish_batch([small[0], big, small[1]])
        assert info.value.ids == frozenset({big.id})
        assert info.value.drop_reason == "too_large_for_broker"
        assert "\n" not in str(info.value)
        producer.publish_batch([stamped_message("h:1:a", 4)])
    with open_consumer(url, group=queue_name) as consumer:
        got = _drain(consumer, 3)
    assert [m.id for m in small] == [d.id for d in got[:2]]


def test_black_holed_broker_fails_the_batch_within_its_bound(kafka: Any, queue_name: str) -> None:
    """Against the noida-db Kafka stand-in, SIGSTOPped (TCP still accepted, nothing answers):
    ``publish_batch`` raises PublishTimeout or ConnectError within ``connect_timeout +
    timeout`` (plus a margin), in one line; after SIGCONT the same producer delivers again."""
    kafka.create_topic(queue_name, partitions=1)
    url = kafka.url(queue_name, connect_timeout="1", timeout="2")
    with open_producer(url) as producer:
        producer.publish_batch([stamped_message("h:1:a", 1)])
        kafka.freeze()
        try:
            began = time.monotonic()
            with pytest.raises((PublishTimeout, ConnectError)) as info:
                producer.publish_batch([stamped_message("h:1:a", i) for i in range(2, 200)])
            assert time.monotonic() - began < 1 + 2 + 3
            assert "\n" not in str(info.value)
        finally:
            kafka.thaw()
        producer.publish_batch([stamped_message("h:1:a", 200)])


def test_no_broker_is_a_connect_error_within_connect_timeout() -> None:
    """Nothing listens on the port: ``publish_batch`` raises ConnectError (one line, naming
    the endpoint) after about ``connect_timeout``, not after the whole delivery timeout."""
    url = f"kafka://127.0.0.1:{free_port()}/t?connect_timeout=1&timeout=20"
    began = time.monotonic()
    with open_producer(url) as producer, pytest.raises(ConnectError) as info:
        producer.publish_batch([stamped_message("h:1:a", 1)])
    assert time.monotonic() - began < 8.0
    assert "\n" not in str(info.value)
    assert "kafka://127.0.0.1" in str(info.value)


def test_tap_copies_new_records_without_taking_them(kafka: KafkaAdmin, queue_name: str) -> None:
    """Against the noida-db Kafka stand-in: ``mqlogging tail``'s tap shows records published
    after it opened, joining no group and committing nothing: the collectors' group still
    gets every record."""
    kafka.create_topic(queue_name, partitions=2)
    url = kafka.url(queue_name)
    sent = [stamped_message("h:1:a", i) for i in range(100)]
    with open_tap(url, TapOptions()) as tap:
        assert "no group joined" in tap.mode
        with open_producer(url) as producer:
            producer.publish_batch(sent)
        seen: list[bytes] = []
        wait_until(lambda: seen.extend(tap.poll(0.2)) or len(seen) >= 100, timeout=15)
    assert kafka.lag(queue_name, "mqlogging") == 100
    with open_consumer(url) as consumer:
        assert {m.id for m in sent} <= {d.id for d in _drain(consumer, 100)}


def test_dead_letters_on_a_topic_can_be_audited(kafka: KafkaAdmin, queue_name: str) -> None:
    """Against the noida-db Kafka stand-in: ``mqlogging audit --dead-letters kafka://...``
    reads the dead letters already on the topic through the tap's backlog (the group's
    committed offsets, else the beginning), which the tap honours: it used not to say so
    (``Tap.backlog``), and the audit refused Kafka as a transport that cannot show them.
    Nothing is committed for the group."""
    from mqlogging.audit import Audit, audit_dead_letter_tap

    kafka.create_topic(queue_name, partitions=2)
    url = kafka.url(queue_name)
    with open_producer(url) as producer:
        producer.publish_batch([stamped_message("h:1:a", i) for i in range(30)])
    audit = Audit()
    audit_dead_letter_tap(audit, url, quiet=1.0)
    assert audit.dead_letters == 30
    assert kafka.lag(queue_name, "mqlogging") == 30


def test_tap_of_a_missing_topic_is_a_configuration_error(kafka: KafkaAdmin) -> None:
    """Against the noida-db Kafka stand-in: tailing a topic that does not exist says so."""
    with pytest.raises(ConfigurationError, match="does not exist"):
        open_tap(kafka.url("mqlt-no-such-topic-x"), TapOptions()).close()


def test_real_cluster_round_trip(real_kafka: KafkaAdmin, queue_name: str) -> None:
    """Opt-in (``MQLOGGING_KAFKA_URL``): the same round trip against a real Kafka cluster:
    idempotent acks=all publish of 1,000 records, consumed once by a group, committed."""
    real_kafka.create_topic(queue_name, partitions=3)
    url = real_kafka.url(queue_name)
    sent = [stamped_message(f"h:{i % 3}:p", i) for i in range(1000)]
    with open_producer(url) as producer:
        producer.publish_batch(sent)
    with open_consumer(url, group=queue_name) as consumer:
        got = _drain(consumer, 1000)
    assert sorted(m.id for m in sent) == sorted(d.id for d in got)
    wait_until(lambda: real_kafka.lag(queue_name, queue_name) == 0, timeout=30)
