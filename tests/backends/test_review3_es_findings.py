"""REVIEW3 (adversarial review of the Elasticsearch endpoint, issue #15): FAILING regression
tests, one per finding. Each fails on the reviewed main (cd36436) and proves a defect; they are
meant to pass once the finding is fixed. Do not "fix" them by weakening the assertions.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.brokers import NoidaES, RabbitMQ
from harness.collector import amqp_queue_url, dataset_for, es_count, es_search
from harness.helpers import unique_name, wait_until
from mqlogging._types import Message
from mqlogging.backends import open_producer
from mqlogging.collector.config import parse_config
from mqlogging.collector.service import CollectorService
from mqlogging.formatting import JsonFormatter
from mqlogging.handlers import MQHandler


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A loopback port whose accept queue is full: a connect to it hangs until it times out,
    as a host that is powered off (no RST) does."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    held = socket.create_connection(("127.0.0.1", port), timeout=2)
    try:
        yield port
    finally:
        held.close()
        server.close()


def test_a_host_that_cannot_be_connected_in_time_is_skipped(
    elasticsearch: NoidaES, blackhole: int
) -> None:
    """REVIEW3 finding 1. ``elasticsearch+http://blackholed,alive/``: the module docstring
    says a request that *cannot connect* to one host tries the next. A host that is down
    without refusing (powered off, firewalled: connect times out) is not skipped: the
    client's connect timeout is a ``ConnectionTimeout`` and ``retry_on_timeout=False``, so
    every request that lands on it fails the whole batch (PublishTimeout) and the handler
    fails over, although nothing was sent and the other host answers."""
    dataset = dataset_for(unique_name("r3bh"))
    url = (
        f"elasticsearch+http://127.0.0.1:{blackhole},127.0.0.1:{elasticsearch.port}/"
        f"?dataset={dataset}&timeout=1"
    )
    body = b'{"@timestamp": "2026-01-01T00:00:00Z"}'
    failures: list[str] = []
    with open_producer(url) as producer:
        for batch in range(4):
            try:
                producer.publish_batch([Message(f"bh{batch}-{i}", body) for i in range(10)])
            except Exception as exc:  # collected: shows which batches failed
                failures.append(f"batch {batch}: {type(exc).__name__}: {exc}")
    assert failures == []


def test_endpoint_and_collector_put_an_old_record_in_the_same_index(
    elasticsearch: NoidaES, rabbitmq: RabbitMQ, queue_name: str, tmp_path: Path
) -> None:
    """REVIEW3 finding 2. The same record stored by the endpoint (its batch then not
    confirmed, e.g. a timeout after ES stored it) and by the collector draining the
    failover broker must land in one index under one ``_id`` (esbulk's promise). With an
    index pattern and a collector configured for a longer offline window
    (``index_window_days_back = 90``, documented for spools shipped after a long time
    offline), a 45-day-old record goes to today's index from the endpoint (its window is
    fixed at 30 days, no option) and to its own day's index from the collector: stored
    twice."""
    prefix = dataset_for(unique_name("r3win")).replace("_", "-")
    pattern = f"{prefix}-%Y.%m.%d"
    record = logging.LogRecord("r3", logging.WARNING, __file__, 1, "old record", None, None)
    record.created = time.time() - 45 * 86400
    message = JsonFormatter().format_message(record)

    with open_producer(
        f"elasticsearch+http://127.0.0.1:{elasticsearch.port}/?index={pattern}"
    ) as p:
        p.publish_batch([message])  # stored in ES; say the answer timed out -> failover
    broker = amqp_queue_url(rabbitmq, queue_name)
    with open_producer(broker) as p:
        p.publish_batch([message])  # the failover copy

    service = CollectorService(
        parse_config(
            {
                "sources": [{"url": broker}],
                "sinks": [
                    {
                        "type": "elasticsearch",
                        "hosts": [elasticsearch.url],
                        "mode": "index",
                        "index": pattern,
                        "index_window_days_back": 90.0,
                        "request_timeout": 5.0,
                    }
                ],
                "http": {"listen": ""},
                "pipeline": {"batch_max_wait": 0.1},
                "collector": {"state_dir": str(tmp_path / "state"), "shutdown_timeout": 5.0},
            },
            env={},
        )
    )
    service.start()
    try:
        wait_until(lambda: service.metrics.value("acked") >= 1, timeout=60)
    finally:
        service.close()
    today = time.strftime(pattern, time.gmtime())
    own_day = time.strftime(pattern, time.gmtime(record.created))
    copies = es_count(elasticsearch.url, today) + es_count(elasticsearch.url, own_day)
    stored = (
        [
            d["_id"]
            for index in (today, own_day)
            for d in es_search(elasticsearch.url, index, {"match_all": {}}, size=10)
        ]
        if copies
        else []
    )
    assert copies == 1, f"record {message.id} stored {copies} times: {stored}"


def test_one_rejected_record_does_not_hold_up_the_stream_when_it_cannot_be_kept(
    elasticsearch: NoidaES, tmp_path: Path
) -> None:
    """REVIEW3 finding 3. ``MQHandler`` with one ``elasticsearch`` endpoint whose rejected
    spool cannot be written (the default ``$XDG_STATE_HOME``/``~/.local/state`` is read-only
    in many containers): one record with a mapping conflict makes every attempt of its
    batch ``NotConfirmed``, for ever, and every record logged after it waits behind it
    (spooled until the spool overflows), while Elasticsearch is healthy and would store
    them. The record can never be stored as it is; it should be counted and announced (or
    kept elsewhere), not block the lane -- or the unusable directory refused at
    configuration time."""
    dataset = dataset_for(unique_name("r3rej"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    url = (
        f"elasticsearch+http://127.0.0.1:{elasticsearch.port}/"
        f"?dataset={dataset}&rejected={blocker / 'rejected'}"
    )
    handler = MQHandler(
        url, spool=str(tmp_path / "spool"), retry_max=0.5, batch_size=10, close_timeout=5
    )
    log = logging.getLogger(unique_name("r3rej"))
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        log.info("typed", extra={"size": 1})
        assert handler.flush(30)  # the index maps "size" as a number
        log.info("conflict", extra={"size": {"not": "a number"}})
        for i in range(50):
            log.info("good %d", i, extra={"size": i})
        index = f"logs-{dataset}-default"
        deadline = time.monotonic() + 15
        delivered = False
        while not delivered and time.monotonic() < deadline:
            # flush() is the poll with a deadline (a bounded wait, not a sleep)
            delivered = handler.flush(0.5) and es_count(elasticsearch.url, index) >= 51
        endpoint = next(iter(handler.stats()["endpoints"].values()))
        assert delivered, (
            f"{es_count(elasticsearch.url, index) - 1} of 50 good records stored after 15 s, "
            f"{handler.stats()['spool']['records']} records held in the spool; endpoint: "
            f"failures={endpoint['failures']} last_error={endpoint['last_error']!r}"
        )
    finally:
        log.removeHandler(handler)
        handler.close()


def test_a_record_id_elasticsearch_cannot_take_does_not_stall_the_endpoint(
    elasticsearch: NoidaES, tmp_path: Path
) -> None:
    """REVIEW3 finding 4 (low). A record whose id is longer than Elasticsearch's 512-byte
    ``_id`` limit (the formatter takes ``record.mqlogging_id`` as it is, e.g. set through
    ``extra=``; ``mqlogging.wire`` bounds ids at ``MAX_ID_BYTES`` only when reading) gets
    ``action_request_validation_exception``, which esbulk classifies as an *outage*: the
    endpoint is marked down for a fault of one record. Without a spool, the 30 good records
    of its batch and after it are dropped (counted ``unsent``) although Elasticsearch is up;
    with a spool they wait for the replay, which re-ids the record (``segment:offset``, not
    its ``event.id``). Expected: the id bounded at the source (or that record rejected and
    kept), the good records delivered."""
    dataset = dataset_for(unique_name("r3id"))
    url = (
        f"elasticsearch+http://127.0.0.1:{elasticsearch.port}/"
        f"?dataset={dataset}&rejected={tmp_path / 'rejected'}"
    )
    handler = MQHandler(url, spool=False, retry_max=0.5, batch_size=10, close_timeout=5)
    log = logging.getLogger(unique_name("r3id"))
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        log.info("long id", extra={"mqlogging_id": "x" * 600})
        for i in range(30):
            log.info("good %d", i)
        index = f"logs-{dataset}-default"
        deadline = time.monotonic() + 15
        flushed = False
        while not flushed and time.monotonic() < deadline:
            flushed = handler.flush(0.5)  # the poll with a deadline
        endpoint = next(iter(handler.stats()["endpoints"].values()))
        assert flushed, (
            f"{es_count(elasticsearch.url, index)} of 30 good records stored after 15 s, "
            f"failures={endpoint['failures']} last_error={str(endpoint['last_error'])[:160]!r}"
        )
        stored = es_count(elasticsearch.url, index)
        assert stored >= 30, f"{stored} of 30 good records stored; {handler.stats()['dropped']}"
    finally:
        log.removeHandler(handler)
        handler.close()
