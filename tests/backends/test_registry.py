"""The transport registry: one table from URL scheme to a transport, open to new transports.

Most tests register ``memtest://``, a transport that lives in this file and delivers to
in-process "boxes" (a queue with acknowledgements), and show that the handler, the
collector and the endpoint parser reach it through the registry alone. The last ones pin the
built-in transports' registration.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from harness.helpers import unique_name, wait_until
from mqlogging._types import Delivery, Message
from mqlogging.backends import (
    Consumer,
    Endpoint,
    Producer,
    TapOptions,
    Transport,
    open_consumer,
    open_producer,
    open_tap,
    register,
    transport_for,
    unregister,
)
from mqlogging.backends.amqp import AMQPProducer
from mqlogging.backends.endpoints import Scheme, URLParts
from mqlogging.backends.registry import register_lazy, schemes
from mqlogging.collector.config import parse_config
from mqlogging.collector.service import CollectorService
from mqlogging.errors import ConfigurationError, ConnectError
from mqlogging.handlers import MQHandler

ROOT = Path(__file__).resolve().parents[2]

# -- memtest://BOX: an in-process transport, as a user or a test would write one -----------------


class Box:
    """An in-memory queue: ready messages, and the delivered ones not yet acknowledged."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.ready: deque[Message] = deque()
        self.unacked: dict[int, Message] = {}
        self.tags = 0
        self.down = False  # while set, producers cannot connect (an outage)

    def put(self, messages: Sequence[Message]) -> None:
        with self.cond:
            self.ready.extend(messages)
            self.cond.notify_all()

    def take(self, n: int, timeout: float) -> list[tuple[int, Message]]:
        with self.cond:
            self.cond.wait_for(lambda: self.ready, timeout)
            out = []
            while self.ready and len(out) < n:
                self.tags += 1
                self.unacked[self.tags] = message = self.ready.popleft()
                out.append((self.tags, message))
            return out

    def settle(self, tags: Sequence[int], *, requeue: bool) -> None:
        with self.cond:
            back = [self.unacked.pop(t) for t in tags if t in self.unacked]
            if requeue:
                self.ready.extendleft(reversed(back))
                self.cond.notify_all()

    def size(self) -> tuple[int, int]:
        """``(ready, unacked)``."""
        with self.cond:
            return len(self.ready), len(self.unacked)


BOXES: dict[str, Box] = {}


@dataclass(frozen=True, slots=True, kw_only=True)
class MemEndpoint(Endpoint):
    """``memtest://BOX?prefetch=N``: the box BOX of this process."""

    transport: ClassVar[str] = "memtest"
    schemes: ClassVar[Mapping[str, Scheme]] = {"memtest": Scheme()}
    url_options: ClassVar[frozenset[str]] = frozenset({"prefetch", "password"})
    needs_hosts: ClassVar[bool] = False

    box: str = ""

    @classmethod
    def from_parts(cls, url: URLParts) -> MemEndpoint:
        if not url.hostlist:
            msg = f"{url.where}: name the box, e.g. memtest://box1"
            raise ConfigurationError(msg)
        return cls(box=url.hostlist, **cls.coerce_options(url.query, url.where))

    def redacted_path(self) -> str:
        return self.box

    def destination_parts(self) -> dict[str, str]:
        return {"box": self.box}


class MemProducer(Producer):
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = MemEndpoint.from_url(endpoint)
        self.box = BOXES.setdefault(self.endpoint.box, Box())

    def publish_batch(self, messages: Sequence[Message]) -> None:
        if self.box.down:
            msg = "box is down"
            raise ConnectError(msg, endpoint=self.endpoint.redacted())
        self.box.put(messages)

    def close(self) -> None:
        pass


class MemConsumer(Consumer):
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = MemEndpoint.from_url(endpoint)
        self.box = BOXES.setdefault(self.endpoint.box, Box())

    def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:
        if max_messages <= 0:
            return []
        return [Delivery(m.id, m.body, tag) for tag, m in self.box.take(max_messages, timeout)]

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        self.box.settle([d.tag for d in deliveries], requeue=False)

    def nack(self, deliveries: Sequence[Delivery], *, requeue: bool = True) -> None:
        self.box.settle([d.tag for d in deliveries], requeue=requeue)

    def close(self) -> None:
        with self.box.cond:
            tags = list(self.box.unacked)
        self.box.settle(tags, requeue=True)


MEMTEST = Transport(
    endpoint=MemEndpoint, producer=MemProducer, consumer=MemConsumer, loggers=("memtestlib",)
)


@pytest.fixture
def memtest() -> Iterator[Transport]:
    """``memtest://`` registered for the test, and forgotten afterwards."""
    register(MEMTEST)
    try:
        yield MEMTEST
    finally:
        unregister(MEMTEST)


@pytest.fixture
def box() -> str:
    return unique_name("box")


# -- a registered transport is reachable from everywhere ------------------------------------------


class TestRegisteredTransport:
    def test_handler_delivers_every_record_to_it(self, memtest: Transport, box: str) -> None:
        """MQHandler, configured with a ``memtest://`` URL, delivers every record to the box in
        emit order, through the registry alone (no code of the handler names the transport)."""
        handler = MQHandler(f"memtest://{box}", spool=False, queue_size=3000, close_timeout=30)
        logger = logging.getLogger(f"registry.{box}")
        logger.propagate = False
        logger.addHandler(handler)
        try:
            for i in range(2000):
                logger.warning("record %d", i, extra={"n": i})
        finally:
            logger.removeHandler(handler)
            handler.close()
        docs = [json.loads(m.body) for m in BOXES[box].ready]
        numbers = [d["n"] for d in docs if "n" in d]
        assert numbers == list(range(2000))
        assert len({d["event"]["id"] for d in docs}) == len(docs)

    def test_handler_ignores_its_client_librarys_loggers(
        self, memtest: Transport, box: str
    ) -> None:
        """Records of the transport's client-library loggers (``Transport.loggers``) never
        enter a handler sending over it (they would loop back into it), and are counted as
        ignored; other loggers' records are delivered. The list lives with the transport, not
        in the handler."""
        handler = MQHandler(f"memtest://{box}", spool=False, close_timeout=30)
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            logging.getLogger("memtestlib.connection").warning("chatter")
            logging.getLogger(f"app.{box}").warning("kept", extra={"n": 1})
            handler.flush(10)
            assert handler.stats()["ignored"] == 1
        finally:
            root.removeHandler(handler)
            handler.close()
        docs = [json.loads(m.body) for m in BOXES[box].ready]
        assert [d.get("n") for d in docs if d.get("message") != "chatter"] == [1]
        assert all(d.get("message") != "chatter" for d in docs)

    def test_handler_spools_through_its_outage_and_replays_in_order(
        self, memtest: Transport, box: str, tmp_path: Path
    ) -> None:
        """While the transport's producer cannot connect the handler spools; once it can, every
        record arrives once, in emit order: the handler's guarantees hold for a registered
        transport, whose ConnectError it treats like a broker's."""
        BOXES[box] = Box()
        BOXES[box].down = True
        handler = MQHandler(
            f"memtest://{box}", spool=str(tmp_path / "spool"), retry_max=0.2, close_timeout=30
        )
        logger = logging.getLogger(f"registry.{box}")
        logger.propagate = False
        logger.addHandler(handler)
        try:
            for i in range(1000):
                logger.warning("record %d", i, extra={"n": i})
            wait_until(lambda: handler.stats()["spooled"] > 0, timeout=10)
            BOXES[box].down = False
            for i in range(1000, 1200):
                logger.warning("record %d", i, extra={"n": i})
            wait_until(lambda: BOXES[box].size()[0] >= 1200, timeout=30)
        finally:
            logger.removeHandler(handler)
            handler.close()
        docs = [json.loads(m.body) for m in BOXES[box].ready]
        assert [d["n"] for d in docs if "n" in d] == list(range(1200))

    def test_collector_drains_it_into_a_sink(
        self, memtest: Transport, box: str, tmp_path: Path
    ) -> None:
        """The collector reads a ``memtest://`` source with the transport's consumer, writes
        every record to its file sink once and acknowledges all of them."""
        with open_producer(f"memtest://{box}") as producer:
            for start in range(0, 3000, 500):
                producer.publish_batch(
                    [
                        Message(f"id-{i}", json.dumps({"n": i}).encode())
                        for i in range(start, start + 500)
                    ]
                )
        out = tmp_path / "records.jsonl"
        config = parse_config(
            {
                "sources": [{"url": f"memtest://{box}"}],
                "sinks": [{"type": "file", "path": str(out)}],
                "http": {"listen": ""},
                "pipeline": {"batch_max_wait": 0.1},
                "collector": {"state_dir": str(tmp_path / "state"), "shutdown_timeout": 5.0},
            },
            env={},
        )
        service = CollectorService(config)
        service.start()
        try:
            wait_until(lambda: BOXES[box].size() == (0, 0), timeout=30)
            wait_until(lambda: service.metrics.value("acked") == 3000, timeout=10)
        finally:
            service.close()
        numbers = sorted(json.loads(line)["n"] for line in out.read_text().splitlines())
        assert numbers == list(range(3000))

    def test_endpoint_parsing_dispatches_to_its_endpoint_class(self, memtest: Transport) -> None:
        """``Endpoint.from_url`` returns the registered transport's endpoint class, with its own
        options and the common ones typed; ``transport_for`` finds the transport by URL, scheme
        or endpoint."""
        ep = Endpoint.from_url("memtest://b1?prefetch=7")
        assert isinstance(ep, MemEndpoint)
        assert (ep.transport, ep.scheme, ep.box, ep.prefetch) == ("memtest", "memtest", "b1", 7)
        assert ep.redacted() == "memtest://b1"
        assert ep.destination_key() == "memtest:///?box=b1"
        for where in ("memtest://b1", "MEMTEST", ep):
            assert transport_for(where) is memtest
        with pytest.raises(ConfigurationError, match=r"unknown option 'prefetsh' .*did you mean"):
            Endpoint.from_url("memtest://b1?prefetsh=7")

    def test_its_endpoint_keeps_the_redacting_repr(self, memtest: Transport) -> None:
        """An endpoint subclass declared with a plain ``@dataclass`` still shows only the
        redacted URL in ``repr``, never its fields (a password included)."""
        ep = Endpoint.from_url("memtest://b1", password="hunter2-secret")
        assert repr(ep) == "Endpoint('memtest://b1')"
        assert "hunter2" not in repr(ep) + str(ep)

    def test_a_missing_capability_is_a_clear_error(self, memtest: Transport) -> None:
        """A transport without a tap refuses ``open_tap`` in one line naming the endpoint and
        the missing part; likewise a transport without a consumer."""
        with pytest.raises(ConfigurationError) as info:
            open_tap("memtest://b1", TapOptions())
        assert str(info.value) == (
            "memtest://b1: the memtest transport offers no live view of its records (no tap)"
        )
        producer_only = Transport(endpoint=MemEndpoint, producer=MemProducer)
        unregister(memtest)
        register(producer_only)
        try:
            with pytest.raises(ConfigurationError, match="cannot be consumed"):
                open_consumer("memtest://b1")
        finally:
            unregister(producer_only)
            register(memtest)

    def test_a_transport_module_cannot_take_another_ones_urls(self, memtest: Transport) -> None:
        """A transport's own classes refuse an endpoint of another transport in one line."""
        with pytest.raises(ConfigurationError) as info:
            AMQPProducer(Endpoint.from_url("memtest://b1"))
        assert "is not an amqp endpoint (use amqp:// or amqps://)" in str(info.value)


# -- the table itself ----------------------------------------------------------------------------


class TestTable:
    def test_unknown_scheme_lists_the_registered_ones(self, memtest: Transport) -> None:
        """An unknown scheme is refused in one line that lists every registered scheme (a
        registered one included) and masks the password of the URL."""
        with pytest.raises(ConfigurationError) as info:
            Endpoint.from_url("amqq://user:s3cret@h/")
        text = str(info.value)
        assert text == (
            "unknown URL scheme 'amqq' in amqq://user:***@h/ "
            "(known: amqp, amqps, stomp, stomp+ssl, stomp+tls, local, elasticsearch+http, "
            "elasticsearch+https, https, http, kafka, kafka+ssl, memtest)"
        )
        with pytest.raises(ConfigurationError, match="unknown URL scheme 'amqq'"):
            open_producer("amqq://h/")

    def test_registering_a_scheme_twice_is_an_error(self, memtest: Transport) -> None:
        """A scheme belongs to one transport: registering it again, or a transport that claims
        a built-in scheme, is refused, and the refused registration leaves nothing behind."""
        with pytest.raises(ConfigurationError, match="'memtest' is already registered"):
            register(MEMTEST)

        @dataclass(frozen=True, slots=True, kw_only=True)
        class Greedy(MemEndpoint):
            schemes: ClassVar[Mapping[str, Scheme]] = {"greedy": Scheme(), "amqp": Scheme()}

        with pytest.raises(ConfigurationError, match=r"'amqp' is already registered \(by "):
            register(Transport(endpoint=Greedy, producer=MemProducer))
        assert "greedy" not in schemes()
        with pytest.raises(ConfigurationError, match="'x' is already registered"):
            register_lazy("somewhere:T", ("x", "x"))
        assert "x" not in schemes()

    def test_a_lazy_entry_is_imported_on_first_use(self) -> None:
        """A transport registered as ``"module:NAME"`` is imported when its scheme is first
        used, serves it from then on, and ``unregister`` by the same name forgets it."""
        register_lazy("tests.backends.test_registry:MEMTEST", ("memtest",))
        try:
            assert schemes()[-1] == "memtest"
            assert transport_for("memtest://b1") is MEMTEST
            assert isinstance(Endpoint.from_url("memtest://b1"), MemEndpoint)
        finally:
            unregister("tests.backends.test_registry:MEMTEST")
        assert "memtest" not in schemes()

    def test_a_lazy_entry_must_serve_the_schemes_it_was_registered_for(self) -> None:
        """A lazily registered transport whose value serves other schemes than its registry
        line says is refused when first used, naming both lists."""
        register_lazy("tests.backends.test_registry:MEMTEST", ("memtest2",))
        try:
            with pytest.raises(ConfigurationError, match="serves schemes memtest but was"):
                Endpoint.from_url("memtest2://b1")
        finally:
            unregister("tests.backends.test_registry:MEMTEST")
        assert "memtest2" not in schemes()

    def test_builtin_transports_and_their_capabilities(self) -> None:
        """Each built-in scheme maps to its transport; only AMQP's and Kafka's consumers are
        fetched while full (that services AMQP's heartbeats and a Kafka member's group
        membership); every built-in has a consumer and a tap; the handler preloads the
        client libraries."""
        names = {s: transport_for(s).name for s in ("amqp", "amqps", "stomp", "stomp+ssl",
                                                    "stomp+tls", "local")}  # fmt: skip
        assert names == {"amqp": "amqp", "amqps": "amqp", "stomp": "stomp",
                         "stomp+ssl": "stomp", "stomp+tls": "stomp", "local": "local"}  # fmt: skip
        assert [transport_for(s).fetch_when_full for s in ("amqp", "stomp", "local", "kafka")] == [
            True,
            False,
            False,
            True,
        ]
        for scheme in ("amqp", "stomp", "local"):
            transport = transport_for(scheme)
            assert transport.consumer is not None
            assert transport.tap is not None
        assert "pika" in transport_for("amqp").preload
        assert "stomp" in transport_for("stomp").preload
        assert transport_for("amqp").loggers == ("pika",)
        assert transport_for("stomp").loggers == ("stomp",)

    def test_importing_mqlogging_loads_no_transport_module(self) -> None:
        """``import mqlogging`` (and the backends package) imports neither a broker transport,
        its client library nor the DIRAC compatibility layer; parsing an AMQP URL imports the
        AMQP module but not pika."""
        code = (
            "import sys, mqlogging, mqlogging.backends\n"
            "def loaded():\n"
            "    names = ('mqlogging.backends.amqp', 'mqlogging.backends.stomp',\n"
            "             'mqlogging.backends.services', 'pika', 'stomp')\n"
            "    return [n for n in names if n in sys.modules]\n"
            "print(loaded())\n"
            "mqlogging.backends.Endpoint.from_url('amqp://h/')\n"
            "print(loaded())\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            timeout=60,
        ).stdout.splitlines()
        assert out == ["[]", "['mqlogging.backends.amqp']"]


def test_delivery_survives_a_requeue(memtest: Transport, box: str) -> None:
    """The in-memory transport of these tests keeps its promise: a nacked delivery comes
    back first, an acked one never (so the end-to-end tests above count honestly)."""
    with open_producer(f"memtest://{box}") as producer:
        producer.publish_batch([Message("a", b"{}"), Message("b", b"{}")])
    with open_consumer(f"memtest://{box}") as consumer:
        first = consumer.fetch(1, 1.0)
        consumer.nack(first)
        again = consumer.fetch(2, 1.0)
        assert [d.id for d in again] == ["a", "b"]
        consumer.ack(again)
    assert BOXES[box].size() == (0, 0)
