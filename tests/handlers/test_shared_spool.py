"""Handlers sharing one spool directory (issue #11): per-producer emit order survives an outage
replayed by several readers at once (defect 3), and a directory serves one destination only
(defect 6). Counted end to end at the queue."""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.brokers import RabbitMQ
from harness.drain import amqp_url, drain_amqp, record_id, seqs
from harness.helpers import free_port, wait_until
from harness.proxy import Outage
from mqlogging import ConfigurationError, MQHandler
from mqlogging.cli.spool import inspect_spool

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
    rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path, outage: Outage
) -> None:
    """Two handlers (two producers) share a spool directory with small segments. The broker is
    down while both log 1500 records (many segments each, interleaved in the directory); it
    comes back and both keep logging while their readers replay the shared backlog at the
    same time. Every record arrives exactly once, and each producer's records arrive in emit
    order (no inversion): no reader ships a producer's newer segment while an older one is
    claimed elsewhere, and no lane goes direct while its own segments are still being
    shipped by the other reader. (The broker is down and back through the ``outage``
    fixture: refused, then reachable.)"""
    broker, url = outage(amqp_url(rabbitmq, queue_name), rabbitmq.amqp_port)
    options: dict[str, Any] = {
        "batch_size": 50, "retry_max": 0.3, "close_timeout": 10.0, "connect_timeout": 0.5,
        "spool_options": {"segment_bytes": 8192},
    }  # fmt: skip
    handlers = [MQHandler(url, spool=str(spool_dir), **options) for _ in range(2)]
    loggers = [_logger(f"p{k}", h) for k, h in enumerate(handlers)]
    bases = (0, 100_000)
    down, up = 1500, 1500
    try:
        for i in range(down):
            for logger, base in zip(loggers, bases, strict=True):
                logger.info("record %d", base + i, extra={"seq": base + i})
        wait_until(  # all spooled: the broker is down
            lambda: (
                inspect_spool(str(spool_dir)).records == 2 * down
                and all(h.stats()["queued"] == 0 for h in handlers)
            ),
            timeout=30,
            message="everything spooled",
        )
        broker.start()
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


def test_spool_directory_serves_one_destination(
    rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path, tmp_path: Path
) -> None:
    """Application B (its broker unreachable) leaves 300 records in a spool directory;
    application A, configured for another destination, is pointed at the same directory: A
    refuses it at startup with one line naming both destinations and the fix, so A's queue
    gets none of B's records (it got all 300 before). A handler with B's destination but
    other tuning options accepts the directory, and ``mqlogging spool replay DIR --to URL``
    still ships B's 300 records, in order, to whatever URL the operator names."""
    queue_a, queue_b = f"{queue_name}-a", f"{queue_name}-b"
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/?exchange=&queue={queue_b}"
    b = MQHandler(dead, spool=str(spool_dir), connect_timeout=0.5, close_timeout=1.0)
    logger_b = _logger("b", b)
    for i in range(300):
        logger_b.info("b record %d", i, extra={"seq": 10_000 + i})
    logger_b.removeHandler(b)
    b.close()
    assert inspect_spool(str(spool_dir)).records == 300

    with pytest.raises(ConfigurationError) as refused:
        MQHandler(amqp_url(rabbitmq, queue_a), spool=str(spool_dir))
    message = str(refused.value)
    assert "\n" not in message
    assert queue_a in message
    assert queue_b in message
    assert "spool=" in message
    assert "guest:" not in message  # no credentials in the key

    same = MQHandler(dead, spool=str(spool_dir), connect_timeout=0.2, retry_max=5.0)
    same.close()  # the same destination with other options: accepted

    a = MQHandler(amqp_url(rabbitmq, queue_a), spool=str(tmp_path / "spool-a"))
    logger_a = _logger("a", a)
    try:
        for i in range(200):
            logger_a.info("a record %d", i, extra={"seq": i})
        assert a.flush(30)
    finally:
        logger_a.removeHandler(a)
        a.close()
    assert list(range(200)) == seqs(drain_amqp(rabbitmq, queue_a, 200))  # none of B's
    assert inspect_spool(str(spool_dir)).records == 300

    run = subprocess.run(
        [sys.executable, "-m", "mqlogging", "spool", "replay", str(spool_dir),
         "--to", amqp_url(rabbitmq, queue_b), "--quiet"],
        check=False, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert list(range(10_000, 10_300)) == seqs(drain_amqp(rabbitmq, queue_b, 300))
    assert inspect_spool(str(spool_dir)).records == 0


def test_unreadable_destination_binding_is_reported_not_fatal(
    spool_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A spool directory whose DESTINATION can be neither read nor written (here it is a
    directory) does not stop the application: the handler starts and says so on stderr."""
    (spool_dir / "DESTINATION").mkdir(parents=True)
    handler = MQHandler(f"amqp://127.0.0.1:{free_port()}/", spool=str(spool_dir))
    handler.close()
    assert "without a destination check" in capfd.readouterr().err
