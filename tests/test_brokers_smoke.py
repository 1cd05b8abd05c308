"""Smoke tests for the private brokers, using only the raw client libraries.

If these fail, every backend test will fail too: they prove the fixtures deliver brokers that
speak AMQP (pika), STOMP (stomp.py) and the Elasticsearch REST API, and that persistent
messages survive a SIGKILL of the broker.
"""

from __future__ import annotations

import http.client
import socket
import threading
from typing import Any

import pika
import pytest
import stomp
from elasticsearch import Elasticsearch, helpers

from harness.brokers import ActiveMQ, NoidaES, RabbitMQ
from harness.helpers import BlackholeServer, free_port, unique_name, wait_until
from harness.proxy import TcpProxy


class _Collector(stomp.ConnectionListener):  # type: ignore[misc]
    """Collects MESSAGE bodies and RECEIPT ids from stomp.py's receiver thread."""

    def __init__(self) -> None:
        self.bodies: list[str] = []
        self.receipts: set[str] = set()
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def on_message(self, frame: Any) -> None:
        with self._lock:
            self.bodies.append(frame.body)

    def on_receipt(self, frame: Any) -> None:
        with self._lock:
            self.receipts.add(frame.headers["receipt-id"])

    def on_error(self, frame: Any) -> None:
        with self._lock:
            self.errors.append(frame.body)


def _stomp_connect(port: int, vhost: str) -> tuple[stomp.Connection, _Collector]:
    conn = stomp.Connection([("127.0.0.1", port)], vhost=vhost, heartbeats=(0, 0))
    collector = _Collector()
    conn.set_listener("collector", collector)
    conn.connect("guest", "guest", wait=True)
    return conn, collector


def _stomp_round_trip(port: int, vhost: str, destination: str, n: int) -> None:
    conn, got = _stomp_connect(port, vhost)
    try:
        for i in range(n):
            conn.send(destination, f"msg-{i}", headers={"persistent": "true"}, receipt=f"r{i}")
        wait_until(lambda: len(got.receipts) == n, message=f"{n} SEND receipts")
        conn.subscribe(destination, id="sub-1", ack="auto")
        wait_until(lambda: len(got.bodies) >= n, message=f"{n} messages from {destination}")
    finally:
        conn.disconnect()
    assert got.errors == []
    assert sorted(got.bodies) == sorted(f"msg-{i}" for i in range(n))


class TestHelpers:
    def test_wait_until_returns_truthy_value(self) -> None:
        """wait_until returns the predicate's first truthy value."""
        calls = iter([0, None, 7])
        assert wait_until(lambda: next(calls), timeout=5) == 7

    def test_wait_until_raises_after_deadline(self) -> None:
        """wait_until raises AssertionError naming what it waited for."""
        with pytest.raises(AssertionError, match="the impossible"):
            wait_until(lambda: False, timeout=0.2, message="the impossible")

    def test_unique_name_is_unique(self) -> None:
        """1000 generated names are pairwise distinct and keep the prefix."""
        names = {unique_name("q") for _ in range(1000)}
        assert len(names) == 1000
        assert all(n.startswith("q-") for n in names)

    def test_blackhole_accepts_and_never_answers(self) -> None:
        """BlackholeServer accepts a connection but sends nothing, so a read times out."""
        import socket

        with BlackholeServer() as hole, socket.create_connection(("127.0.0.1", hole.port)) as s:
            s.settimeout(0.3)
            with pytest.raises(TimeoutError):
                s.recv(1)
            wait_until(lambda: hole.accepted == 1)

    def test_free_port_is_bindable(self) -> None:
        """free_port returns a port a server can bind right away."""
        import socket

        port = free_port()
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


class TestRabbitMQ:
    def test_urls(self, rabbitmq: RabbitMQ) -> None:
        """The fixture exposes the URLs of the fixtures contract."""
        assert rabbitmq.host == "127.0.0.1"
        assert rabbitmq.amqp_url == f"amqp://guest:guest@127.0.0.1:{rabbitmq.amqp_port}/"
        assert rabbitmq.stomp_url == f"stomp://guest:guest@127.0.0.1:{rabbitmq.stomp_port}"
        assert rabbitmq.is_running()

    def test_pika_round_trip(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """50 persistent messages published with pika come back once each, in order."""
        n = 50
        conn = pika.BlockingConnection(pika.URLParameters(rabbitmq.amqp_url))
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            ch.queue_declare(queue=queue_name, durable=True)
            props = pika.BasicProperties(delivery_mode=2)
            for i in range(n):
                ch.basic_publish("", queue_name, f"m{i}".encode(), props)
            assert rabbitmq.queue_depth(queue_name) == n
            bodies = []
            for _ in range(n):
                method, _, body = ch.basic_get(queue_name, auto_ack=True)
                assert method is not None
                bodies.append(body.decode())
            assert ch.basic_get(queue_name, auto_ack=True)[0] is None
        finally:
            conn.close()
        assert bodies == [f"m{i}" for i in range(n)]
        assert rabbitmq.queue_depth(queue_name) == 0

    def test_stomp_round_trip(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """20 persistent STOMP messages (receipt each) to /queue/NAME come back once each."""
        _stomp_round_trip(rabbitmq.stomp_port, "/", f"/queue/{queue_name}", 20)

    def test_queue_helpers(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """queue_depth counts ready messages; purge_queue and delete_queue clean up."""
        assert rabbitmq.queue_depth(queue_name) == 0
        assert not rabbitmq.queue_exists(queue_name)
        with rabbitmq.amqp_channel() as ch:
            ch.queue_declare(queue=queue_name, durable=True)
            for _ in range(3):
                ch.basic_publish("", queue_name, b"x")
        wait_until(lambda: rabbitmq.queue_depth(queue_name) == 3)
        assert rabbitmq.purge_queue(queue_name) == 3
        assert rabbitmq.queue_depth(queue_name) == 0
        rabbitmq.delete_queue(queue_name)
        assert not rabbitmq.queue_exists(queue_name)

    def test_persistent_message_survives_kill(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """A confirmed persistent message on a durable queue survives SIGKILL + restart."""
        ports = rabbitmq.ports
        with rabbitmq.amqp_channel() as ch:
            ch.confirm_delivery()
            ch.queue_declare(queue=queue_name, durable=True)
            for i in range(5):
                ch.basic_publish(
                    "", queue_name, f"keep-{i}".encode(), pika.BasicProperties(delivery_mode=2)
                )
        assert rabbitmq.queue_depth(queue_name) == 5
        rabbitmq.sync_definitions()  # about message persistence, not a fresh queue's
        rabbitmq.kill()
        assert not rabbitmq.is_running()
        rabbitmq.start()
        assert rabbitmq.ports == ports
        assert rabbitmq.queue_depth(queue_name) == 5
        with rabbitmq.amqp_channel() as ch:
            bodies = []
            while (got := ch.basic_get(queue_name, auto_ack=True))[0] is not None:
                bodies.append(got[2].decode())
        assert bodies == [f"keep-{i}" for i in range(5)]

    def test_stop_then_start(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """A graceful stop refuses connections; start() brings the node back on the same port."""
        with rabbitmq.amqp_channel() as ch:
            ch.queue_declare(queue=queue_name, durable=True)
        rabbitmq.stop()
        assert not rabbitmq.is_running()
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            pika.BlockingConnection(
                pika.URLParameters(rabbitmq.amqp_url + "?connection_attempts=1")
            )
        rabbitmq.start()
        assert rabbitmq.queue_exists(queue_name)

    def test_rabbitmqctl_reaches_private_node(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """rabbitmqctl talks to this session's node (own cookie + node name), not another one."""
        with rabbitmq.amqp_channel() as ch:
            ch.queue_declare(queue=queue_name, durable=True)
        result = rabbitmq.rabbitmqctl("list_queues", "name", "--quiet", "--no-table-headers")
        assert result.returncode == 0, result.stderr
        assert queue_name in result.stdout.split()

    def test_fixture_restarts_killed_broker(self, rabbitmq: RabbitMQ) -> None:
        """Left killed on purpose: the next test's fixture must restart it (see next test)."""
        rabbitmq.kill()
        assert not rabbitmq.is_running()

    def test_fixture_restarted_broker(self, rabbitmq: RabbitMQ) -> None:
        """The function-scoped fixture restarted the node the previous test killed."""
        assert rabbitmq.is_running()
        with rabbitmq.amqp_channel() as ch:
            assert ch.is_open


class TestActiveMQ:
    def test_urls(self, activemq: ActiveMQ) -> None:
        """The fixture exposes the STOMP URL of the fixtures contract."""
        assert activemq.stomp_url == f"stomp://guest:guest@127.0.0.1:{activemq.stomp_port}"
        assert activemq.is_running()

    def test_stomp_round_trip(self, activemq: ActiveMQ, queue_name: str) -> None:
        """20 persistent STOMP messages (receipt each) come back once each."""
        _stomp_round_trip(activemq.stomp_port, "localhost", f"/queue/{queue_name}", 20)

    def test_persistent_message_survives_kill(self, activemq: ActiveMQ, queue_name: str) -> None:
        """Persistent messages acknowledged by a receipt survive SIGKILL + restart (KahaDB)."""
        dest = f"/queue/{queue_name}"
        conn, got = _stomp_connect(activemq.stomp_port, "localhost")
        try:
            for i in range(5):
                conn.send(dest, f"keep-{i}", headers={"persistent": "true"}, receipt=f"k{i}")
            wait_until(lambda: len(got.receipts) == 5, message="5 SEND receipts")
        finally:
            conn.disconnect()
        assert activemq.queue_depth(queue_name) == 5
        activemq.kill()
        assert not activemq.is_running()
        activemq.start()
        assert activemq.queue_depth(queue_name) == 5
        conn, got = _stomp_connect(activemq.stomp_port, "localhost")
        try:
            conn.subscribe(dest, id="s", ack="auto")
            wait_until(lambda: len(got.bodies) >= 5, message="5 messages after restart")
        finally:
            conn.disconnect()
        assert sorted(got.bodies) == [f"keep-{i}" for i in range(5)]
        assert activemq.queue_depth(queue_name) == 0


class TestElasticsearch:
    def test_info_bulk_count(self, elasticsearch: NoidaES) -> None:
        """info() answers, helpers.bulk indexes 25 docs, and count sees all 25 after refresh."""
        index = unique_name("mqlt-smoke").lower()
        es = Elasticsearch(elasticsearch.url, request_timeout=10)
        try:
            assert es.info()["version"]["number"]
            docs = ({"_index": index, "_id": str(i), "n": i, "msg": "hi"} for i in range(25))
            ok, errors = helpers.bulk(es, docs)
            assert (ok, errors) == (25, [])
            es.indices.refresh(index=index)
            assert es.count(index=index)["count"] == 25
        finally:
            es.close()

    def test_data_survives_stop(self, elasticsearch: NoidaES) -> None:
        """Indexed, refreshed documents are still counted after a graceful stop + restart.

        (noida-db saves its data at shutdown: after kill() recent documents may be gone, so
        tests needing durability across an outage must use stop(). Even stop() loses the
        documents it answered for in its last moments, so a test of an outage while writes
        are in flight cuts a :class:`~harness.proxy.TcpProxy` in front of it instead.)
        """
        index = unique_name("mqlt-keep").lower()
        es = Elasticsearch(elasticsearch.url, request_timeout=10)
        try:
            helpers.bulk(es, ({"_index": index, "n": i} for i in range(3)), refresh=True)
            elasticsearch.stop()
            assert not elasticsearch.is_running()
            elasticsearch.start()
            assert es.count(index=index)["count"] == 3
        finally:
            es.close()


class TestTcpProxy:
    def test_cut_resets_and_refuses_then_restore_forwards(self, elasticsearch: NoidaES) -> None:
        """Through the proxy the server answers; cut() resets an open keep-alive connection
        and refuses new ones, as a server that went away would, while the server behind it
        keeps running; restore() forwards again on the same port."""
        with TcpProxy(elasticsearch.host, elasticsearch.port) as proxy:
            conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=5)
            assert _get(conn)
            proxy.cut()
            with pytest.raises(ConnectionError):  # reset (or a broken pipe) on the open one
                _get(conn)
            conn.close()
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((proxy.host, proxy.port), timeout=5)
            assert elasticsearch.is_running()
            proxy.restore()
            conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=5)
            assert b"8.15" in _get(conn)
            conn.close()


def _get(conn: http.client.HTTPConnection) -> bytes:
    conn.request("GET", "/")
    return conn.getresponse().read()
