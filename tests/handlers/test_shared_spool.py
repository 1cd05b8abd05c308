"""Handlers sharing one spool directory (issue #11): per-producer emit order survives an outage
replayed by several readers at once (defect 3), and a directory serves one destination only
(defect 6). Counted end to end at the queue."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

from mqlogging import MQHandler
from mqlogging.handlers._replay import inspect_spool
from tests.brokers import RabbitMQ
from tests.handlers.conftest import amqp_url, drain_amqp, record_id, seqs
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _logger(name: str, handler: MQHandler) -> logging.Logger:
    logger = logging.getLogger(f"tests.handlers.shared.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    return logger


def _inversions(got: list[int]) -> int:
    return sum(1 for a, b in itertools.pairwise(got) if b < a)


def test_shared_spool_keeps_each_producers_order_after_outage(
    rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path
) -> None:
    """Two handlers (two producers) share a spool directory with small segments. The broker is
    down while both log 1500 records (many segments each, interleaved in the directory); it
    comes back and both keep logging while their readers replay the shared backlog at the
    same time. Every record arrives exactly once, and each producer's records arrive in emit
    order (no inversion): no reader ships a producer's newer segment while an older one is
    claimed elsewhere, and no lane goes direct while its own segments are still being
    shipped by the other reader."""
    url = amqp_url(rabbitmq, queue_name)
    options: dict[str, Any] = {
        "batch_size": 50, "retry_max": 0.3, "close_timeout": 10.0, "connect_timeout": 0.5,
        "spool_options": {"segment_bytes": 8192},
    }  # fmt: skip
    rabbitmq.sync_definitions()
    rabbitmq.stop()
    handlers = [MQHandler(url, spool=str(spool_dir), **options) for _ in range(2)]
    loggers = [_logger(f"p{k}", h) for k, h in enumerate(handlers)]
    bases = (0, 100_000)
    down, up = 1500, 1500
    try:
        for i in range(down):
            for logger, base in zip(loggers, bases, strict=True):
                logger.info("record %d", base + i, extra={"seq": base + i})
        assert all(h.flush(30) for h in handlers)  # all spooled: the broker is down
        assert inspect_spool(str(spool_dir)).records == 2 * down
        rabbitmq.start()
        for chunk in range(down, down + up, 50):
            before = sum(h.stats()["replayed"] + h.stats()["confirmed"] for h in handlers)
            for i in range(chunk, chunk + 50):
                for logger, base in zip(loggers, bases, strict=True):
                    logger.info("record %d", base + i, extra={"seq": base + i})
            wait_until(  # keep emitting while the replay is under way
                lambda b=before: (
                    sum(  # type: ignore[misc]
                        h.stats()["replayed"] + h.stats()["confirmed"] for h in handlers
                    )
                    > b
                ),
                timeout=20,
                message="delivery progress",
            )
        assert all(h.flush(30) for h in handlers)
    finally:
        for logger, h in zip(loggers, handlers, strict=True):
            logger.removeHandler(h)
            h.close()
    total = down + up
    wanted = {base + i for base in bases for i in range(total)}
    docs = drain_amqp(rabbitmq, queue_name, wanted, timeout=60)
    got = seqs(docs)
    assert sorted(got) == sorted(wanted)  # each exactly once
    assert len({record_id(d) for d in docs}) == len(wanted)
    for base in bases:
        mine = [s for s in got if base <= s < base + total]
        assert _inversions(mine) == 0, f"producer {base}: {_inversions(mine)} inversions"
    assert inspect_spool(str(spool_dir)).records == 0
