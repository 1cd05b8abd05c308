"""A private three-node RabbitMQ cluster on loopback, for tests, faults and benchmarks.

Three :class:`ClusterNode` processes (Debian's ``rabbitmq-server``) share one ``HOME`` (hence one
Erlang cookie) and join each other at first boot through RabbitMQ's ``classic_config`` peer
discovery (the config-file equivalent of ``rabbitmqctl join_cluster``): the three boot in
parallel, node 1 (the seed) standalone, nodes 2 and 3 retrying discovery until the seed answers,
then joining it. If discovery left a node on its own (it should not, but it is cheap to check),
:meth:`RabbitMQCluster.start` clusters it with ``rabbitmqctl stop_app / join_cluster /
start_app``. Measured on the 2-core machine: 19-26 s from nothing to three running members
(a node alone boots in 7-12 s; the three compete for the two cores).

Each node is lean, because three Erlang VMs share a 2-core machine with the rest of the suite:
one scheduler (``+S 1:1``), no scheduler busy-waiting (``+sbwt none``), few async threads, and
no plugin (AMQP only; pass ``stomp=True`` for the STOMP plugin).

Guarantees (as :mod:`harness.brokers`): ``start()`` returns once every node serves AMQP and the
cluster has three running members; ``kill(i)`` / ``stop(i)`` / ``restart(i)`` act on one node and
keep its name, ports and data, so a restarted node rejoins the cluster with its replicas;
``close()`` kills all three and deletes their data. Processes never outlive their starter.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Collection
from pathlib import Path
from types import TracebackType
from typing import Any

from harness.brokers import HOST, RabbitMQ
from mqlogging.backends import open_consumer

__all__ = ["ClusterNode", "RabbitMQCluster", "drain_cluster"]

# One scheduler, no busy-waiting, small async pool: 3 VMs on 2 cores stay responsive.
_LEAN_ERL_ARGS = "+S 1:1 +sbwt none +sbwtdcpu none +sbwtdio none +A 4"


class ClusterNode(RabbitMQ):
    """One member of a :class:`RabbitMQCluster`: a :class:`RabbitMQ` node with a shared home,
    a fixed node name, the cluster's peer list and (by default) no plugins."""

    name = "rabbitmq-node"

    def __init__(
        self,
        base_dir: Path,
        *,
        nodename: str,
        home: Path,
        peers: list[str],
        stomp: bool = False,
        management: bool = False,
    ) -> None:
        self.home = home
        self.peers = peers
        self.stomp = stomp
        super().__init__(
            base_dir, extra_erl_args=_LEAN_ERL_ARGS, management_port=0 if management else None
        )
        self.nodename = nodename

    def _prepare(self) -> None:
        super()._prepare()
        conf = self.dir / "conf"
        plugins = ["rabbitmq_stomp"] if self.stomp else []
        if self.management_port:
            plugins.append("rabbitmq_management")
        (conf / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
        lines = ["disk_free_limit.absolute = 1MB", "log.file.level = warning"]
        if self.peers:
            lines += [
                "cluster_formation.peer_discovery_backend = classic_config",
                # Keep asking while the seed is still booting (they start at the same time).
                "cluster_formation.discovery_retry_limit = 240",
                "cluster_formation.discovery_retry_interval = 250",
                *(f"cluster_formation.classic_config.nodes.{i} = {n}"
                  for i, n in enumerate(self.peers, 1)),
            ]  # fmt: skip
        (conf / "rabbitmq.conf").write_text("\n".join(lines) + "\n")

    def _env(self) -> dict[str, str]:
        env = super()._env()
        env["HOME"] = str(self.home)
        return env

    def _ready(self) -> bool:
        if self.stomp:
            return super()._ready()  # AMQP and a STOMP handshake
        with self.amqp_channel():
            pass
        if self.management_port:
            with socket.create_connection((HOST, self.management_port), timeout=0.5):
                pass
        return True

    def amqp_host(self) -> str:
        """``host:port`` of this node's AMQP listener."""
        return f"{HOST}:{self.amqp_port}"


class RabbitMQCluster:
    """Three :class:`ClusterNode` members clustered at first boot; see the module docstring.

    Attributes:
        nodes: the members, in peer-list order (node 1 is the discovery seed).
        last_start_seconds: wall time of the last :meth:`start` (boot and clustering).
    """

    def __init__(self, size: int = 3, *, stomp: bool = False, management: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mqlt-cluster-"))
        (self.dir / ".mqlt-owner").write_text(f"{os.getpid()}\n")
        home = self.dir / "home"
        home.mkdir()
        cookie = home / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o600)
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        names = [f"mqlc{i}-{tag}@localhost" for i in range(1, size + 1)]
        self.nodes = [
            # The seed boots standalone at once; the others discover it and join it.
            ClusterNode(
                self.dir / f"n{i}",
                nodename=name,
                home=home,
                peers=names[:1] if i > 1 else [],
                stomp=stomp,
                management=management and i == 1,
            )
            for i, name in enumerate(names, 1)
        ]
        self.last_start_seconds: float | None = None

    # -- URLs -----------------------------------------------------------------------------------

    def amqp_url(self, path: str = "/", *, order: list[int] | None = None) -> str:
        """A multi-host URL naming every node (``amqp://guest:guest@h1,h2,h3/PATH``)."""
        picked = [self.nodes[i] for i in order] if order is not None else self.nodes
        hosts = ",".join(node.amqp_host() for node in picked)
        return f"amqp://guest:guest@{hosts}{path}"

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Boot the stopped nodes (seed first if it is down) and wait for a full cluster."""
        began = time.monotonic()
        _in_parallel([node.start for node in self.nodes if not node.is_running()])
        self._ensure_clustered()
        self.last_start_seconds = time.monotonic() - began

    def _ensure_clustered(self) -> None:
        """Join any node that discovery left alone (``join_cluster``), then wait for all."""
        seed = self.nodes[0]
        names = {node.nodename for node in self.nodes}
        running = set(self.running_members(seed))
        for node in self.nodes[1:]:
            if node.nodename in running:
                continue
            for args in (("stop_app",), ("join_cluster", seed.nodename), ("start_app",)):
                result = node.rabbitmqctl(*args)
                if result.returncode != 0:
                    msg = f"{node.nodename}: rabbitmqctl {' '.join(args)}: {result.stderr}"
                    raise RuntimeError(msg)
        if not running >= names and not _poll(
            lambda: set(self.running_members(seed)) >= names, 60.0
        ):
            msg = f"cluster not formed: {self.running_members(seed)} running, wanted {names}"
            raise RuntimeError(msg)

    def running_members(self, node: ClusterNode) -> list[str]:
        """Node names ``node`` sees running in its cluster (``[]`` if it cannot be asked)."""
        result = node.rabbitmqctl("cluster_status", "--formatter", "json")
        if result.returncode != 0:
            return []
        with contextlib.suppress(ValueError):
            return [str(name) for name in json.loads(result.stdout).get("running_nodes", [])]
        return []

    def kill(self, index: int) -> None:
        """SIGKILL node ``index`` (a crash)."""
        self.nodes[index].kill()

    def stop(self, index: int) -> None:
        """Stop node ``index`` gracefully (SIGTERM)."""
        self.nodes[index].stop()

    def restart(self, index: int) -> None:
        """Start node ``index`` again (same name, ports and data) and wait until it serves."""
        self.nodes[index].start()

    def ensure_running(self) -> None:
        """Start every node that a test left down, so the next test gets a full cluster."""
        if not all(node.is_running() for node in self.nodes):
            self.start()

    def close(self) -> None:
        """Kill every node and delete the cluster's directory. Idempotent."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kill()  # its data goes next: a graceful stop would only cost seconds
            with contextlib.suppress(Exception):
                node.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RabbitMQCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- queues ---------------------------------------------------------------------------------

    def leader(self, queue: str, vhost: str = "/") -> int:
        """Index of the node leading quorum queue ``queue`` (asked of a running node)."""
        for node in self.nodes:
            if not node.is_running():
                continue
            result = node.rabbitmqctl(
                "list_queues", "-p", vhost, "name", "leader", "--formatter", "json"
            )
            if result.returncode != 0:
                continue
            for row in json.loads(result.stdout or "[]"):
                if row.get("name") == queue:
                    return self.index_of(str(row.get("leader")))
        msg = f"no running node knows the leader of queue {queue!r}"
        raise LookupError(msg)

    def index_of(self, nodename: str) -> int:
        """Index of the node called ``nodename``."""
        for i, node in enumerate(self.nodes):
            if node.nodename == nodename:
                return i
        msg = f"{nodename!r} is not a member of this cluster"
        raise LookupError(msg)

    def queue_depth(self, queue: str) -> int:
        """Ready messages in ``queue``, asked of the first running node."""
        node = next(n for n in self.nodes if n.is_running())
        return node.queue_depth(queue)

    def channel(self) -> Any:
        """A pika channel context on the first running node (see ``RabbitMQ.amqp_channel``)."""
        node = next(n for n in self.nodes if n.is_running())
        return node.amqp_channel()


def _in_parallel(calls: list[Callable[[], None]]) -> None:
    """Run ``calls`` in threads and re-raise the first error (each node has its own thread)."""
    errors: list[BaseException] = []

    def run(call: Callable[[], None]) -> None:
        try:
            call()
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _poll(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def drain_cluster(
    url: str, expected: Collection[int], timeout: float = 60.0, idle: float = 0.5
) -> list[dict[str, Any]]:
    """Consume the queue of ``url`` (a multi-host AMQP URL) through mqlogging's own consumer
    until every ``seq`` in ``expected`` arrived, then until nothing arrives for ``idle``
    seconds (so duplicates are caught). Returns the documents in arrival order.

    Raises:
        AssertionError: ``expected`` was not met within ``timeout`` seconds.
    """
    wanted = set(expected)
    docs: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    with open_consumer(url) as consumer:
        while wanted:
            if time.monotonic() > deadline:
                msg = f"{len(wanted)} of {len(expected)} records missing after {timeout:g}s"
                raise AssertionError(msg)
            batch = consumer.fetch(1000, 0.2)
            docs.extend(json.loads(d.body) for d in batch)
            consumer.ack(batch)
            wanted.difference_update(
                int(d["seq"]) for d in docs[len(docs) - len(batch) :] if "seq" in d
            )
        while batch := consumer.fetch(1000, idle):
            docs.extend(json.loads(d.body) for d in batch)
            consumer.ack(batch)
    return docs
