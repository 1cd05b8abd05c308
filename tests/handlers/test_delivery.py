"""MQHandler delivery under broker faults, counted end to end: nothing lost, order kept,
duplicates only where at-least-once allows them (and then with the same record id)."""

from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from harness.brokers import ActiveMQ, RabbitMQ
from harness.drain import amqp_url, drain_amqp, drain_stomp, record_id, seqs, stomp_url
from harness.helpers import wait_until
from harness.proxy import Outage
from mqlogging.handlers import MQHandler


def _handler(urls: str | list[str], spool: Path, **kwargs: Any) -> MQHandler:
    options: dict[str, Any] = {"batch_size": 1000, "retry_max": 1.0, "close_timeout": 10.0}
    options.update(kwargs)
    return MQHandler(urls, spool=str(spool), **options)


def _emit(logger: Any, start: int, stop: int) -> None:
    for i in range(start, stop):
        logger.info("record %d", i, extra={"seq": i})


def _ids_by_seq(docs: list[dict[str, Any]]) -> dict[int, set[str]]:
    out: dict[int, set[str]] = defaultdict(set)
    for doc in docs:
        out[int(doc["seq"])].add(record_id(doc))
    return out


class TestBrokerDown:
    # 12k is more than the handler's queue (10k), so the overflow path to the spool runs too.
    @pytest.mark.parametrize("n", [12_000, pytest.param(50_000, marks=pytest.mark.slow)])
    def test_down_from_start_then_up(
        self,
        rabbitmq: RabbitMQ,
        queue_name: str,
        spool_dir: Path,
        app_logger: Any,
        outage: Outage,
        n: int,
    ) -> None:
        """The broker is down while the application logs ``n`` records (12k; 50k in ``make
        test-slow``), more than its queue holds (they go to the spool); once it is up, all
        arrive, in emit order, none twice. (Down and up through the ``outage`` fixture:
        refused, then reachable; the broker restarts below cover a handler retrying while the
        broker boots.)"""
        broker, url = outage(amqp_url(rabbitmq, queue_name), rabbitmq.amqp_port)
        handler = _handler(url, spool_dir)
        app_logger.addHandler(handler)
        _emit(app_logger, 0, n)
        assert not handler.flush(1)  # nothing can be confirmed: flush says so at its deadline
        wait_until(lambda: handler.stats()["spool"]["records"] == n, timeout=60, message="spool")
        stats = handler.stats()
        assert stats["confirmed"] == 0
        assert stats["spool"]["records"] == n
        broker.start()
        wait_until(lambda: handler.stats()["replayed"] >= n, timeout=120, message="replay")
        docs = drain_amqp(rabbitmq, queue_name, n)
        assert list(range(n)) == seqs(docs)
        stats = handler.stats()
        assert stats["spool"]["records"] == 0
        assert stats["dropped"] == {}

    @pytest.mark.parametrize("n", [20_000, pytest.param(100_000, marks=pytest.mark.slow)])
    def test_killed_mid_stream_and_restarted(
        self, rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path, app_logger: Any, n: int
    ) -> None:
        """kill -9 of the broker while ``n`` records (20k; 100k in ``make test-slow``) stream
        through, then a restart: all arrive; a record that arrives twice (its batch's confirm
        was lost) has the same id."""
        handler = _handler(amqp_url(rabbitmq, queue_name), spool_dir)
        app_logger.addHandler(handler)
        _emit(app_logger, 0, n // 5)
        assert handler.flush(30)
        # The queue is new: see RabbitMQ.sync_definitions. Done before the stream goes on, so
        # the 1-3 s it takes cannot let the whole stream through before the kill.
        rabbitmq.sync_definitions()

        confirmed_at_kill: list[int] = []

        def killer() -> None:
            wait_until(lambda: handler.stats()["confirmed"] >= 2 * n // 5, timeout=120)
            rabbitmq.kill()
            confirmed_at_kill.append(handler.stats()["confirmed"])

        thread = threading.Thread(target=killer)
        thread.start()
        _emit(app_logger, n // 5, n)
        thread.join()
        assert confirmed_at_kill[0] < n  # the kill landed mid-stream
        rabbitmq.start()
        docs = drain_amqp(rabbitmq, queue_name, range(n), timeout=180)
        by_seq = _ids_by_seq(docs)
        assert set(range(n)) == set(by_seq)
        assert all(len(ids) == 1 for ids in by_seq.values())
        assert handler.flush(30)
        assert handler.stats()["dropped"] == {}


class TestStrategies:
    @pytest.mark.parametrize("n", [6000, pytest.param(20_000, marks=pytest.mark.slow)])
    def test_failover_primary_killed(
        self,
        rabbitmq: RabbitMQ,
        activemq: ActiveMQ,
        queue_name: str,
        spool_dir: Path,
        app_logger: Any,
        n: int,
    ) -> None:
        """The primary (RabbitMQ) is killed mid-stream (``n`` records: 6k; 20k in ``make
        test-slow``): records continue on the secondary (ActiveMQ); together the two queues
        hold every record, each queue in emit order."""
        primary, secondary = amqp_url(rabbitmq, queue_name), stomp_url(activemq, queue_name)
        handler = _handler([primary, secondary], spool_dir, batch_size=500, retry_max=30.0)
        app_logger.addHandler(handler)
        _emit(app_logger, 0, n // 2)
        assert handler.flush(30)
        rabbitmq.sync_definitions()  # the queue is new: see RabbitMQ.sync_definitions
        rabbitmq.kill()
        _emit(app_logger, n // 2, n)
        assert handler.flush(60)
        stats = handler.stats()
        on_primary, on_secondary = (e["confirmed"] for e in stats["endpoints"].values())
        assert on_secondary > 0
        rabbitmq.start()
        a = seqs(drain_amqp(rabbitmq, queue_name, on_primary))
        b = seqs(drain_stomp(secondary, on_secondary))
        assert a == sorted(a)
        assert b == sorted(b)
        assert list(range(n)) == sorted(a + b)

    def test_all_keeps_copies_for_a_down_endpoint(
        self,
        rabbitmq: RabbitMQ,
        activemq: ActiveMQ,
        queue_name: str,
        spool_dir: Path,
        app_logger: Any,
        outage: Outage,
    ) -> None:
        """strategy=all with ActiveMQ down (the ``outage`` fixture: refused until the test
        lets connections through): RabbitMQ gets every record at once; ActiveMQ's copies wait
        in its own spool and arrive, in order, once it is back."""
        n = 5000
        direct = stomp_url(activemq, queue_name)
        down, second = outage(direct, activemq.stomp_port)
        first = amqp_url(rabbitmq, queue_name)
        handler = _handler([first, second], spool_dir, strategy="all", batch_size=500)
        app_logger.addHandler(handler)
        _emit(app_logger, 0, n)
        assert list(range(n)) == seqs(drain_amqp(rabbitmq, queue_name, n))
        down.start()
        assert list(range(n)) == seqs(drain_stomp(direct, n, timeout=120))


class TestDurabilitySpool:
    def test_write_ahead_delivers_in_order(
        self, rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path, app_logger: Any
    ) -> None:
        """durability=spool: each record is in the spool when emit() returns, the sender
        publishes from the spool; all arrive once, in order, and the spool ends empty."""
        n = 5000
        handler = _handler(amqp_url(rabbitmq, queue_name), spool_dir, durability="spool")
        app_logger.addHandler(handler)
        _emit(app_logger, 0, n)
        assert handler.flush(30)
        assert list(range(n)) == seqs(drain_amqp(rabbitmq, queue_name, n))
        stats = handler.stats()
        assert stats["spooled"] == n
        assert stats["spool"]["records"] == 0
