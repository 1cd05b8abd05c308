"""The handler against a real three-node RabbitMQ cluster with a quorum queue (issue #14).

The cluster (``rabbitmq_cluster`` fixture, :mod:`harness.cluster`) boots once per session and
only when one of these tests runs. The handler gets a multi-host URL listing the queue's leader
first, as a client that happened to connect to the leader would; the leader is then killed -9
in the middle of the stream. Publishes during the election are nacked, and the producer used to
keep that channel, which nacked every retry for many seconds while records piled up in the spool.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from harness.cluster import RabbitMQCluster, drain_cluster
from harness.drain import seqs
from mqlogging.handlers import MQHandler

RECORDS = 3000
RATE = 1000.0  # records/s: the sender is publishing (not spooling) when the leader dies


def _quorum_queue(cluster: RabbitMQCluster, queue: str) -> tuple[str, int, list[int]]:
    """Declare ``queue`` (quorum); return its URL path, its leader and the other nodes."""
    with cluster.channel() as channel:
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    leader = cluster.leader(queue)
    others = [i for i in range(len(cluster.nodes)) if i != leader]
    return f"/?exchange=&queue={queue}&queue_type=quorum", leader, others


def _logger(name: str, handler: MQHandler) -> logging.Logger:
    log = logging.getLogger(f"cluster-test.{name}")
    log.propagate = False
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    return log


def _emit_killing_leader(log: logging.Logger, cluster: RabbitMQCluster, leader: int) -> None:
    """Log ``RECORDS`` records at about ``RATE``/s; kill -9 the leader at 40 %.

    The pacing only shapes the load (a service logging steadily); nothing waits on it.
    """
    began = time.monotonic()
    for i in range(RECORDS):
        if i == RECORDS * 2 // 5:
            cluster.kill(leader)
        log.info("record %d", i, extra={"seq": i})
        ahead = i / RATE - (time.monotonic() - began)
        if ahead > 0.005:
            time.sleep(ahead)


@pytest.mark.rabbitmq_cluster
def test_leader_killed_mid_stream_everything_delivered_nothing_stranded(
    rabbitmq_cluster: RabbitMQCluster, queue_name: str, tmp_path: Path
) -> None:
    """Killing the quorum queue's leader -9 mid-stream: the handler reconnects after the
    nacks of the election instead of retrying on the nacking channel, so ``flush()``
    succeeds, the spool ends empty and every record is in the queue."""
    path, leader, others = _quorum_queue(rabbitmq_cluster, queue_name)
    url = rabbitmq_cluster.amqp_url(path, order=[leader, *others])
    handler = MQHandler(url, spool=tmp_path / "spool")
    try:
        _emit_killing_leader(_logger(queue_name, handler), rabbitmq_cluster, leader)
        assert handler.flush(30.0), handler.stats()
        assert handler.stats()["spool"]["records"] == 0
    finally:
        handler.close()
    docs = drain_cluster(rabbitmq_cluster.amqp_url(path, order=others), range(RECORDS))
    assert set(seqs(docs)) == set(range(RECORDS))


@pytest.mark.rabbitmq_cluster
def test_close_right_after_leader_kill_delivers_within_close_timeout(
    rabbitmq_cluster: RabbitMQCluster, queue_name: str, tmp_path: Path
) -> None:
    """``close()`` called while the endpoint is backing off after the leader kill keeps
    retrying (on fresh connections) until ``close_timeout`` as documented, instead of giving
    up at once: it returns well before the timeout with every record delivered."""
    path, leader, others = _quorum_queue(rabbitmq_cluster, queue_name)
    url = rabbitmq_cluster.amqp_url(path, order=[leader, *others])
    handler = MQHandler(url, spool=tmp_path / "spool", close_timeout=30.0)
    _emit_killing_leader(_logger(queue_name, handler), rabbitmq_cluster, leader)
    began = time.monotonic()
    handler.close()
    took = time.monotonic() - began
    stats = handler.stats()
    assert stats["spool"]["records"] == 0, stats
    assert took < 25.0
    docs = drain_cluster(rabbitmq_cluster.amqp_url(path, order=others), range(RECORDS))
    assert set(seqs(docs)) == set(range(RECORDS))
