"""Shared fixtures: private brokers on loopback, unique names, the ``real_es`` marker.

Brokers are expensive to boot (RabbitMQ ~6 s), so each runs once per pytest session and only
if some selected test asks for it. The function-scoped fixtures (``rabbitmq``, ``activemq``,
``elasticsearch``) restart a broker that an earlier test stopped or killed, so a fault-injection
test can leave a broker down without breaking the next test. Isolation between tests is by
names (``queue_name``), never by restarting brokers. ``rabbitmq_cluster`` is the same for a
three-node cluster (:mod:`harness.cluster`): booted on first use (20-30 s), every node running
at the start of each test.

A missing broker binary is an error, not a skip: the suite is meant to run against real
brokers, and a silent skip would hide that nothing was tested.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from harness.brokers import ActiveMQ, Broker, BrokerNotInstalled, NoidaES, RabbitMQ
from harness.cluster import RabbitMQCluster
from harness.helpers import unique_name
from harness.kafka import KAFKA_URL_ENV, NoidaKafka, RealKafka

ES_URL_ENV = "MQLOGGING_ES_URL"


def _start(broker: Broker) -> None:
    try:
        broker.ensure_running()
    except BrokerNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)


def _booted(broker: Broker) -> Iterator[Broker]:
    """Start ``broker`` for the session and always close it (kills the whole process group)."""
    try:
        _start(broker)
        yield broker
    finally:
        broker.close()


@pytest.fixture(scope="session")
def _rabbitmq_session() -> Iterator[Broker]:
    """The session's private RabbitMQ node (AMQP + STOMP), booted on first use."""
    yield from _booted(RabbitMQ())


@pytest.fixture(scope="session")
def _activemq_session() -> Iterator[Broker]:
    """The session's private ActiveMQ broker (STOMP), booted on first use."""
    yield from _booted(ActiveMQ())


@pytest.fixture(scope="session")
def _elasticsearch_session() -> Iterator[Broker]:
    """The session's private noida-db server (Elasticsearch REST API), booted on first use."""
    yield from _booted(NoidaES())


@pytest.fixture(scope="session")
def _rabbitmq_cluster_session() -> Iterator[RabbitMQCluster]:
    """The session's private three-node RabbitMQ cluster, booted on first use (~20-30 s)."""
    cluster = RabbitMQCluster()
    try:
        try:
            cluster.start()
        except BrokerNotInstalled as exc:
            pytest.fail(str(exc), pytrace=False)
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def rabbitmq_cluster(_rabbitmq_cluster_session: RabbitMQCluster) -> RabbitMQCluster:
    """The three-node cluster, every node running when the test starts (a node an earlier test
    killed or stopped is started again and rejoins)."""
    _rabbitmq_cluster_session.ensure_running()
    return _rabbitmq_cluster_session


@pytest.fixture
def rabbitmq(_rabbitmq_session: RabbitMQ) -> RabbitMQ:
    """The private RabbitMQ node, guaranteed running when the test starts."""
    _start(_rabbitmq_session)
    return _rabbitmq_session


@pytest.fixture
def activemq(_activemq_session: ActiveMQ) -> ActiveMQ:
    """The private ActiveMQ broker, guaranteed running when the test starts."""
    _start(_activemq_session)
    return _activemq_session


@pytest.fixture
def elasticsearch(_elasticsearch_session: NoidaES) -> NoidaES:
    """The private noida-db Elasticsearch stand-in, guaranteed running when the test starts."""
    _start(_elasticsearch_session)
    return _elasticsearch_session


@pytest.fixture(scope="session")
def _kafka_session() -> Iterator[Broker]:
    """The session's private noida-db server speaking Kafka (the stand-in), booted on first use."""
    yield from _booted(NoidaKafka())


@pytest.fixture
def kafka(_kafka_session: NoidaKafka) -> NoidaKafka:
    """The private noida-db Kafka stand-in, guaranteed running when the test starts."""
    _start(_kafka_session)
    return _kafka_session


@pytest.fixture
def real_kafka() -> RealKafka:
    """The real Kafka cluster of ``MQLOGGING_KAFKA_URL`` (``kafka://h1:9092,h2``), else skip."""
    url = os.environ.get(KAFKA_URL_ENV)
    if not url:
        pytest.skip(f"set {KAFKA_URL_ENV} to run against a real Kafka cluster")
    return RealKafka(url)


@pytest.fixture
def queue_name(request: pytest.FixtureRequest) -> str:
    """A queue name no other test (in this or a concurrent session) uses."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40].strip("-")
    return unique_name(f"mqlt-{stem}".lower())


@pytest.fixture
def real_es_url() -> str:
    """URL of a real Elasticsearch cluster from ``MQLOGGING_ES_URL`` (tests marked real_es)."""
    url = os.environ.get(ES_URL_ENV)
    if not url:
        pytest.skip(f"set {ES_URL_ENV} to run against a real Elasticsearch cluster")
    return url


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``real_es`` tests unless ``MQLOGGING_ES_URL`` is set; tag tests by broker."""
    has_real_es = bool(os.environ.get(ES_URL_ENV))
    skip_real = pytest.mark.skip(reason=f"set {ES_URL_ENV} to run against a real Elasticsearch")
    markers = {
        "rabbitmq": "rabbitmq",
        "activemq": "activemq",
        "elasticsearch": "elasticsearch",
        "rabbitmq_cluster": "rabbitmq_cluster",
        "kafka": "kafka",
    }
    for item in items:
        if "real_es" in item.keywords and not has_real_es:
            item.add_marker(skip_real)
        fixtures = getattr(item, "fixturenames", ())
        for fixture, marker in markers.items():
            if fixture in fixtures or f"_{fixture}_session" in fixtures:
                item.add_marker(getattr(pytest.mark, marker))
