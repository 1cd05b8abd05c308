"""The handler against a real three-node RabbitMQ cluster with a quorum queue (issue #14).

The cluster (``rabbitmq_cluster`` fixture, :mod:`harness.cluster`) boots once per session and
only when one of these tests runs. The handler gets a multi-host URL listing the queue's leader
first, as a client that happened to connect to the leader would; the leader is then killed -9
in the middle of the stream. Publishes during the election are nacked, and the producer used to
keep that channel, which nacked every retry for many seconds while records piled up in the spool.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import pytest

from harness.cluster import RabbitMQCluster, drain_cluster
from harness.drain import seqs
from harness.helpers import wait_until
from mqlogging._types import Message
from mqlogging.backends import open_consumer, open_producer
from mqlogging.backends.amqp import AMQPEndpoint
from mqlogging.cli import main as cli_main
from mqlogging.errors import ConfigurationError
from mqlogging.handlers import MQHandler
from mqlogging.rabbitmq_setup import DEFAULT_DELIVERY_LIMIT, add_arguments, topology_from_args

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
def test_poison_message_dead_lettered_after_delivery_limit(
    rabbitmq_cluster: RabbitMQCluster, queue_name: str
) -> None:
    """The recommended topology on the cluster: a quorum queue declared by the endpoint with
    ``dead_letter_exchange`` and ``delivery_limit`` hands a message that keeps coming back
    (every consumer gives it back unacked) to the dead-letter queue after the limit."""
    dlx, dlq = f"{queue_name}.dlx", f"{queue_name}.dead"
    with rabbitmq_cluster.channel() as channel:
        channel.exchange_declare(dlx, exchange_type="fanout", durable=True)
        channel.queue_declare(dlq, durable=True, arguments={"x-queue-type": "quorum"})
        channel.queue_bind(dlq, dlx)
    url = rabbitmq_cluster.amqp_url(
        f"/?exchange=&queue={queue_name}&queue_type=quorum&dead_letter_exchange={dlx}"
        "&delivery_limit=2"
    )
    with open_producer(url) as producer:
        producer.publish_batch([Message(id="poison-1", body=b'{"seq": 0}')])
    with open_consumer(url) as consumer:
        for _ in range(3):  # delivered 3 times: over the limit of 2
            deliveries = wait_until(lambda: consumer.fetch(10, 0.2), timeout=10.0)
            consumer.nack(deliveries, requeue=True)
        dead = drain_cluster(
            rabbitmq_cluster.amqp_url(f"/?exchange=&queue={dlq}&queue_type=quorum"), [0]
        )
        assert [d["seq"] for d in dead] == [0]
        assert consumer.fetch(10, 0.5) == []


def test_delivery_limit_needs_a_quorum_queue() -> None:
    """``delivery_limit`` on a classic queue is refused in one line (classic queues do not
    count deliveries, so the limit would silently do nothing), and so is one without a
    dead-letter exchange (the broker would drop the message past the limit, uncounted)."""
    with pytest.raises(ConfigurationError, match="delivery_limit needs queue_type=quorum"):
        AMQPEndpoint.from_url("amqp://h1,h2/?queue=logs&delivery_limit=5")
    quorum = "amqp://h1/?queue=logs&queue_type=quorum"
    with pytest.raises(ConfigurationError, match="delivery_limit"):
        AMQPEndpoint.from_url(f"{quorum}&dead_letter_exchange=dlx&delivery_limit=0")
    with pytest.raises(ConfigurationError, match="give dead_letter_exchange=NAME too"):
        AMQPEndpoint.from_url(f"{quorum}&delivery_limit=5")
    endpoint = AMQPEndpoint.from_url(f"{quorum}&dead_letter_exchange=dlx&delivery_limit=5")
    assert endpoint.queue_arguments() == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "dlx",
        "x-delivery-limit": 5,
    }


def test_setup_gives_quorum_queues_a_delivery_limit_by_default() -> None:
    """``mqlogging rabbitmq setup --queue-type quorum`` declares the queue with the default
    delivery limit and the dead-letter exchange; ``--delivery-limit 0`` declares none."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--url", "http://admin@h:15672", "--queue-type", "quorum"]
    topology = topology_from_args(parser.parse_args(base))
    assert topology.queue_arguments() == {
        "x-dead-letter-exchange": "logs.dlx",
        "x-queue-type": "quorum",
        "x-delivery-limit": DEFAULT_DELIVERY_LIMIT,
    }
    unlimited = topology_from_args(parser.parse_args([*base, "--delivery-limit", "0"]))
    assert "x-delivery-limit" not in unlimited.queue_arguments()
    classic = topology_from_args(parser.parse_args(["--url", "http://admin@h:15672"]))
    assert "x-delivery-limit" not in classic.queue_arguments()


# The two leader kills come last: each leaves a node down, restarted (~10 s) by the next
# test that asks for the cluster.


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


@pytest.mark.slow
def test_rabbitmq_setup_makes_the_recommended_topology_on_a_cluster(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``mqlogging rabbitmq setup --queue-type quorum`` through one node's management API
    makes a quorum queue with a member on every node, its delivery limit and dead-letter
    exchange; a producer with ``declare=false`` publishes through another node, and a message
    every consumer gives back ends in the dead-letter queue once the limit is reached.

    Slow: a cluster of its own, with the management plugin on node 1 (~30 s)."""
    queue, exchange = "clogs", "clogs.x"
    with RabbitMQCluster(management=True) as cluster:
        monkeypatch.setenv("MQLT_ADMIN_PASSWORD", "guest")
        port = cluster.nodes[0].management_port
        code = cli_main([
            "rabbitmq", "setup", "--url", f"http://guest@127.0.0.1:{port}",
            "--admin-password-env", "MQLT_ADMIN_PASSWORD", "--queue-type", "quorum",
            "--exchange", exchange, "--queue", queue, "--delivery-limit", "2",
        ])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        with cluster.nodes[1].amqp_channel() as channel:  # declared through node 1, seen on 2
            info = channel.queue_declare(queue, passive=True)
            assert info.method.message_count == 0
        result = cluster.nodes[2].rabbitmqctl(
            "list_queues", "name", "type", "arguments", "members", "--formatter", "json"
        )
        row = next(r for r in json.loads(result.stdout) if r["name"] == queue)
        assert row["type"] == "quorum"
        assert len(row["members"]) == 3
        producer_url = cluster.amqp_url(
            f"/?exchange={exchange}&routing_key=app.logs&declare=false", order=[1, 2, 0]
        )
        with open_producer(producer_url) as producer:
            producer.publish_batch([Message(id="poison-2", body=b'{"seq": 7}')])
        consumer_url = cluster.amqp_url(f"/?exchange={exchange}&queue={queue}&declare=false")
        with open_consumer(consumer_url) as consumer:
            for _ in range(3):
                deliveries = wait_until(lambda: consumer.fetch(10, 0.2), timeout=10.0)
                consumer.nack(deliveries, requeue=True)
        dead_url = cluster.amqp_url(f"/?exchange=&queue={queue}.dead&declare=false")
        assert [d["seq"] for d in drain_cluster(dead_url, [7])] == [7]
