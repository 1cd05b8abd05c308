"""The DIRAC-style generic MQ API over real brokers: addresses, put(), callbacks, sharing, fork."""

from __future__ import annotations

import json
import os
import re
import threading
from typing import Any

import pytest

from harness.helpers import wait_until
from mqlogging.backends.services import create_consumer, create_producer, resolve
from mqlogging.errors import ConfigurationError

SECRET = "not-the-guest-password"


def _services(rabbitmq: Any, activemq: Any, queue: str) -> dict[str, Any]:
    return {
        "rabbit": {
            "Type": "rabbitmq",
            "Host": "127.0.0.1",
            "Port": rabbitmq.stomp_port,
            "User": "guest",
            "Password": "guest",
            "Queues": {queue: {"Acknowledgement": True, "Persistent": True}},
        },
        "rabbit-amqp": {
            "type": "amqp",
            "host": "127.0.0.1",
            "port": rabbitmq.amqp_port,
            "user": "guest",
            "password": "guest",
        },
        "amq": {"type": "activemq", "host": "127.0.0.1", "port": activemq.stomp_port},
    }


class TestResolve:
    def test_dirac_address_builds_an_endpoint(self) -> None:
        """service::Queues::name maps type/host/port/user/password and per-queue flags."""
        services = {
            "mq": {
                "Type": "RabbitMQ",
                "Host": "h1,h2",
                "Port": 61613,
                "User": "u",
                "Password": SECRET,
                "Queues": {"logs": {"Acknowledgement": False, "Persistent": False}},
            }
        }
        endpoint, ack = resolve("mq::Queues::logs", services)
        assert endpoint.redacted() == "stomp://u:***@h1:61613,h2:61613/queue/logs"
        assert (endpoint.persistent, ack) == (False, False)
        assert endpoint.credentials() == ("u", SECRET)

    @pytest.mark.parametrize(("ssl", "scheme"), [("false", "stomp"), ("no", "stomp"),
                                                 (False, "stomp"), ("true", "stomp+ssl"),
                                                 (True, "stomp+ssl")])  # fmt: skip
    def test_ssl_flag_given_as_text(self, ssl: object, scheme: str) -> None:
        """DIRAC's configuration is text: ``SSL = false`` means plain TCP (``bool("false")``
        used to switch TLS on), and a value that is not a boolean is a one-line error."""
        services = {"mq": {"type": "stomp", "host": "h", "ssl": ssl, "Queues": {"logs": {}}}}
        endpoint, _ = resolve("mq::Queues::logs", services)
        assert endpoint.scheme == scheme
        services["mq"]["ssl"] = "maybe"
        with pytest.raises(ConfigurationError, match="ssl must be true or false"):
            resolve("mq::Queues::logs", services)

    @pytest.mark.parametrize(
        ("address", "expected"),
        [
            ("mq::Queue::logs", "neither a URL nor of the form"),
            ("nope::Queues::logs", "unknown service 'nope' (known: mq)"),
            ("mq::Queues::other", "'other' is not among the service's queues (logs)"),
        ],
    )
    def test_bad_address_is_one_line(self, address: str, expected: str) -> None:
        """Unknown services, destinations and malformed addresses fail at creation."""
        services = {"mq": {"type": "stomp", "host": "h", "Queues": {"logs": {}}}}
        with pytest.raises(ConfigurationError, match=re.escape(expected)):
            create_producer(address, services=services)


@pytest.mark.parametrize("service", ["rabbit", "rabbit-amqp", "amq"])
def test_put_then_callback_round_trip(rabbitmq, activemq, queue_name, service) -> None:
    """Objects put() on a queue reach the consumer's callback once each, decoded from JSON."""
    services = _services(rabbitmq, activemq, queue_name)
    address = f"{service}::Queues::{queue_name}"
    received: list[Any] = []
    lock = threading.Lock()

    def callback(headers: Any, message: Any) -> None:
        with lock:
            received.append(message)

    consumer = create_consumer(address, callback, services=services)
    try:
        with create_producer(address, services=services) as producer:
            ids = [producer.put({"n": i, "text": "é"}) for i in range(50)]
        assert len(set(ids)) == 50
        wait_until(lambda: len(received) >= 50, timeout=20, message="50 callbacks")
    finally:
        consumer.close()
    assert sorted(m["n"] for m in received) == list(range(50))


def test_producers_of_one_destination_share_a_connection(rabbitmq, activemq, queue_name) -> None:
    """Concurrent put() from many threads through two producers uses one shared connection."""
    services = _services(rabbitmq, activemq, queue_name)
    address = f"rabbit-amqp::Queues::{queue_name}"
    p1 = create_producer(address, services=services)
    p2 = create_producer(address, services=services)
    try:
        assert p1._conn is p2._conn
        threads = [
            threading.Thread(target=lambda p=p: [p.put({"i": i}) for i in range(100)])
            for p in (p1, p2, p1, p2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        p1.close()
        p2.close()
    assert rabbitmq.queue_depth(queue_name) == 400


def test_child_after_fork_gets_its_own_connection(rabbitmq, activemq, queue_name) -> None:
    """A forked child re-creates the shared connection; parent and child messages all arrive."""
    services = _services(rabbitmq, activemq, queue_name)
    address = f"rabbit-amqp::Queues::{queue_name}"
    producer = create_producer(address, services=services)
    producer.put({"who": "parent-before"})
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            with create_producer(address, services=services) as child:
                child.put({"who": "child"})
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    producer.put({"who": "parent-after"})
    producer.close()
    assert os.waitstatus_to_exitcode(status) == 0
    assert rabbitmq.queue_depth(queue_name) == 3
    with rabbitmq.amqp_channel() as channel:
        bodies = []
        while (got := channel.basic_get(queue_name, auto_ack=True))[0] is not None:
            bodies.append(json.loads(got[2])["who"])
    assert sorted(bodies) == ["child", "parent-after", "parent-before"]


def test_the_old_import_path_still_works_and_loads_the_api_only_when_asked() -> None:
    """``from mqlogging.backends import create_producer`` (the path the README showed before
    #12) still gives the DIRAC-style API, but importing ``mqlogging.backends`` alone does not
    load it (its connection-sharing registry stays out of applications that do not use it)."""
    import subprocess
    import sys

    code = (
        "import sys, mqlogging.backends as b\n"
        "assert 'mqlogging.backends.services' not in sys.modules\n"
        "from mqlogging.backends import MQConsumer, MQProducer, create_consumer, create_producer\n"
        "from mqlogging.backends import services\n"
        "assert create_producer is services.create_producer\n"
        "assert MQConsumer is services.MQConsumer and MQProducer is services.MQProducer\n"
        "assert create_consumer is services.create_consumer\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
