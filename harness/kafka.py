"""Kafka for the tests and ``make faults``: the noida-db stand-in, or a real cluster.

No Kafka server is installable from the registries this project can reach. noida-db (already
the Elasticsearch stand-in) also speaks the Kafka protocol: metadata, produce with ``acks=all``
and the idempotent producer's handshake, fetch, consumer groups with rebalancing, offset
commits and topic creation work with confluent-kafka. It is a stand-in, not Kafka: one
broker, no replication, so the figures measured on it are the client's and the pipeline's,
not a cluster's.

- :class:`NoidaKafka`: a private noida-db process serving only Kafka on a free loopback port,
  in its own data directory (kept across :meth:`~harness.brokers.Broker.kill` /
  ``start``: committed offsets and topics survive a restart, as on a real broker).
- :class:`RealKafka`: the cluster named by ``MQLOGGING_KAFKA_URL`` (``kafka://h1:9092,h2``),
  for the opt-in run; it cannot be killed.

Both offer :meth:`create_topic`, :meth:`url`, :meth:`filled_topic` and :meth:`lag` (records of a
topic a group has not committed yet), which is what the tests and the fault scenarios need.
"""

from __future__ import annotations

import json
import os

from harness.brokers import HOST, NoidaServer
from mqlogging._ids import new_id
from mqlogging._types import Message

__all__ = [
    "KAFKA_URL_ENV",
    "KafkaAdmin",
    "NoidaKafka",
    "RealKafka",
    "real_kafka",
    "stamped_message",
]

KAFKA_URL_ENV = "MQLOGGING_KAFKA_URL"


class KafkaAdmin:
    """Topic creation and lag over confluent-kafka, for a cluster at ``bootstrap``."""

    @property
    def bootstrap(self) -> str:
        """``host:port,host:port`` of the brokers."""
        raise NotImplementedError

    def url(self, topic: str, **options: str) -> str:
        """The ``kafka://`` endpoint URL of ``topic`` (with query ``options``)."""
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"kafka://{self.bootstrap}/{topic}" + (f"?{query}" if query else "")

    def create_topic(self, topic: str, partitions: int = 3, timeout: float = 15.0) -> None:
        """Create ``topic`` with ``partitions`` partitions (one replica) and wait for it."""
        from confluent_kafka.admin import AdminClient
        from confluent_kafka.cimpl import NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics([NewTopic(topic, partitions, 1)], request_timeout=timeout)
        futures[topic].result(timeout)

    def filled_topic(self, topic: str, n: int, partitions: int = 1) -> tuple[str, list[Message]]:
        """A new ``topic`` holding ``n`` records of one producer (:func:`stamped_message`,
        seqs 0..n-1); its URL and the records."""
        from mqlogging.backends import open_producer

        self.create_topic(topic, partitions=partitions)
        url = self.url(topic)
        sent = [stamped_message("h:1:a", i) for i in range(n)]
        with open_producer(url) as producer:
            producer.publish_batch(sent)
        return url, sent

    def lag(self, topic: str, group: str, timeout: float = 10.0) -> int:
        """Records of ``topic`` that ``group`` has not committed (all of them before its first
        commit). Reads offsets only: joins no group, commits nothing."""
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer(
            {"bootstrap.servers": self.bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        try:
            meta = consumer.list_topics(topic, timeout=timeout).topics[topic]
            tps = [TopicPartition(topic, p) for p in meta.partitions]
            total = 0
            for tp in consumer.committed(tps, timeout=timeout):
                low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
                total += high - (tp.offset if tp.offset >= 0 else low)
            return total
        finally:
            consumer.close()

    def ready(self, timeout: float = 2.0) -> bool:
        """True once a metadata request answers with at least one broker."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        return bool(admin.list_topics(timeout=timeout).brokers)


class NoidaKafka(KafkaAdmin, NoidaServer):
    """A private noida-db server speaking the Kafka protocol (see the module docstring)."""

    name = "noida-kafka"
    service = "kafka"

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def _ready(self) -> bool:
        return self.ready()


class RealKafka(KafkaAdmin):
    """The cluster of ``MQLOGGING_KAFKA_URL`` (``kafka://h1:9092,h2``: only the hosts are
    used). Topics the tests create are left behind; their names are unique."""

    def __init__(self, url: str) -> None:
        self._bootstrap = url.split("://", 1)[-1].split("/", 1)[0]

    @property
    def bootstrap(self) -> str:
        return self._bootstrap

    def __repr__(self) -> str:
        return f"<RealKafka {self.bootstrap}>"


def real_kafka() -> RealKafka | None:
    """:class:`RealKafka` for ``MQLOGGING_KAFKA_URL``, or ``None`` when it is not set."""
    url = os.environ.get(KAFKA_URL_ENV)
    return RealKafka(url) if url else None


def stamped_message(producer: str, seq: int) -> Message:
    """A record of ``producer`` numbered ``seq`` (ECS id, ``mqlogging`` stamp), as a message."""
    rid = new_id()
    doc = {
        "event": {"id": rid},
        "seq": seq,
        "mqlogging": {"schema": "ecs", "producer": producer, "seq": seq},
    }
    return Message(rid, json.dumps(doc).encode())
