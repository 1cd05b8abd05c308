"""The pipeline behind MQHandler, through its interface: its one state, offer / flush / close /
reset_after_fork, the recursion-guard counter; and that the handler uses nothing else of it.

The endpoint is the ``local`` transport (a spool directory as the queue: real files, confirmed
once written), or a closed port where a broker must be unreachable.
"""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import pytest

from harness.helpers import free_port, wait_until
from mqlogging._types import Message
from mqlogging.handlers import _handler
from mqlogging.handlers._complain import Complainer
from mqlogging.handlers._config import HandlerConfig
from mqlogging.handlers._sender import Pipeline
from mqlogging.handlers._state import State


def _pipeline(tmp_path: Path, url: str | None = None, **options: object) -> Pipeline:
    url = url or f"local://{tmp_path / 'queue'}"
    config = HandlerConfig.from_options(url, spool=str(tmp_path / "spool"), **options)
    return Pipeline(config, Complainer(), None)


def _messages(n: int, start: int = 0) -> list[Message]:
    return [Message(f"id-{i}", b'{"n": %d}' % i) for i in range(start, start + n)]


class TestState:
    """The transition table of :class:`State` (pure values, no pipeline)."""

    def test_memory_path(self) -> None:
        """IDLE starts into MEMORY, closes through CLOSING into CLOSED."""
        state = State.IDLE.started()
        assert state is State.MEMORY
        assert state.closing_began() is State.CLOSING
        assert state.closing_began().closed() is State.CLOSED

    def test_write_ahead_path(self) -> None:
        """Write-ahead is chosen before the start and kept through closing; a failing spool
        degrades each write-ahead state to its memory twin."""
        state = State.IDLE.to_write_ahead()
        assert state is State.IDLE_WRITE_AHEAD
        assert state.started() is State.WRITE_AHEAD
        assert State.WRITE_AHEAD.closing_began() is State.CLOSING_WRITE_AHEAD
        assert State.WRITE_AHEAD.degraded() is State.MEMORY
        assert State.CLOSING_WRITE_AHEAD.degraded() is State.CLOSING
        assert all(s.write_ahead == ("write-ahead" in s.value) for s in State)

    @pytest.mark.parametrize("state", list(State))
    def test_events_that_do_not_apply_leave_the_state(self, state: State) -> None:
        """No event moves a state anywhere but the diagram says (so callers need no guard):
        only an idle state starts, only IDLE turns to write-ahead, CLOSED stays CLOSED."""
        if not state.idle:
            assert state.started() is state
        if state is not State.IDLE:
            assert state.to_write_ahead() is state
        if not state.write_ahead:
            assert state.degraded() is state
        if state.closing:
            assert state.closing_began() is state
        assert State.CLOSED.started() is State.CLOSED


class TestPipeline:
    def test_lifecycle_idle_memory_closed(self, tmp_path: Path) -> None:
        """The first offer starts the sender (IDLE -> MEMORY), flush waits for confirmation,
        close ends in CLOSED, and an offer after close goes to the spool, counted."""
        pipe = _pipeline(tmp_path)
        assert pipe.state is State.IDLE
        for message in _messages(300):
            pipe.offer(message)
        assert pipe.state is State.MEMORY
        assert pipe.flush(10)
        assert pipe.stats()["confirmed"] == 300
        pipe.close(5)
        assert pipe.state is State.CLOSED
        pipe.close(5)  # idempotent
        pipe.offer(_messages(1, 300)[0])
        assert pipe.stats()["spooled"] == 1
        assert pipe.flush(5) is True  # closed: returns at once, nothing left in memory

    def test_durability_spool_writes_ahead(self, tmp_path: Path) -> None:
        """durability='spool' starts in IDLE_WRITE_AHEAD: every offer is in the spool when it
        returns, and the sender ships it from there."""
        pipe = _pipeline(tmp_path, durability="spool")
        assert pipe.state is State.IDLE_WRITE_AHEAD
        for message in _messages(50):
            pipe.offer(message)
        assert pipe.state is State.WRITE_AHEAD
        assert pipe.stats()["spooled"] == 50
        assert pipe.flush(10)
        assert pipe.stats()["replayed"] == 50
        pipe.close(5)

    def test_write_ahead_in_child_only_before_start(self, tmp_path: Path) -> None:
        """A pool child switches to write-ahead before its first record; a running pipeline
        keeps its mode."""
        pipe = _pipeline(tmp_path)
        pipe.write_ahead_in_child()
        assert pipe.state is State.IDLE_WRITE_AHEAD
        pipe.close(1)
        running = _pipeline(tmp_path / "b")
        running.offer(_messages(1)[0])
        running.write_ahead_in_child()
        assert running.state is State.MEMORY
        running.close(5)

    def test_reset_after_fork(self, tmp_path: Path) -> None:
        """The child's pipeline is new (empty queue, no thread), keeps the parent's referenced,
        and is closed when the parent's was."""
        pipe = _pipeline(tmp_path)
        pipe.offer(_messages(1)[0])
        child = pipe.reset_after_fork()
        assert child is not pipe
        assert child.inherited is pipe
        assert child.state is State.IDLE
        assert not child.queue
        pipe.close(5)
        closed_child = pipe.reset_after_fork()
        assert closed_child.state is State.CLOSED
        closed_child.offer(_messages(1, 1)[0])
        assert closed_child.stats()["spooled"] == 1

    def test_offers_during_close_are_not_lost(self, tmp_path: Path) -> None:
        """Callers offering while close() drains the queue: each record ends confirmed or in
        the spool (the fast path's second state check), none stays behind in memory."""
        url = f"amqp://guest:guest@127.0.0.1:{free_port()}/?exchange=&queue=q"  # refused
        pipe = _pipeline(tmp_path, url, retry_max=0.05)
        pipe.offer(_messages(1)[0])
        stop = threading.Event()
        offered = [1]

        def offer_until_closed() -> None:
            n = 1
            while not stop.is_set():
                pipe.offer(_messages(1, n)[0])
                n += 1
            offered.append(n - 1)

        threads = [threading.Thread(target=offer_until_closed) for _ in range(3)]
        for thread in threads:
            thread.start()
        wait_until(lambda: pipe.stats()["spooled"] > 100)
        pipe.close(0.5)
        stop.set()
        for thread in threads:
            thread.join()
        stats = pipe.stats()
        assert not pipe.queue
        assert stats["confirmed"] == 0
        assert stats["spooled"] + sum(stats["dropped"].values()) >= sum(offered[1:]) + 1

    def test_ignore_counts_under_concurrency(self, tmp_path: Path) -> None:
        """ignore() from many threads loses no count (it used to be ``+= 1`` from the
        handler, without a lock)."""
        pipe = _pipeline(tmp_path)

        def ignore_many() -> None:
            for _ in range(20_000):
                pipe.ignore()

        threads = [threading.Thread(target=ignore_many) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert pipe.stats()["ignored"] == 80_000
        pipe.close(1)


def test_handler_uses_only_the_pipeline_interface() -> None:
    """MQHandler reads or calls only the pipeline's interface, and assigns nothing on it."""
    interface = {
        "offer", "flush", "close", "finish", "reset_after_fork", "write_ahead_in_child",
        "start_if_spooled", "sender_ident", "ignore", "drop_unmade", "stats",
    }  # fmt: skip
    tree = ast.parse(Path(_handler.__file__).read_text())
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and getattr(node.value, "attr", None) == "_pipe":
            used.add(node.attr)
            assert not isinstance(node.ctx, ast.Store), f"handler assigns pipe.{node.attr}"
        if isinstance(node, ast.Assign) and getattr(node.value, "attr", None) == "_pipe":
            raise AssertionError("the handler keeps no alias of its pipeline (checked above)")
        if isinstance(node, ast.ImportFrom) and node.module:
            assert all(not a.name.startswith("_") for a in node.names), ast.dump(node)
    assert used <= interface, used - interface
