"""MQHandler behaviour that needs no working broker: overflow policies, ordering in the spool,
recursion guard, stats, close/flush semantics. The endpoint is a closed port (refused at once)
or a black hole (accepts, never answers)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from harness.helpers import BlackholeServer, free_port
from mqlogging.cli.spool import export_spool, inspect_spool
from mqlogging.handlers import MQHandler

STATS_KEYS = {"queued", "sent", "confirmed", "spooled", "replayed", "dropped", "markers",
              "ignored", "format_errors", "endpoints", "spool"}  # fmt: skip


def _refused() -> str:
    return f"amqp://guest:guest@127.0.0.1:{free_port()}/?exchange=&queue=q"


def _spooled_seqs(spool: Path) -> list[int]:
    class Sink:
        def __init__(self) -> None:
            self.lines: list[bytes] = []

        def write(self, data: bytes) -> int:
            self.lines.append(data)
            return len(data)

    sink = Sink()
    export_spool(str(spool), sink)  # type: ignore[arg-type]
    docs = [json.loads(line) for line in sink.lines]
    # Drop markers (mqlogging.wire) are the handler's own records: not the test's.
    return [d["seq"] for d in docs if "dropped" not in d["mqlogging"]]


def _emit(logger: logging.Logger, n: int) -> None:
    for i in range(n):
        logger.info("record %d", i, extra={"seq": i})


class TestOverflow:
    def test_spool_overflow_keeps_emit_order(self, spool_dir: Path, app_logger: Any) -> None:
        """With no reachable broker and a tiny queue, records spill to the spool from the
        caller and from the sender; the spool holds every record exactly once, in emit order."""
        handler = MQHandler(_refused(), spool=str(spool_dir), queue_size=50, batch_size=20,
                            retry_max=0.05, close_timeout=1)  # fmt: skip
        app_logger.addHandler(handler)
        _emit(app_logger, 5000)
        handler.close()
        assert list(range(5000)) == _spooled_seqs(spool_dir)
        stats = handler.stats()
        assert stats["dropped"] == {}
        assert stats["confirmed"] == 0

    def test_drop_overflow_is_counted(self, spool_dir: Path, app_logger: Any) -> None:
        """overflow=drop with a black-holed broker: the queue never exceeds queue_size, the
        newest records are dropped and counted; dropped + spooled at close == emitted."""
        with BlackholeServer() as hole:
            url = f"amqp://127.0.0.1:{hole.port}/?exchange=&queue=q"
            handler = MQHandler(url, spool=str(spool_dir), queue_size=100, batch_size=10,
                                overflow="drop", close_timeout=0.5)  # fmt: skip
            app_logger.addHandler(handler)
            _emit(app_logger, 1000)
            stats = handler.stats()
            assert stats["queued"] <= 100
            dropped = stats["dropped"]["overflow"]
            assert dropped >= 1000 - 100 - 10
            handler.close()
        kept = _spooled_seqs(spool_dir)
        assert len(kept) + dropped == 1000
        assert kept == sorted(kept)

    def test_block_overflow_waits_then_drops(self, spool_dir: Path, app_logger: Any) -> None:
        """overflow=block with a black-holed broker: a caller waits at most block_timeout for
        room, then the record is dropped and counted; nothing else is lost."""
        with BlackholeServer() as hole:
            url = f"amqp://127.0.0.1:{hole.port}/?exchange=&queue=q"
            handler = MQHandler(url, spool=str(spool_dir), queue_size=20, batch_size=5,
                                overflow="block", block_timeout=0.01, close_timeout=0.5)  # fmt: skip
            app_logger.addHandler(handler)
            _emit(app_logger, 100)
            dropped = handler.stats()["dropped"]["overflow"]
            handler.close()
        kept = _spooled_seqs(spool_dir)
        assert dropped > 0
        assert len(kept) + dropped == 100


class TestGuards:
    @pytest.mark.parametrize("name", ["mqlogging", "mqlogging.handlers", "pika.connection",
                                      "stomp", "stomp.transport"])  # fmt: skip
    def test_own_and_client_library_records_are_ignored(self, name: str, spool_dir: Path) -> None:
        """Records of mqlogging's loggers and of every registered transport's client library
        (``Transport.loggers``: pika, stomp.py...) never enter the handler, whatever its own
        transport (they could loop, also between two handlers); they are counted as ignored."""
        handler = MQHandler(_refused(), spool=str(spool_dir))
        logger = logging.getLogger(name)
        old = logger.propagate
        logger.propagate = False
        logger.addHandler(handler)
        try:
            logger.warning("connection trouble")
            stats = handler.stats()
            assert (stats["ignored"], stats["queued"], stats["spooled"]) == (1, 0, 0)
        finally:
            logger.removeHandler(handler)
            logger.propagate = old
            handler.close()

    def test_stats_names_are_stable(self, spool_dir: Path) -> None:
        """stats() has the documented keys, per-endpoint health and spool size."""
        handler = MQHandler(_refused(), spool=str(spool_dir))
        try:
            stats = handler.stats()
            assert set(stats) == STATS_KEYS
            (endpoint,) = stats["endpoints"].values()
            assert {"healthy", "last_error", "sent", "confirmed", "failures"} <= set(endpoint)
            assert {"bytes", "records"} <= set(stats["spool"])
        finally:
            handler.close()


class TestLifecycle:
    def test_close_is_idempotent_and_later_records_are_spooled(
        self, spool_dir: Path, app_logger: Any
    ) -> None:
        """close() twice is fine; a record emitted after close() is written to the spool
        (delivered by the next run), after everything emitted before, in order."""
        handler = MQHandler(_refused(), spool=str(spool_dir), retry_max=0.05, close_timeout=1)
        app_logger.addHandler(handler)
        _emit(app_logger, 10)
        handler.close()
        handler.close()
        app_logger.info("late", extra={"seq": 10})
        assert list(range(11)) == _spooled_seqs(spool_dir)

    def test_flush_without_records_returns_at_once(self, spool_dir: Path) -> None:
        """flush() on a handler that never sent anything returns True (nothing pending)."""
        handler = MQHandler(_refused(), spool=str(spool_dir))
        try:
            assert handler.flush(1)
        finally:
            handler.close()

    def test_records_left_by_an_earlier_run_are_counted(self, spool_dir: Path) -> None:
        """A spool written by an earlier run shows in stats() of the next handler."""
        url = _refused()
        first = MQHandler(url, spool=str(spool_dir), retry_max=0.05, close_timeout=1)
        logger = logging.getLogger("earlier.run")
        logger.setLevel(logging.INFO)
        logger.propagate = False
        logger.addHandler(first)
        _emit(logger, 7)
        logger.removeHandler(first)
        first.close()
        # same destination (see DESTINATION); still refused: close() cannot wait long
        second = MQHandler(url, spool=str(spool_dir), close_timeout=1)
        try:
            assert second.stats()["spool"]["records"] == 7
            assert inspect_spool(str(spool_dir)).records == 7
        finally:
            second.close()
