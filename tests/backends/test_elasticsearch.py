"""``elasticsearch+http(s)://`` as a handler endpoint (issue #15), through the registry.

The ``elasticsearch`` fixture is noida-db, a stand-in for Elasticsearch that speaks its REST
API (``_bulk`` ``create``, per-item 409 and mapping-conflict 400s, ``_count``, ``_search``);
tests marked ``real_es`` run the delivery test against a real cluster when
``MQLOGGING_ES_URL`` is set. Faults Elasticsearch itself cannot be made to answer on demand
(429, 503) come from :class:`harness.collector.BulkStandIn`, a small HTTP server answering
``_bulk`` like Elasticsearch, talked to by the official client.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from harness.brokers import NoidaES, RabbitMQ
from harness.collector import BulkStandIn, amqp_queue_url, dataset_for, es_count, es_search
from harness.helpers import unique_name, wait_until
from harness.proxy import TcpProxy
from harness.tls import PKI, make_pki
from mqlogging._types import Message
from mqlogging.backends import Endpoint, TapOptions, open_consumer, open_producer, open_tap
from mqlogging.backends import transport_for as transport_of
from mqlogging.backends.elasticsearch import ElasticsearchEndpoint, ElasticsearchProducer
from mqlogging.cli.spool import inspect_spool, replay_spool
from mqlogging.collector.config import parse_config
from mqlogging.collector.service import CollectorService
from mqlogging.errors import (
    ConfigurationError,
    ConnectError,
    NotConfirmed,
    PartlyRefused,
    PublishTimeout,
)
from mqlogging.formatting import JsonFormatter
from mqlogging.handlers import MQHandler
from mqlogging.spool import Spool, SpoolReader
from tests.security.test_https_sinks import TLSTerminator


def es_url(es: NoidaES | BulkStandIn | str, **query: str) -> str:
    """The ``elasticsearch+http://`` URL of a stand-in (or of ``http(s)://host:port``)."""
    base = es if isinstance(es, str) else es.url
    parts = urlsplit(base)
    scheme = "elasticsearch+https" if parts.scheme == "https" else "elasticsearch+http"
    tail = "&".join(f"{k}={v}" for k, v in query.items())
    return f"{scheme}://{parts.netloc}/?{tail}" if tail else f"{scheme}://{parts.netloc}/"


@pytest.fixture
def proxy(elasticsearch: NoidaES) -> Iterator[TcpProxy]:
    """A :class:`~harness.proxy.TcpProxy` in front of noida-db, forwarding."""
    with TcpProxy(elasticsearch.host, elasticsearch.port) as forwarder:
        yield forwarder


@pytest.fixture
def dataset(request: pytest.FixtureRequest) -> str:
    """A data-stream dataset no other test writes to."""
    return dataset_for(unique_name("esep"))


@pytest.fixture
def logger(request: pytest.FixtureRequest) -> Iterator[logging.Logger]:
    """A fresh non-propagating logger; its handlers are closed afterwards."""
    log = logging.getLogger(f"esep.{unique_name('t')}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


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


def poll_flush(handler: MQHandler, done: Any, seconds: float = 15) -> bool:
    """Flush ``handler`` until ``done()`` or ``seconds`` pass (flush is the bounded wait)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if handler.flush(0.5) and done():
            return True
    return False


def all_docs(url: str, index: str, size: int) -> list[dict[str, Any]]:
    """Every stored document of ``index`` (``_source`` plus its ``_id``)."""
    return es_search(url, index, {"match_all": {}}, size=size)


def emit(log: logging.Logger, numbers: Iterable[int]) -> None:
    for i in numbers:
        log.warning("record %d", i, extra={"n": i})


# -- delivery -------------------------------------------------------------------------------------


class TestDelivery:
    def test_handler_delivers_every_record_with_its_id_as_id(
        self, elasticsearch: NoidaES, dataset: str, logger: logging.Logger, tmp_path: Path
    ) -> None:
        """MQHandler with one ``elasticsearch+http://`` endpoint stores 3,000 records in the
        data stream ``logs-<dataset>-default``, each once, with the record id (``event.id``)
        as the document ``_id``; the endpoint's stats show them confirmed, none rejected."""
        handler = MQHandler(
            es_url(elasticsearch, dataset=dataset), spool=str(tmp_path / "spool"), close_timeout=30
        )
        logger.addHandler(handler)
        emit(logger, range(3000))
        assert handler.flush(60)
        stats = next(iter(handler.stats()["endpoints"].values()))
        assert (stats["confirmed"], stats["rejected"]) == (3000, 0)
        index = f"logs-{dataset}-default"
        assert es_count(elasticsearch.url, index) == 3000
        docs = all_docs(elasticsearch.url, index, 3000)
        assert sorted(d["n"] for d in docs) == list(range(3000))
        assert all(d["_id"] == d["event"]["id"] for d in docs)

    def test_index_pattern_uses_the_record_time(
        self, elasticsearch: NoidaES, dataset: str, logger: logging.Logger
    ) -> None:
        """``index=NAME-%Y.%m.%d`` writes each record to the index of its own day (UTC), as the
        collector's sink does, and a record sent twice (same id) is stored once: the 409 of the
        second ``create`` counts as delivered."""
        pattern = f"{dataset.replace('_', '-')}-%Y.%m.%d"
        url = es_url(elasticsearch, index=pattern)
        handler = MQHandler(url, spool=False, close_timeout=30)
        logger.addHandler(handler)
        emit(logger, range(200))
        assert handler.flush(30)
        index = time.strftime(pattern, time.gmtime())
        assert es_count(elasticsearch.url, index) == 200
        doc = all_docs(elasticsearch.url, index, 1)[0]
        again = Message(
            doc["_id"], json.dumps({k: v for k, v in doc.items() if k != "_id"}).encode()
        )
        with open_producer(url) as producer:
            producer.publish_batch([again])  # 409: already stored, so delivered
        assert es_count(elasticsearch.url, index) == 200

    def test_endpoint_and_collector_put_an_old_record_in_the_same_index(
        self,
        elasticsearch: NoidaES,
        rabbitmq: RabbitMQ,
        queue_name: str,
        dataset: str,
        tmp_path: Path,
    ) -> None:
        """The same record stored by the endpoint (its batch then not confirmed, e.g. a
        timeout after ES stored it) and by the collector draining the failover broker lands
        in one index under one ``_id``, when both are given the same index window
        (``index_window_days_back=90``, longer than the 30-day default): a 45-day-old record
        goes to its own day's index from both, and the endpoint did not count it out of
        window (review 3, finding 2)."""
        pattern = f"{dataset.replace('_', '-')}-%Y.%m.%d"
        record = logging.LogRecord("r3", logging.WARNING, __file__, 1, "old record", None, None)
        record.created = time.time() - 45 * 86400
        message = JsonFormatter().format_message(record)
        url = es_url(elasticsearch, index=pattern, index_window_days_back="90")
        with ElasticsearchProducer(url) as p:
            p.publish_batch([message])  # stored in ES; say the answer timed out -> failover
            assert p.stats()["out_of_window"] == 0
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
        assert es_count(elasticsearch.url, today) == 0
        assert [d["_id"] for d in all_docs(elasticsearch.url, own_day, 10)] == [message.id]

    def test_a_record_outside_the_window_goes_to_todays_index_and_is_counted(
        self, elasticsearch: NoidaES, dataset: str
    ) -> None:
        """With the default window (30 days back, as the collector's sink), a 45-day-old
        record goes to the current day's index, as the sink would put it, and the producer
        counts it (``out_of_window``)."""
        pattern = f"{dataset.replace('_', '-')}-%Y.%m.%d"
        record = logging.LogRecord("r3", logging.WARNING, __file__, 1, "old record", None, None)
        record.created = time.time() - 45 * 86400
        message = JsonFormatter().format_message(record)
        with ElasticsearchProducer(es_url(elasticsearch, index=pattern)) as producer:
            producer.publish_batch([message])
            assert producer.stats()["out_of_window"] == 1
        today = time.strftime(pattern, time.gmtime())
        assert [d["_id"] for d in all_docs(elasticsearch.url, today, 10)] == [message.id]

    def test_a_dead_host_of_the_cluster_is_skipped(
        self, elasticsearch: NoidaES, dataset: str
    ) -> None:
        """``elasticsearch+http://dead,alive/``: every batch is stored through the host that
        answers, none fails (several hosts are one cluster)."""
        url = f"elasticsearch+http://127.0.0.1:1,127.0.0.1:{elasticsearch.port}/?dataset={dataset}"
        body = b'{"@timestamp": "2026-01-01T00:00:00Z"}'
        with open_producer(url) as producer:
            for batch in range(5):
                producer.publish_batch([Message(f"h{batch}-{i}", body) for i in range(10)])
        assert es_count(elasticsearch.url, f"logs-{dataset}-default") == 50

    def test_a_host_that_cannot_be_connected_in_time_is_skipped(
        self, elasticsearch: NoidaES, dataset: str, blackhole: int
    ) -> None:
        """``elasticsearch+http://blackholed,alive/``: a host that is down without refusing
        (powered off, firewalled: connect times out) is skipped like a refusing one; no
        batch fails although every request may land on it first (review 3, finding 3)."""
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
        assert es_count(elasticsearch.url, f"logs-{dataset}-default") == 40

    def test_a_record_id_over_the_limit_does_not_stall_the_endpoint(
        self, elasticsearch: NoidaES, dataset: str, logger: logging.Logger, tmp_path: Path
    ) -> None:
        """A caller's ``mqlogging_id`` longer than Elasticsearch's 512-byte ``_id`` limit is
        not the record id (the formatter generates one and keeps the value as
        ``extra.mqlogging_id``), so the request is not refused as a whole and the 30 good
        records of its batch and after it are stored, without a spool (review 3, finding 4)."""
        url = es_url(elasticsearch, dataset=dataset, rejected=str(tmp_path / "rejected"))
        handler = MQHandler(url, spool=False, retry_max=0.5, batch_size=10, close_timeout=5)
        logger.addHandler(handler)
        logger.info("long id", extra={"mqlogging_id": "x" * 600})
        for i in range(30):
            logger.info("good %d", i)
        index = f"logs-{dataset}-default"
        assert poll_flush(handler, lambda: es_count(elasticsearch.url, index) >= 31), (
            f"{es_count(elasticsearch.url, index)} of 31 records stored; {handler.stats()}"
        )
        assert handler.stats()["dropped"] == {}
        docs = all_docs(elasticsearch.url, index, 40)
        long_id = [d for d in docs if d["message"] == "long id"]
        assert len(long_id) == 1
        assert long_id[0]["extra"]["mqlogging_id"] == "x" * 600
        assert long_id[0]["_id"] == long_id[0]["event"]["id"] != "x" * 600

    @pytest.mark.real_es
    def test_delivers_to_a_real_cluster(self, real_es_url: str, logger: logging.Logger) -> None:
        """Against a real cluster (``MQLOGGING_ES_URL``): 500 records in a data stream."""
        dataset = dataset_for(unique_name("esep"))
        handler = MQHandler(es_url(real_es_url, dataset=dataset), spool=False, close_timeout=30)
        logger.addHandler(handler)
        emit(logger, range(500))
        assert handler.flush(60)
        assert es_count(real_es_url, f"logs-{dataset}-default") == 500


# -- failover to a broker and back ------------------------------------------------------------------


class TestFailover:
    def test_es_down_mid_stream_fails_over_to_amqp_and_back(
        self,
        elasticsearch: NoidaES,
        rabbitmq: RabbitMQ,
        queue_name: str,
        dataset: str,
        logger: logging.Logger,
        tmp_path: Path,
        proxy: TcpProxy,
    ) -> None:
        """``strategy="failover"`` with ``[elasticsearch, amqp]``: Elasticsearch goes away
        while records are being sent (its open connections reset, new ones refused); the next
        records go to RabbitMQ. Once it is back, the handler probes it again (capped backoff,
        ``retry_max``) and new records go to it, none to the broker. A collector drains the
        queue into the same data stream: every one of the 3,200 records is in the index
        exactly once (``_id`` = record id).

        The outage is a :class:`~harness.proxy.TcpProxy` in front of noida-db being cut, not
        noida-db being stopped: noida-db loses documents it answered ``201`` for in its last
        moments before a stop, which a real Elasticsearch (translog synced per request) does
        not, and which no handler could see."""
        broker = amqp_queue_url(rabbitmq, queue_name)
        handler = MQHandler(
            [es_url(proxy.url, dataset=dataset), broker],
            strategy="failover",
            spool=str(tmp_path / "spool"),
            retry_max=0.5,
            batch_size=100,
            close_timeout=30,
        )
        es_name, amqp_name = list(handler.stats()["endpoints"])
        logger.addHandler(handler)

        def confirmed(name: str) -> int:
            return int(handler.stats()["endpoints"][name]["confirmed"])

        emit(logger, range(1000))
        proxy.cut()  # mid-stream: batches may be in flight
        emit(logger, range(1000, 2000))
        assert handler.flush(60)
        assert confirmed(amqp_name) >= 1000
        proxy.restore()
        # The handler learns that Elasticsearch is back only by sending to it: keep logging
        # (ten records at a time) until a batch to it is confirmed, then log the rest.
        after = iter(range(2000, 3000))

        def es_is_back() -> bool:
            emit(logger, itertools.islice(after, 10))
            assert handler.flush(60)
            return bool(handler.stats()["endpoints"][es_name]["healthy"])

        wait_until(es_is_back, timeout=60, interval=0.2, message="Elasticsearch taken back")
        emit(logger, after)
        assert handler.flush(60)
        to_broker = confirmed(amqp_name)
        emit(logger, range(3000, 3200))  # Elasticsearch answers again: all of these go there
        assert handler.flush(30)
        assert confirmed(amqp_name) == to_broker
        handler.close()

        index = f"logs-{dataset}-default"
        service = CollectorService(
            parse_config(
                {
                    "sources": [{"url": broker}],
                    "sinks": [
                        {
                            "type": "elasticsearch",
                            "hosts": [elasticsearch.url],
                            "dataset": dataset,
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
            wait_until(lambda: service.metrics.value("acked") >= to_broker, timeout=60)
        finally:
            service.close()
        assert rabbitmq.queue_depth(queue_name) == 0
        docs = all_docs(elasticsearch.url, index, 4000)
        assert sorted(d["n"] for d in docs) == list(range(3200))
        assert len({d["_id"] for d in docs}) == 3200
        assert all(d["_id"] == d["event"]["id"] for d in docs)


# -- per-item outcomes ----------------------------------------------------------------------------


class TestOutcomes:
    def test_mapping_conflict_is_kept_with_its_error_and_the_rest_delivered(
        self, elasticsearch: NoidaES, dataset: str, logger: logging.Logger, tmp_path: Path
    ) -> None:
        """A record whose field contradicts the index mapping (noida-db answers a per-item 400
        ``document_parsing_exception``) is kept in the rejected spool with Elasticsearch's
        error and counted; the other records of its batch are stored, and the lane goes on
        (the records after it are delivered too, nothing is spooled)."""
        rejected = tmp_path / "rejected"
        handler = MQHandler(
            es_url(elasticsearch, dataset=dataset, rejected=str(rejected)),
            spool=str(tmp_path / "spool"),
            close_timeout=30,
        )
        logger.addHandler(handler)
        logger.warning("typed", extra={"size": 1})
        assert handler.flush(30)  # the index now maps "size" as a number
        for i in range(100):
            size: Any = {"not": "a number"} if i == 50 else i
            logger.warning("record %d", i, extra={"n": i, "size": size})
        assert handler.flush(30)
        stats = next(iter(handler.stats()["endpoints"].values()))
        assert stats["rejected"] == 1
        assert handler.stats()["spooled"] == 0
        index = f"logs-{dataset}-default"
        assert es_count(elasticsearch.url, index) == 100
        with SpoolReader(str(rejected)) as reader:
            kept = [json.loads(r.body) for r in reader.read(10)]
        assert len(kept) == 1
        assert "document_parsing_exception" in kept[0]["reason"]
        assert kept[0]["stage"] == "sink"
        original = json.loads(kept[0]["message"])
        assert (original["n"], original["event"]["id"]) == (50, kept[0]["record_id"])

    def test_unusable_rejected_dir_is_refused_at_configuration(self, tmp_path: Path) -> None:
        """A rejected spool directory that cannot be created is refused when the handler is
        configured, in one line naming ``rejected=`` (not found out on the first rejection)."""
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        url = f"elasticsearch+http://127.0.0.1:9/?rejected={blocker / 'rejected'}"
        with pytest.raises(ConfigurationError, match=r"cannot keep rejected.*set rejected=") as e:
            MQHandler(url, spool=False)
        assert "\n" not in str(e.value)

    def test_a_rejected_record_that_cannot_be_kept_is_partly_refused(
        self, elasticsearch: NoidaES, dataset: str, tmp_path: Path
    ) -> None:
        """When the rejected spool cannot be written after all (its directory replaced by a
        file), the producer raises ``PartlyRefused`` naming only the rejected record (the
        rest of the batch is stored and confirmed) and counts it once
        (``rejected_unsaved``)."""
        rejected = tmp_path / "rejected"
        url = es_url(elasticsearch, dataset=dataset, rejected=str(rejected))
        body = {"@timestamp": "2026-01-01T00:00:00Z", "size": 1}
        with ElasticsearchProducer(url) as producer:
            producer.endpoint.prepare_local()
            producer.publish_batch([Message("first", json.dumps(body).encode())])
            shutil.rmtree(rejected)
            rejected.write_text("")  # the directory is gone: the spool cannot be opened
            bad = json.dumps({**body, "size": {"x": 1}}).encode()
            good = json.dumps(body).encode()
            batch = [Message("second", bad), Message("third", good)]
            with pytest.raises(PartlyRefused, match=r"cannot be kept.*set rejected=") as info:
                producer.publish_batch(batch)
            assert info.value.ids == frozenset({"second"})
            assert producer.stats()["rejected_unsaved"] == 1
            assert producer.stats()["rejected"] == 0
        assert es_count(elasticsearch.url, f"logs-{dataset}-default") == 2

    def test_spool_replay_goes_past_a_rejected_record_that_cannot_be_kept(
        self, elasticsearch: NoidaES, dataset: str, tmp_path: Path
    ) -> None:
        """``replay_spool`` of a spool holding a record Elasticsearch rejects (mapping
        conflict) to an endpoint that cannot keep it (``rejected=`` is a file): the batch is
        committed, the record is named in ``ReplayResult.refused`` under ``rejected_unsaved``,
        the others are stored, the spool is empty and a second replay has nothing to send.
        (Review 10, D2: the replay stopped there for good.)"""
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        url = es_url(elasticsearch, dataset=dataset, rejected=str(blocker))
        body = {"@timestamp": "2026-01-01T00:00:00Z", "size": 1}
        with ElasticsearchProducer(url) as producer:  # the mapping: size is a number
            producer.publish_batch([Message("first", json.dumps(body).encode())])
        spool = tmp_path / "spool"
        bad = {**body, "size": {"x": 1}}
        with Spool(spool) as writer:
            writer.append([json.dumps(d).encode() for d in (body, bad, body)])
        result = replay_spool(str(spool), url)
        assert (result.records, list(result.refused)) == (2, ["rejected_unsaved"])
        assert len(result.refused["rejected_unsaved"]) == 1
        assert inspect_spool(str(spool)).records == 0
        assert replay_spool(str(spool), url).records == 0
        assert es_count(elasticsearch.url, f"logs-{dataset}-default") == 3

    def test_one_rejected_record_that_cannot_be_kept_does_not_hold_up_the_stream(
        self, elasticsearch: NoidaES, dataset: str, logger: logging.Logger, tmp_path: Path
    ) -> None:
        """``MQHandler`` with one endpoint whose rejected spool fails after configuration:
        one record with a mapping conflict is dropped, counted once (``rejected_unsaved``,
        in the handler's and the producer's stats) and announced by a drop marker; the 50
        good records logged after it are stored while Elasticsearch is healthy, not held
        in the spool behind it (review 3, finding 1)."""
        rejected = tmp_path / "rejected"
        url = es_url(elasticsearch, dataset=dataset, rejected=str(rejected))
        handler = MQHandler(
            url, spool=str(tmp_path / "spool"), retry_max=0.5, batch_size=10, close_timeout=5
        )
        logger.addHandler(handler)
        logger.info("typed", extra={"size": 1})
        assert handler.flush(30)  # the index maps "size" as a number
        shutil.rmtree(rejected)
        rejected.write_text("")
        logger.info("conflict", extra={"size": {"not": "a number"}})
        for i in range(50):
            logger.info("good %d", i, extra={"size": i})
        index = f"logs-{dataset}-default"
        stored = poll_flush(handler, lambda: es_count(elasticsearch.url, index) >= 52)
        endpoint = next(iter(handler.stats()["endpoints"].values()))
        assert stored, (
            f"{es_count(elasticsearch.url, index)} of 51 records and a marker stored; "
            f"spool: {handler.stats()['spool']}; endpoint: {endpoint}"
        )
        assert handler.stats()["dropped"] == {"rejected_unsaved": 1}
        assert endpoint["rejected_unsaved"] == 1
        docs = all_docs(elasticsearch.url, index, 60)
        reasons = [r["reason"] for d in docs for r in d.get("mqlogging", {}).get("dropped", [])]
        assert reasons == ["rejected_unsaved"]
        assert sorted(d["size"] for d in docs if "good" in d["message"]) == list(range(50))

    @pytest.mark.parametrize(("status", "error"), [(429, NotConfirmed), (503, NotConfirmed)])
    def test_throttled_or_unavailable_items_are_not_confirmed(
        self, status: int, error: type[Exception]
    ) -> None:
        """A per-item 429 or 503 (from the ``_bulk`` stand-in, through the official client)
        leaves the batch unconfirmed with the status in the message; sent again, the records
        that were stored answer 409 and the batch is confirmed."""
        answers = {"request": 0}

        def fault(request: int, item: int) -> int | None:
            answers["request"] = request
            return status if request == 1 and item == 1 else None

        with BulkStandIn(fault) as es:
            messages = [Message(f"id-{i}", b'{"@timestamp": "2026-01-01T00:00:00Z"}')
                        for i in range(3)]  # fmt: skip
            with ElasticsearchProducer(es_url(es)) as producer:
                with pytest.raises(error, match=f"did not store 1 of 3 records: {status}"):
                    producer.publish_batch(messages)
                producer.publish_batch(messages)
            assert sorted(es.docs) == ["id-0", "id-1", "id-2"]

    def test_request_level_refusal_is_not_confirmed(self) -> None:
        """A whole request refused for a reason no document causes (401: credentials) is an
        outage, not a rejection: ``NotConfirmed`` saying so, nothing kept as rejected."""
        with (
            BulkStandIn(lambda request, item: 401 if item == -1 else None) as es,
            ElasticsearchProducer(es_url(es)) as producer,
        ):
            with pytest.raises(NotConfirmed, match="did not store 2 of 2 records: outage: 401"):
                producer.publish_batch([Message("a", b"{}"), Message("b", b"{}")])
            assert producer.stats()["rejected"] == 0

    def test_a_rejection_is_kept_only_once_its_batch_is_confirmed(self, tmp_path: Path) -> None:
        """In a batch with a rejected record (400) and a throttled one (429), nothing is kept
        as rejected yet: the batch is not confirmed and will be sent again (or to the next
        endpoint), where the rejected record meets its fate once."""
        statuses = {0: 400, 1: 429}
        url_query = {"rejected": str(tmp_path / "rejected")}
        with (
            BulkStandIn(lambda request, item: statuses.get(item) if request == 1 else None) as es,
            ElasticsearchProducer(es_url(es, **url_query)) as producer,
        ):
            with pytest.raises(NotConfirmed, match="did not store 1 of 2 records: 429"):
                producer.publish_batch([Message("a", b"{}"), Message("b", b"{}")])
            assert producer.stats()["rejected"] == 0
            assert not list((tmp_path / "rejected").glob("*"))

    def test_a_body_that_is_not_a_json_object_is_kept_as_rejected(self, tmp_path: Path) -> None:
        """A message whose body is not a JSON object (a damaged spool line) is never sent; it
        is kept in the rejected spool (base64 when it is not UTF-8) and the rest is stored."""
        rejected = tmp_path / "rejected"
        with BulkStandIn() as es:
            with ElasticsearchProducer(es_url(es, rejected=str(rejected))) as producer:
                producer.publish_batch(
                    [Message("a", b"[1]"), Message("b", b"{}"), Message("c", b"\xff{")]
                )
                assert producer.stats()["rejected"] == 2
            assert sorted(es.docs) == ["b"]
        with SpoolReader(str(rejected)) as reader:
            kept = {d["record_id"]: d for d in (json.loads(r.body) for r in reader.read(10))}
        assert kept["a"]["message"] == "[1]"
        assert kept["a"]["reason"] == "not a JSON object"
        assert "message_base64" in kept["c"]

    def test_an_answer_that_never_comes_is_a_publish_timeout(self) -> None:
        """A server that accepts the connection and never answers: ``PublishTimeout`` after
        ``timeout`` (the batch may or may not be stored), not a hang."""
        with socket.create_server(("127.0.0.1", 0)) as silent:
            port = silent.getsockname()[1]
            started = time.monotonic()
            with (
                ElasticsearchProducer(f"elasticsearch+http://127.0.0.1:{port}/?timeout=1") as p,
                pytest.raises(PublishTimeout, match="did not answer in time"),
            ):
                p.publish_batch([Message("a", b"{}")])
            assert time.monotonic() - started < 10

    def test_unreachable_is_a_connect_error(self) -> None:
        """Nothing listening: ``ConnectError`` naming the redacted endpoint, quickly."""
        url = "elasticsearch+http://writer:s3cret@127.0.0.1:1/?timeout=2"
        started = time.monotonic()
        with (
            ElasticsearchProducer(url) as producer,
            pytest.raises(ConnectError, match=r"cannot reach Elasticsearch") as info,
        ):
            producer.publish_batch([Message("a", b"{}")])
        assert time.monotonic() - started < 10
        assert "writer:***@127.0.0.1:1" in str(info.value)
        assert "s3cret" not in str(info.value)


# -- configuration ----------------------------------------------------------------------------------


class TestConfiguration:
    def test_url_options(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Hosts, index or data stream, API key from the environment (never shown), the
        rejected spool's directory (given, or under ``$XDG_STATE_HOME``), and the destination
        key the handler's spool directory is named after."""
        monkeypatch.setenv("ESEP_KEY", "k3y-secret")
        ep = Endpoint.from_url(
            "elasticsearch+http://es1,es2:9201/?index=app-%Y.%m&api_key_env=ESEP_KEY&timeout=3"
        )
        assert isinstance(ep, ElasticsearchEndpoint)
        assert [str(h) for h in ep.hosts] == ["es1:9200", "es2:9201"]
        assert (ep.mode, ep.index, ep.timeout) == ("index", "app-%Y.%m", 3.0)
        assert ep.api_key is not None
        assert ep.api_key.reveal() == "k3y-secret"
        assert "k3y" not in repr(ep) + str(ep) + ep.destination_key()
        assert ep.redacted() == "elasticsearch+http://es1:9200,es2:9201/?index=app-%Y.%m"
        assert ElasticsearchEndpoint.from_url(ep, rejected="/r").rejected_dir() == "/r"
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
        default = Path(ep.rejected_dir())
        assert default.parent == tmp_path / "mqlogging" / "rejected"
        assert len(default.name) == 16
        ds = Endpoint.from_url("elasticsearch+https://u:pw@es/?dataset=billing&namespace=prod")
        assert (ds.mode, ds.destination_key()) == (
            "data_stream",
            "elasticsearch+https://es:9200/?index=logs-billing-prod",
        )
        assert ds.redacted() == (
            "elasticsearch+https://u:***@es:9200/?dataset=billing&namespace=prod"
        )

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("elasticsearch+http://es/?indx=a", "unknown option 'indx' .*did you mean 'index'"),
            ("elasticsearch+https://es/?ca_certs=/nonexistent/ca.pem", "ca_certs.*nonexistent"),
            ("elasticsearch+http://es/?ca_certs=/x.pem", "use elasticsearch\\+https://"),
            ("elasticsearch+http://es/?index=a&dataset=b", "give either index= .* not both"),
            ("elasticsearch+http://u:p@es/?api_key=k", "API key or a user name"),
            ("elasticsearch+http://es/logs", "name the index with \\?index=NAME"),
            ("elasticsearch+http://es/?index=Logs", "must be lower-case"),
            ("elasticsearch+http://es/?dataset=a-b", "dataset='a-b': use lower-case"),
            ("elasticsearch+http://es/?api_key_env=ESEP_UNSET_VAR", "that variable is not set"),
            ("elasticsearch+http://es/?max_bulk_bytes=10", "at least 1024"),
        ],
    )
    def test_bad_configuration_is_one_line(self, url: str, expected: str) -> None:
        """Every mistake is refused when the URL is parsed, in one line saying what to fix
        (a missing CA file, an unknown option with a suggestion, TLS options on plain HTTP,
        contradicting options, names Elasticsearch would refuse)."""
        with pytest.raises(ConfigurationError, match=expected) as info:
            MQHandler(url, spool=False)
        assert "\n" not in str(info.value)

    def test_a_producer_only_transport(self) -> None:
        """The registry serves both schemes with one transport that has a producer but no
        consumer and no tap (clear errors), preloads the client and ignores its loggers."""
        transport = transport_of("elasticsearch+https")
        assert transport is transport_of("elasticsearch+http")
        assert (transport.consumer, transport.tap) == (None, None)
        assert "elasticsearch" in transport.preload
        assert "elastic_transport" in transport.loggers
        with pytest.raises(ConfigurationError, match="cannot be consumed"):
            open_consumer("elasticsearch+http://es/")
        with pytest.raises(ConfigurationError, match="no live view"):
            open_tap("elasticsearch+http://es/", TapOptions())


# -- TLS ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A throwaway CA, a server certificate for 127.0.0.1 and another CA."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def https_es(pki: PKI, elasticsearch: NoidaES) -> Iterator[int]:
    """A port presenting the test PKI's server certificate (for 127.0.0.1) in front of
    noida-db, which speaks plain HTTP only (:class:`TLSTerminator`: a test relay, not part of
    Elasticsearch)."""
    with TLSTerminator(pki.server, pki.server_key, elasticsearch.port) as relay:
        yield relay.port


class TestTLS:
    def test_https_with_the_ca_delivers(
        self, https_es: int, pki: PKI, elasticsearch: NoidaES, dataset: str
    ) -> None:
        """``elasticsearch+https://`` with ``ca_certs`` verifies the server (hostname checked)
        and stores the batch."""
        url = f"elasticsearch+https://127.0.0.1:{https_es}/?dataset={dataset}&ca_certs={pki.ca}"
        with open_producer(url) as producer:
            producer.publish_batch([Message("tls-1", b'{"@timestamp": "2026-01-01T00:00:00Z"}')])
        assert es_count(elasticsearch.url, f"logs-{dataset}-default") == 1

    @pytest.mark.parametrize(
        ("host", "option", "expected"),
        [
            ("127.0.0.1", "ca_certs={other_ca}", "CERTIFICATE_VERIFY_FAILED"),
            ("localhost", "ca_certs={ca}", "Hostname mismatch"),
            ("127.0.0.1", "timeout=5", "CERTIFICATE_VERIFY_FAILED"),
        ],
    )
    def test_unverified_server_is_not_confirmed(
        self, https_es: int, pki: PKI, host: str, option: str, expected: str
    ) -> None:
        """Another CA, a certificate for another host, or no CA (the system trust store): the
        producer refuses the server with ``ConnectError`` saying what is wrong with its
        certificate; nothing is confirmed."""
        query = option.format(ca=pki.ca, other_ca=pki.other_ca)
        url = f"elasticsearch+https://{host}:{https_es}/?{query}"
        with (
            open_producer(url) as producer,
            pytest.raises(ConnectError, match=expected),
        ):
            producer.publish_batch([Message("tls-2", b"{}")])

    def test_verify_off_accepts_any_certificate(
        self, https_es: int, pki: PKI, elasticsearch: NoidaES, dataset: str
    ) -> None:
        """``verify=false`` (an explicit choice) accepts a certificate of an unknown CA."""
        url = f"elasticsearch+https://localhost:{https_es}/?dataset={dataset}&verify=false"
        with open_producer(url) as producer:
            producer.publish_batch([Message("tls-3", b'{"@timestamp": "2026-01-01T00:00:00Z"}')])
        assert es_count(elasticsearch.url, f"logs-{dataset}-default") == 1


# -- the README's example ---------------------------------------------------------------------------


def test_readme_monitoring_example_runs(
    elasticsearch: NoidaES,
    rabbitmq: RabbitMQ,
    queue_name: str,
    dataset: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The README's "Monitoring" snippet runs unchanged except for the addresses (noida-db
    standing in for Elasticsearch, the private RabbitMQ for the broker) and its record lands
    in the data stream with its extra field."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.setenv("ES_API_KEY", "unused-by-the-stand-in")
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (code,) = re.findall(r"```py\n(.*?)```", readme, flags=re.S)
    code = code.replace(
        "elasticsearch+https://es1:9200,es2:9200/?dataset=monitoring",
        es_url(elasticsearch, dataset=dataset),
    ).replace("amqps://broker1/?queue=logs", amqp_queue_url(rabbitmq, queue_name))
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    handler = namespace["handler"]
    try:
        assert handler.flush(30)
    finally:
        logging.getLogger("monitoring").removeHandler(handler)
        handler.close()
    (doc,) = all_docs(elasticsearch.url, f"logs-{dataset}-default", 5)
    assert (doc["message"], doc["load"]) == ("load", 0.7)
