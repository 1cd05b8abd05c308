"""STOMP backend against real brokers: RabbitMQ's STOMP plugin and ActiveMQ.

Behaviour common to both brokers is parametrised over them (``broker`` fixture); each test
uses its own destination ``/queue/<queue_name>``. Fault injection kills and restarts the
session brokers; the function-scoped fixtures restart a broker a failed test left down.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import pytest

from harness.drain import drain_amqp
from harness.helpers import BlackholeServer, free_port, wait_until
from harness.proxy import in_front
from mqlogging._ids import new_id
from mqlogging._types import Delivery, Message
from mqlogging.backends import open_consumer, open_producer
from mqlogging.backends.endpoints import Endpoint
from mqlogging.backends.stomp import STOMPConsumer, STOMPProducer
from mqlogging.errors import BackendError, ConnectError, NotConfirmed, PublishTimeout

BROKERS = ["rabbitmq", "activemq"]


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> Any:
    """The running broker (RabbitMQ STOMP or ActiveMQ) the test is parametrised with."""
    return request.getfixturevalue(request.param)


def _endpoint(broker: Any, queue_name: str, **options: Any) -> Endpoint:
    opts: dict[str, Any] = {"connect_timeout": 3.0, "timeout": 10.0, "heartbeat": 5}
    opts.update(options)
    return Endpoint.from_url(f"{broker.stomp_url}/queue/{queue_name}", **opts)


def _messages(n: int, tag: str = "m") -> list[Message]:
    out = []
    for i in range(n):
        rid = new_id()
        body = json.dumps({"id": rid, "n": i, "tag": tag, "text": "héllo ✓ \\n:"}).encode()
        out.append(Message(rid, body))
    return out


def _drain(consumer: STOMPConsumer, expected: int, timeout: float = 20.0) -> list[Delivery]:
    """Fetch and ack until ``expected`` deliveries arrived (or fail at the deadline)."""
    got: list[Delivery] = []

    def enough() -> bool:
        batch = consumer.fetch(500, 0.5)
        consumer.ack(batch)
        got.extend(batch)
        return len(got) >= expected

    wait_until(enough, timeout=timeout, interval=0, message=f"{expected} deliveries")
    return got


def _assert_empty(consumer: STOMPConsumer) -> None:
    extra = consumer.fetch(100, 1.0)
    assert [d.id for d in extra] == []


class TestRoundTrip:
    def test_ids_bodies_and_order_preserved(self, broker: Any, queue_name: str) -> None:
        """Batches sent STOMP→STOMP arrive once each, in order, byte-exact, with their ids."""
        ep = _endpoint(broker, queue_name)
        sent = _messages(1200)
        with STOMPProducer(ep) as producer:
            for i in range(0, len(sent), 500):
                producer.publish_batch(sent[i : i + 500])
        with STOMPConsumer(ep) as consumer:
            got = _drain(consumer, len(sent))
            _assert_empty(consumer)
        assert [m.id for m in sent] == [d.id for d in got]
        assert [m.body for m in sent] == [d.body for d in got]
        assert {"application/json"} == {d.headers["content-type"] for d in got}
        assert {"true"} == {d.headers["persistent"] for d in got}
        assert not any(d.redelivered for d in got)

    def test_open_producer_picks_stomp(self, broker: Any, queue_name: str) -> None:
        """``open_producer``/``open_consumer`` return the STOMP backend for stomp:// URLs."""
        url = f"{broker.stomp_url}/queue/{queue_name}"
        sent = _messages(3)
        with open_producer(url, connect_timeout=3) as producer:
            assert isinstance(producer, STOMPProducer)
            producer.publish_batch(sent)
        with open_consumer(url, connect_timeout=3) as consumer:
            assert isinstance(consumer, STOMPConsumer)
            assert [m.id for m in sent] == [d.id for d in _drain(consumer, 3)]

    def test_stomp_producer_to_amqp_consumer(self, rabbitmq: Any, queue_name: str) -> None:
        """On RabbitMQ, /queue/NAME is the durable AMQP queue NAME: an AMQP consumer gets each
        record once, persistent, with ``message_id`` = the record id and the exact body."""
        ep = _endpoint(rabbitmq, queue_name)
        sent = _messages(50)
        with STOMPProducer(ep) as producer:
            producer.publish_batch(sent)
        got: list[tuple[Any, bytes]] = []
        with rabbitmq.amqp_channel() as ch:
            declared = ch.queue_declare(queue=queue_name, durable=True, passive=True)
            assert declared.method.message_count == 50
            for method, props, body in ch.consume(queue_name, inactivity_timeout=2.0):
                if method is None:
                    break
                got.append((props, body))
                ch.basic_ack(method.delivery_tag)
            ch.cancel()
        assert [m.id for m in sent] == [p.message_id for p, _ in got]
        assert [m.body for m in sent] == [b for _, b in got]
        assert {2} == {p.delivery_mode for p, _ in got}
        assert {"application/json"} == {p.content_type for p, _ in got}
        assert [m.id for m in sent] == [p.headers["mqlogging-id"] for p, _ in got]

    def test_transient_when_persistent_false(self, broker: Any, queue_name: str) -> None:
        """``persistent=false`` sends frames without ``persistent:true``."""
        ep = _endpoint(broker, queue_name, persistent=False)
        with STOMPProducer(ep) as producer:
            producer.publish_batch(_messages(2))
        with STOMPConsumer(ep) as consumer:
            got = _drain(consumer, 2)
        assert all(d.headers.get("persistent") != "true" for d in got)


class TestConfirms:
    def test_error_frame_is_not_confirmed(self, rabbitmq: Any, queue_name: str) -> None:
        """An ERROR frame (RabbitMQ: SEND to an exchange that does not exist) fails the
        batch with NotConfirmed; the next batch reconnects and succeeds."""
        bad = Endpoint.from_url(
            f"{rabbitmq.stomp_url}/exchange/{queue_name}-missing/key", connect_timeout=3, timeout=10
        )
        with STOMPProducer(bad) as producer:
            with pytest.raises(NotConfirmed) as info:
                producer.publish_batch(_messages(5))
            assert "guest:guest" not in str(info.value)
            producer.endpoint = _endpoint(rabbitmq, queue_name)  # same producer, next call
            producer.publish_batch(_messages(5))
        assert wait_until(lambda: rabbitmq.queue_depth(queue_name)) == 5

    def test_kill_between_send_and_receipt(self, broker: Any, queue_name: str) -> None:
        """Killing the broker while batches are in flight: the in-flight batch is reported as
        not confirmed, and after a restart every message reported confirmed is in the queue
        (and nothing that was never sent)."""
        ep = _endpoint(broker, queue_name, timeout=5.0)
        confirmed: list[str] = []
        attempted: set[str] = set()
        failures: list[BaseException] = []

        def publish() -> None:
            with STOMPProducer(ep) as producer:
                while not failures:
                    batch = _messages(500)
                    attempted.update(m.id for m in batch)
                    try:
                        producer.publish_batch(batch)
                    except BackendError as exc:
                        failures.append(exc)
                        return
                    confirmed.extend(m.id for m in batch)

        thread = threading.Thread(target=publish)
        thread.start()
        wait_until(lambda: len(confirmed) >= 1500, timeout=30, message="some confirmed batches")
        broker.kill()
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert len(failures) == 1
        assert isinstance(failures[0], (PublishTimeout, ConnectError))
        broker.start()
        with STOMPConsumer(ep) as consumer:
            got = _drain(consumer, len(confirmed), timeout=60)
            got += consumer.fetch(1000, 2.0)
            consumer.ack(got)
        received = Counter(d.id for d in got)
        assert set(confirmed) <= set(received)
        assert set(received) <= attempted
        assert max(received.values()) == 1

    def test_broker_down_at_start_then_recovery(self, broker: Any, queue_name: str) -> None:
        """With the broker stopped, publish and fetch fail with ConnectError (bounded by the
        connect timeout, no hang); once it is back the same producer and consumer work. (The
        broker is down and back through :func:`harness.proxy.in_front`: refused, then
        reachable.)"""
        down, url = in_front(f"{broker.stomp_url}/queue/{queue_name}", broker.stomp_port)
        ep = Endpoint.from_url(url, connect_timeout=2.0, timeout=10.0, heartbeat=5)
        producer, consumer = STOMPProducer(ep), STOMPConsumer(ep)
        try:
            started = time.monotonic()
            with pytest.raises(ConnectError) as info:
                producer.publish_batch(_messages(1))
            with pytest.raises(ConnectError):
                consumer.fetch(1, 0.1)
            assert time.monotonic() - started < 2 * (ep.connect_timeout + 2)  # no hang
            assert "guest:guest" not in str(info.value)
            down.start()
            sent = _messages(10)
            producer.publish_batch(sent)
            assert [m.id for m in sent] == [d.id for d in _drain(consumer, 10)]
        finally:
            producer.close()
            consumer.close()
            down.close()


class TestRecovery:
    @pytest.mark.parametrize("how", ["kill", "stop"])
    def test_broker_restart_mid_stream(self, broker: Any, queue_name: str, how: str) -> None:
        """Producer and consumer survive a broker restart (SIGKILL or graceful stop): the
        consumer reconnects and resubscribes, no confirmed message is lost, and a message comes
        twice only if its ack was not done before the restart. After a graceful stop that means
        only the deliveries left unacked; after SIGKILL the broker may also have lost its record
        of acks made just before (neither broker syncs acks to disk), so those may come again.
        """
        ep = _endpoint(broker, queue_name, prefetch=50)
        first, second = _messages(300, "first"), _messages(300, "second")
        everything = {m.id for m in first + second}
        producer, consumer = STOMPProducer(ep), STOMPConsumer(ep)
        got: list[Delivery] = []
        try:
            producer.publish_batch(first)
            acked = _drain(consumer, 100)
            unacked = wait_until(lambda: consumer.fetch(20, 0.5), message="unacked deliveries")
            broker.kill() if how == "kill" else broker.stop()
            consumer.ack(unacked)  # void: the connection is gone; must not raise
            broker.start()
            for i in range(0, len(second), 100):
                producer.publish_batch(second[i : i + 100])

            def all_there() -> bool:
                batch = consumer.fetch(500, 0.5)
                consumer.ack(batch)
                got.extend(batch)
                return everything <= {d.id for d in acked + got}

            wait_until(all_there, timeout=60, interval=0, message="every message")
            got.extend(consumer.fetch(1000, 1.0))
            consumer.ack(got)
        finally:
            producer.close()
            consumer.close()
        counts = Counter(d.id for d in acked + got)
        assert set(counts) == everything
        duplicated = {i for i, n in counts.items() if n > 1}
        may_repeat = {d.id for d in unacked}
        if how == "kill":
            may_repeat |= {d.id for d in acked}
        assert duplicated <= may_repeat
        assert all(d.redelivered for d in got if d.id in duplicated)

    def test_blackhole_host_then_real_host(self, broker: Any, queue_name: str) -> None:
        """A host that accepts TCP but never answers CONNECTED is abandoned after
        connect_timeout and the next host of the URL is used."""
        with BlackholeServer() as hole:
            real = broker.stomp_url.rsplit("@", 1)[1]
            url = f"stomp://guest:guest@127.0.0.1:{hole.port},{real}/queue/{queue_name}"
            ep = Endpoint.from_url(url, connect_timeout=1.0, timeout=10)
            sent = _messages(20)
            started = time.monotonic()
            with STOMPProducer(ep) as producer:
                producer.publish_batch(sent)
            assert time.monotonic() - started < 10  # bounded, not a hang
            assert hole.accepted >= 1
            with STOMPConsumer(ep) as consumer:
                assert [m.id for m in sent] == [d.id for d in _drain(consumer, 20)]

    def test_all_hosts_blackholed(self, queue_name: str) -> None:
        """When every host is a black hole, ConnectError names each host and what happened."""
        with BlackholeServer() as a, BlackholeServer() as b:
            url = f"stomp://u:secret@127.0.0.1:{a.port},127.0.0.1:{b.port}/queue/{queue_name}"
            ep = Endpoint.from_url(url, connect_timeout=0.5)
            with STOMPProducer(ep) as producer, pytest.raises(ConnectError) as info:
                producer.publish_batch(_messages(1))
        text = str(info.value)
        assert f"127.0.0.1:{a.port}: no CONNECTED frame" in text
        assert f"127.0.0.1:{b.port}: no CONNECTED frame" in text
        assert "secret" not in text

    def test_refused_port(self, queue_name: str) -> None:
        """A closed port is a ConnectError right away, with the OS reason."""
        ep = Endpoint.from_url(f"stomp://127.0.0.1:{free_port()}/queue/{queue_name}")
        with STOMPConsumer(ep) as consumer, pytest.raises(ConnectError, match="refused"):
            consumer.fetch(1, 0.1)

    def test_bad_login(self, rabbitmq: Any, queue_name: str) -> None:
        """RabbitMQ refuses a wrong password: ConnectError 'login refused for user', and the
        password appears nowhere in the message."""
        port = rabbitmq.stomp_port
        url = f"stomp://guest:hunter2-wrong@127.0.0.1:{port}/queue/{queue_name}"
        ep = Endpoint.from_url(url, connect_timeout=3)
        with STOMPProducer(ep) as producer, pytest.raises(ConnectError) as info:
            producer.publish_batch(_messages(1))
        assert "login refused for user 'guest'" in str(info.value)
        assert "hunter2" not in str(info.value)

    def test_tls_against_plain_port(self, broker: Any, queue_name: str) -> None:
        """stomp+ssl:// to a plain STOMP port fails the TLS handshake within connect_timeout
        (certificate verification is on by default, nothing is sent in clear)."""
        real = broker.stomp_url.rsplit("@", 1)[1]
        ep = Endpoint.from_url(f"stomp+ssl://{real}/queue/{queue_name}", connect_timeout=2)
        assert ep.tls is not None
        assert ep.tls.verify
        with STOMPProducer(ep) as producer, pytest.raises(ConnectError, match=r"TLS|closed|timed"):
            producer.publish_batch(_messages(1))


class TestConsumer:
    def test_prefetch_bounds_unacked(self, broker: Any, queue_name: str) -> None:
        """With prefetch=10 the broker hands out at most 10 unacked messages; acking them
        releases the next ones."""
        ep = _endpoint(broker, queue_name, prefetch=10)
        with STOMPProducer(ep) as producer:
            producer.publish_batch(_messages(35))
        with STOMPConsumer(ep) as consumer:
            held: list[Delivery] = []
            wait_until(lambda: held.extend(consumer.fetch(100, 0.2)) or len(held) >= 10)
            held.extend(consumer.fetch(100, 1.0))
            assert len(held) == 10
            consumer.ack(held)
            rest = _drain(consumer, 25)
            _assert_empty(consumer)
        assert len({d.id for d in held + rest}) == 35

    def test_nack_requeue_redelivers(self, broker: Any, queue_name: str) -> None:
        """``nack(requeue=True)`` makes the broker deliver the message again, flagged
        redelivered, same id and body (ActiveMQ: via a confirmed copy, since its NACK
        dead-letters)."""
        ep = _endpoint(broker, queue_name)
        sent = _messages(3)
        with STOMPProducer(ep) as producer:
            producer.publish_batch(sent)
        with STOMPConsumer(ep) as consumer:
            first = _drain_unacked(consumer, 3)
            consumer.nack(first[:1], requeue=True)
            consumer.ack(first[1:])
            again = _drain(consumer, 1)
            _assert_empty(consumer)
        assert [sent[0].id] == [d.id for d in again]
        assert [sent[0].body] == [d.body for d in again]
        assert again[0].redelivered

    def test_nack_reject_drops(self, broker: Any, queue_name: str) -> None:
        """``nack(requeue=False)`` removes the message from the queue (RabbitMQ discards or
        dead-letters it; ActiveMQ moves it to ActiveMQ.DLQ)."""
        ep = _endpoint(broker, queue_name)
        with STOMPProducer(ep) as producer:
            producer.publish_batch(_messages(2))
        with STOMPConsumer(ep) as consumer:
            got = _drain_unacked(consumer, 2)
            consumer.nack(got[:1], requeue=False)
            consumer.ack(got[1:])
        with STOMPConsumer(ep) as consumer:
            _assert_empty(consumer)

    def test_unacked_redelivered_after_close(self, broker: Any, queue_name: str) -> None:
        """Closing a consumer gives its unacked deliveries back: the next consumer gets exactly
        those, flagged redelivered."""
        ep = _endpoint(broker, queue_name)
        sent = _messages(5)
        with STOMPProducer(ep) as producer:
            producer.publish_batch(sent)
        with STOMPConsumer(ep) as consumer:
            got = _drain_unacked(consumer, 5)
            consumer.ack(got[:2])
        with STOMPConsumer(ep) as consumer:
            again = _drain(consumer, 3)
            _assert_empty(consumer)
        assert [m.id for m in sent[2:]] == [d.id for d in again]
        assert all(d.redelivered for d in again)

    def test_cumulative_client_ack(self, broker: Any, queue_name: str) -> None:
        """With ``ack=client`` (cumulative), an ack is only sent for a fully acked prefix:
        acking later deliveries while an earlier one is open acks nothing."""
        ep = _endpoint(broker, queue_name, ack="client")
        sent = _messages(5)
        with STOMPProducer(ep) as producer:
            producer.publish_batch(sent)
        with STOMPConsumer(ep) as consumer:
            got = _drain_unacked(consumer, 5)
            consumer.ack(got[1:3])  # gap at 0: nothing may be acked
        with STOMPConsumer(ep) as consumer:
            got = _drain_unacked(consumer, 5)
            assert [m.id for m in sent] == [d.id for d in got]
            consumer.ack(got[1:2])
            consumer.ack(got[0:1])  # prefix 0..1 complete
        with STOMPConsumer(ep) as consumer:
            rest = _drain(consumer, 3)
            _assert_empty(consumer)
        assert [m.id for m in sent[2:]] == [d.id for d in rest]

    def test_fetch_timeout_returns_empty(self, broker: Any, queue_name: str) -> None:
        """``fetch`` on an empty queue returns [] after its timeout instead of blocking."""
        with STOMPConsumer(_endpoint(broker, queue_name)) as consumer:
            assert consumer.fetch(10, 0.3) == []


def _drain_unacked(consumer: STOMPConsumer, expected: int) -> list[Delivery]:
    got: list[Delivery] = []
    wait_until(lambda: got.extend(consumer.fetch(expected - len(got), 0.3)) or len(got) >= expected)
    return got


def test_writing_a_large_batch_to_a_blocked_broker_is_bounded_by_timeout(
    rabbitmq: Any, queue_name: str
) -> None:
    """RabbitMQ in a memory alarm stops reading STOMP frames. A batch larger than the socket
    buffers (300 x 60 KB) fails with :class:`PublishTimeout` within about ``timeout`` (1 s
    here), as a batch that fits in them does (no receipt within ``timeout``). Observed: the
    ``sendall`` goes on while each ``send(2)`` moves a little before its ``SO_SNDTIMEO``
    (``connect_timeout``) expires: 4.1 s with connect_timeout=1, 20.5 s with the default 5 s
    and timeout=2, and the sender thread is stuck that long on every attempt."""
    url = f"{rabbitmq.stomp_url}/queue/{queue_name}?timeout=1&connect_timeout=1"
    producer = STOMPProducer(url)
    producer.publish_batch([Message(new_id(), b"{}")])
    batch = [Message(new_id(), b'{"pad":"' + b"x" * 60_000 + b'"}') for _ in range(300)]
    result = rabbitmq.rabbitmqctl("set_vm_memory_high_watermark", "0.0000001")
    assert result.returncode == 0, result.stderr
    try:
        started = time.monotonic()
        with pytest.raises(PublishTimeout):
            producer.publish_batch(batch)
        elapsed = time.monotonic() - started
    finally:
        rabbitmq.rabbitmqctl("set_vm_memory_high_watermark", "0.4")
        producer.close()
    assert elapsed < 2.5, f"the write of a batch took {elapsed:.1f}s with timeout=1"


def test_a_batch_in_doubt_is_not_written_again_until_the_broker_answers(
    rabbitmq: Any, queue_name: str
) -> None:
    """A broker that stops answering without closing the connection (frozen here; RabbitMQ in
    a resource alarm behaves alike): the batch whose receipt does not come within ``timeout``
    is in doubt. The next batch fails at once, nothing written (a new connection would carry
    one more copy); once the broker answers, the late receipt ends the doubt and the next
    batch goes out on the same connection. Each record arrives exactly once."""
    url = f"{rabbitmq.stomp_url}/queue/{queue_name}?timeout=1&heartbeat=60"
    first, doubtful, held, last = _messages(1), _messages(5, "d"), _messages(5, "h"), _messages(1)
    with STOMPProducer(url) as producer:
        producer.publish_batch(first)
        rabbitmq.freeze()
        try:
            with pytest.raises(PublishTimeout, match="no receipt"):
                producer.publish_batch(doubtful)
            started = time.monotonic()
            with pytest.raises(PublishTimeout, match="nothing sent"):
                producer.publish_batch(held)
            refused_in = time.monotonic() - started
        finally:
            rabbitmq.thaw()
        wait_until(lambda: _published(producer, last), 20, message="the late receipt")
    assert refused_in < 0.5  # not a wait for the broker (timeout=1)
    with STOMPConsumer(f"{rabbitmq.stomp_url}/queue/{queue_name}") as consumer:
        got = Counter(d.id for d in _drain(consumer, 7))
        _assert_empty(consumer)
    assert got == Counter(m.id for m in first + doubtful + last)


def _published(producer: STOMPProducer, messages: list[Message]) -> bool:
    try:
        producer.publish_batch(messages)
    except PublishTimeout:
        return False
    return True


# -- review 12 ----------------------------------------------------------------------------------


def test_a_large_batch_is_sent_from_a_process_with_many_open_files(
    rabbitmq: Any, queue_name: str
) -> None:
    """A service with more than 1,024 open files (sockets, log files: common for servers)
    publishes a batch larger than the socket buffers (300 x 60 KB) over plain TCP to a healthy
    broker: it is confirmed. Observed: the write waits for the socket with ``select.select``,
    which refuses any descriptor >= 1024 (ValueError "filedescriptor out of range in
    select()"): the batch fails as a PublishTimeout on every attempt, never delivered."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("the hard limit on open files is below 1,200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        batch = [Message(new_id(), b'{"pad":"' + b"x" * 60_000 + b'"}') for _ in range(300)]
        with STOMPProducer(f"{rabbitmq.stomp_url}/queue/{queue_name}?timeout=5") as producer:
            producer.publish_batch(batch)
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_retries_of_a_large_batch_against_a_blocked_broker_do_not_multiply_copies(
    rabbitmq: Any, queue_name: str
) -> None:
    """RabbitMQ in a memory alarm stops reading; a batch larger than the socket buffers
    (300 x 60 KB) is retried 3 times, as the handler does, then the alarm clears and the
    batch goes through. Every record is stored at most twice. Observed: each attempt's
    write is cut short at ``timeout`` and the connection given up, but the complete frames
    it wrote (about 60 records) are read and stored once the alarm clears: those records
    arrive once per attempt (4 copies here, one more per retry during a long alarm)."""
    url = f"{rabbitmq.stomp_url}/queue/{queue_name}?timeout=1&connect_timeout=1"
    batch = [
        Message(rid, json.dumps({"id": rid, "pad": "x" * 60_000}).encode())
        for rid in (new_id() for _ in range(300))
    ]
    with STOMPProducer(url) as producer:
        producer.publish_batch([Message(new_id(), b'{"id": "first"}')])
        result = rabbitmq.rabbitmqctl("set_vm_memory_high_watermark", "0.0000001")
        assert result.returncode == 0, result.stderr
        try:
            for _ in range(3):
                with pytest.raises(PublishTimeout):
                    producer.publish_batch(batch)
        finally:
            rabbitmq.rabbitmqctl("set_vm_memory_high_watermark", "0.4")
        wait_until(lambda: _published(producer, batch), 60, 0.3, message="the batch confirmed")
    copies = Counter(doc["id"] for doc in drain_amqp(rabbitmq, queue_name, 301, idle=2.0))
    assert max(copies.values()) <= 2, Counter(copies.values())
