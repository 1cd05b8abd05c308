"""The package's one fork registry (``mqlogging._fork``) and what objects do with it.

Every test forks a real child with :func:`os.fork` and reads what the child reports through a
pipe; the child always ends with ``os._exit`` so no test machinery runs twice.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable

import pytest

from harness.brokers import RabbitMQ
from mqlogging import _fork
from mqlogging._ids import new_id
from mqlogging._types import Message
from mqlogging.backends.amqp import AMQPProducer

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")


def _in_child(body: Callable[[], object]) -> object:
    """Run ``body`` in a forked child and return what it returned (JSON), or raise its error."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            out = {"ok": body()}
        except BaseException as exc:  # report everything: the parent asserts on it
            out = {"error": repr(exc)}
        with os.fdopen(write_fd, "w") as pipe:
            json.dump(out, pipe)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    result = json.loads(text)
    assert "error" not in result, result["error"]
    return result["ok"]


class _Recorder:
    """Appends its name to a shared list when reset (or raises, when told to)."""

    def __init__(self, name: str, log: list[str], *, broken: bool = False) -> None:
        self.name = name
        self.log = log
        self.broken = broken

    def after_fork_in_child(self) -> None:
        if self.broken:
            msg = f"{self.name} cannot reset"
            raise RuntimeError(msg)
        self.log.append(self.name)


class TestRegistry:
    def test_children_reset_objects_in_registration_order(self) -> None:
        """Every registered object is reset once in the child, in the order registered (a
        spool or connection built before the handler using it is reset first); registering
        again keeps the first place; the parent's objects are not touched."""
        log: list[str] = []
        first, second, third = (_Recorder(n, log) for n in ("first", "second", "third"))
        for obj in (first, second, third, first):
            _fork.register(obj)
        assert _in_child(lambda: log) == ["first", "second", "third"]
        assert log == []

    def test_a_failing_reset_does_not_stop_the_others(self) -> None:
        """An object whose reset raises is reported on stderr; the objects after it are still
        reset and the child lives on."""
        log: list[str] = []
        objs = [_Recorder("a", log), _Recorder("b", log, broken=True), _Recorder("c", log)]
        for obj in objs:
            _fork.register(obj)
        assert _in_child(lambda: log) == ["a", "c"]

    def test_registry_does_not_keep_objects_alive(self) -> None:
        """The registry holds objects weakly: one garbage-collected before the fork is gone."""
        log: list[str] = []
        kept = _Recorder("kept", log)
        _fork.register(kept)
        _fork.register(_Recorder("dropped", log))
        gc.collect()
        assert _in_child(lambda: log) == ["kept"]


def _connected_at(rabbitmq: RabbitMQ, name: str) -> list[str]:
    """``connected_at`` of every broker connection whose client-given name is ``name``."""
    result = rabbitmq.rabbitmqctl("list_connections", "client_properties", "connected_at", "-q")
    assert result.returncode == 0, result.stderr
    return [line.rsplit("\t", 1)[1] for line in result.stdout.splitlines() if name in line]


@pytest.mark.rabbitmq
def test_amqp_producer_used_in_child_never_touches_parents_connection(
    rabbitmq: RabbitMQ, queue_name: str
) -> None:
    """A producer inherited through fork() connects afresh in the child and closing it there
    leaves the parent's connection open: the parent keeps publishing on the very connection it
    had (same ``connected_at``), and every message of both processes arrives."""
    url = f"{rabbitmq.amqp_url}?exchange=&queue={queue_name}"
    producer = AMQPProducer(url)
    try:
        producer.publish_batch([Message(new_id(), b'{"who":"parent-before"}')])
        name = f"mqlogging producer pid={os.getpid()}"
        before = _connected_at(rabbitmq, name)
        assert len(before) == 1

        def child() -> bool:
            producer.publish_batch([Message(new_id(), b'{"who":"child"}')])
            producer.close()
            return True

        assert _in_child(child) is True
        producer.publish_batch([Message(new_id(), b'{"who":"parent-after"}')])
        assert _connected_at(rabbitmq, name) == before
    finally:
        producer.close()
    assert rabbitmq.queue_depth(queue_name) == 3
