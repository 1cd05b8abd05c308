"""MQHandler with a spool that fails while the broker is healthy (issue #11, defect 5).

How the spool is made to fail: the tests run as root, where ``chmod 0555`` does not stop a
write. After the handler opened its spool, the directory is replaced by a regular file, so every
segment create fails with ENOTDIR -- for root too (what a tmp cleaner removing the directory and
something else taking its name looks like). Records are counted at the RabbitMQ queue:
delivered + counted drops == emitted, exactly, and no record twice.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from harness.brokers import RabbitMQ
from harness.drain import amqp_url, drain_amqp, is_marker, seqs
from harness.helpers import wait_until
from mqlogging.handlers import MQHandler
from mqlogging.wire import read_meta


def _break(spool_dir: Path) -> None:
    """Make every write to ``spool_dir`` fail, for root too."""
    shutil.rmtree(spool_dir)
    spool_dir.write_text("not a directory\n")


def _emit(logger: logging.Logger, n: int) -> None:
    for i in range(n):
        logger.info("record %d", i, extra={"seq": i})


class TestFailingSpool:
    def test_overflow_keeps_the_queue_and_counts_exactly(
        self, rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path, app_logger: Any
    ) -> None:
        """overflow="spool" (the default) with a failing spool and a healthy broker: an
        overflow drops only the record that did not fit (counted as spool_error), never the
        queue or the batch in flight. Five bursts of 3,000 records into a 2,000-record queue,
        each once the queue is empty again: every record that got into the queue arrives (so
        at least 5 x 2,000), once, in order, and delivered + dropped == 15,000 exactly."""
        bursts, size, queue_size = 5, 3000, 2000
        handler = MQHandler(
            amqp_url(rabbitmq, queue_name), spool=str(spool_dir), queue_size=queue_size,
            batch_size=500, close_timeout=30,
        )  # fmt: skip
        _break(spool_dir)
        app_logger.addHandler(handler)
        for burst in range(bursts):
            for i in range(burst * size, (burst + 1) * size):
                app_logger.info("record %d", i, extra={"seq": i})
            wait_until(lambda: handler.stats()["queued"] == 0, timeout=60, message="queue")
        assert handler.flush(60)
        stats = handler.stats()
        dropped = stats["dropped"]
        assert set(dropped) <= {"spool_error"}
        delivered = drain_amqp(rabbitmq, queue_name, bursts * size - sum(dropped.values()))
        got = seqs(delivered)
        assert len(got) == len(set(got))  # none twice
        assert sorted(got) == got  # emit order kept
        assert len(got) + dropped.get("spool_error", 0) == bursts * size
        markers = [d for d in delivered if is_marker(d)]
        announced = sum(r.last - r.first + 1 for d in markers for r in read_meta(d).dropped)
        assert announced == dropped.get("spool_error", 0)  # every drop named by a marker
        assert stats["confirmed"] == len(got) + len(markers)
        assert len(got) >= bursts * queue_size

    @pytest.mark.parametrize("overflow", ["spool", "drop"])
    def test_write_ahead_degrades_to_memory(
        self,
        overflow: str,
        rabbitmq: RabbitMQ,
        queue_name: str,
        spool_dir: Path,
        app_logger: Any,
        capfd: pytest.CaptureFixture[str],
    ) -> None:
        """durability="spool" with a failing spool and a healthy broker: the handler says once
        on stderr (and in stats) that it degraded to memory mode, and all 5,000 records
        arrive, in order, once each; nothing is dropped."""
        n = 5000
        handler = MQHandler(
            amqp_url(rabbitmq, queue_name), spool=str(spool_dir), durability="spool",
            overflow=overflow, close_timeout=30,
        )  # fmt: skip
        _break(spool_dir)
        app_logger.addHandler(handler)
        _emit(app_logger, n)
        assert handler.flush(60)
        stats = handler.stats()
        assert stats["spool"]["degraded"]
        assert stats["dropped"] == {}
        assert list(range(n)) == seqs(drain_amqp(rabbitmq, queue_name, n))
        err = capfd.readouterr().err
        assert err.count("degraded to memory mode") == 1, err
