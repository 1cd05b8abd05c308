"""A spool directory deleted while the application runs (review 7, defect D2).

A tmp cleaner on the ``<tmp>/mqlogging-<uid>`` fallback spool, or an operator freeing space,
deletes the directory under a live writer. Writes to the deleted open segment would still
succeed and vanish; the spool writer now notices, counts what the deleted segment held that no
reader confirmed (``spool_deleted``, announced by a drop marker) and writes the rest into the
re-created directory. Records are counted end to end: delivered + counted drops == emitted, and
``mqlogging audit`` over what arrived finds no unexplained gap.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from harness.brokers import RabbitMQ
from harness.drain import drain_amqp, is_marker
from harness.proxy import TcpProxy
from mqlogging import MQHandler
from mqlogging.cli import main


def _logger(handler: logging.Handler, name: str) -> logging.Logger:
    log = logging.getLogger(name)
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return log


def _audit(docs: list[dict[str, object]], path: Path) -> int:
    """``mqlogging audit`` over ``docs`` written as a JSON-lines sink: its exit code (0: every
    gap in the producers' sequences is explained by a drop marker)."""
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return main(["audit", "--file", str(path)])


@pytest.mark.parametrize("durability", ["memory", "spool"])
def test_records_spooled_after_the_spool_directory_was_deleted_are_not_lost_silently(
    rabbitmq: RabbitMQ, queue_name: str, tmp_path: Path, durability: str
) -> None:
    """Broker unreachable; the spool directory is deleted (a tmp cleaner, an operator freeing
    space) with 500 records in it; 500 more are emitted. Once the broker is back, every
    record is delivered or counted as dropped (``spool_deleted``) and announced: flush() is
    True, delivered + dropped == 1,000, the 500 emitted after the deletion all arrive (they
    went to the re-created directory), the directory exists again, and the audit of what
    arrived exits 0 (every gap explained by a marker). It used to be: the records went into
    the deleted segment's inode, counted as spooled, never delivered, no drop."""
    proxy = TcpProxy(rabbitmq.host, rabbitmq.amqp_port)  # not started yet: refused
    url = f"amqp://guest:guest@{proxy.host}:{proxy.port}/?exchange=&queue={queue_name}"
    spool = tmp_path / "spool"
    handler = MQHandler(url, spool=spool, durability=durability, close_timeout=2, retry_max=0.2)
    name = f"spooldel.{durability}"
    log = _logger(handler, name)
    for i in range(500):
        log.info("before %d", i)
    handler.flush(0.5)  # the sender has spooled them (the broker is down)
    shutil.rmtree(spool)
    for i in range(500):
        log.info("after %d", i)
    handler.flush(0.5)
    proxy.start()
    try:
        flushed = handler.flush(15)
        stats = handler.stats()
        handler.close()
        docs = drain_amqp(rabbitmq, queue_name, 0, timeout=10, idle=1.0)
    finally:
        proxy.cut()
    mine = [d for d in docs if d["log"]["logger"] == name]
    delivered = {d["event"]["id"] for d in mine}
    after = {d["event"]["id"] for d in mine if d["message"].startswith("after")}
    dropped = sum(stats["dropped"].values())
    assert flushed
    assert set(stats["dropped"]) <= {"spool_deleted"}, stats["dropped"]
    assert len(after) == 500, f"{len(after)} of the 500 emitted after the deletion arrived"
    # A record a reader still held open may arrive although it was counted (named by the
    # marker: the audit counts it as delivered), never the other way round.
    assert len(delivered) + dropped >= 1000, (
        f"emitted 1000, delivered {len(delivered)}, dropped {stats['dropped']}"
    )
    if durability == "memory":  # nothing was shipped before the deletion: exact
        assert (len(delivered), dropped) == (500, 500)
    assert spool.is_dir()
    assert _audit([d for d in docs if d["log"]["logger"] == name or is_marker(d)],
                  tmp_path / "sink.jsonl") == 0  # fmt: skip


def test_local_destination_deleted_while_running_loses_nothing_silently(tmp_path: Path) -> None:
    """The ``local://`` queue directory is deleted (tmp cleaner, operator) while the
    application runs: the 100 records emitted afterwards land in the re-created directory
    (the producer never confirms a batch written into the deleted segment), and the queue's
    ``dropped.log`` says the 100 records deleted with it (``deleted``). It used to say all 200
    confirmed, and the directory did not even exist any more."""
    from mqlogging.spool import dropped_totals

    queue = tmp_path / "q"
    handler = MQHandler(f"local://{queue}", spool=False, close_timeout=2)
    log = _logger(handler, "spooldel.local")
    for i in range(100):
        log.info("before %d", i)
    assert handler.flush(5)
    shutil.rmtree(queue)
    for i in range(100):
        log.info("after %d", i)
    assert handler.flush(5)
    stats = handler.stats()
    handler.close()
    stored = [
        line
        for path in queue.iterdir()
        if path.suffix in (".jsonl", ".open")
        for line in path.read_bytes().splitlines()
    ]
    assert sum(b'"after ' in line for line in stored) == 100
    assert not any(b'"before ' in line for line in stored)
    assert stats["dropped"] == {}  # the 100 were confirmed (delivered), then deleted
    assert dropped_totals(str(queue)) == {"deleted": 100}


def test_records_shipped_before_the_deletion_are_not_counted_as_lost(
    rabbitmq: RabbitMQ, queue_name: str, tmp_path: Path
) -> None:
    """Write-ahead (``durability="spool"``) with a healthy broker: the 2,000 records written
    before the deletion were already confirmed when the directory goes, so nothing is
    counted as dropped; the 2,000 emitted after it are spooled in the re-created directory
    and delivered: 4,000 delivered, ``dropped`` empty."""
    url = f"{rabbitmq.amqp_url}?exchange=&queue={queue_name}"
    spool = tmp_path / "spool"
    handler = MQHandler(url, spool=spool, durability="spool", close_timeout=5)
    log = _logger(handler, "spooldel.shipped")
    for i in range(2000):
        log.info("before %d", i)
    assert handler.flush(15)
    shutil.rmtree(spool)
    for i in range(2000):
        log.info("after %d", i)
    assert handler.flush(15)
    stats = handler.stats()
    handler.close()
    docs = drain_amqp(rabbitmq, queue_name, 4000, timeout=15)
    delivered = {d["event"]["id"] for d in docs if d["log"]["logger"] == "spooldel.shipped"}
    assert len(delivered) == 4000
    assert stats["dropped"] == {}


@pytest.mark.parametrize("durability", ["memory", "spool"])
def test_flush_does_not_report_success_over_a_deleted_segment(
    rabbitmq: RabbitMQ, queue_name: str, tmp_path: Path, durability: str
) -> None:
    """Broker unreachable, 500 records spooled, the directory deleted, and nothing emitted
    afterwards (no append comes to notice it). Once the broker is back, flush() returns True
    only with every record delivered (a reader still holding the deleted segment open ships
    it) or counted (``spool_deleted``): delivered + dropped == 500 exactly, at flush() time,
    not only at close(). It used to be: flush() True, 0 delivered, nothing counted."""
    proxy = TcpProxy(rabbitmq.host, rabbitmq.amqp_port)  # not started yet: refused
    url = f"amqp://guest:guest@{proxy.host}:{proxy.port}/?exchange=&queue={queue_name}"
    spool = tmp_path / "spool"
    handler = MQHandler(url, spool=spool, durability=durability, close_timeout=2, retry_max=0.2)
    name = f"spooldel.idle.{durability}"
    log = _logger(handler, name)
    for i in range(500):
        log.info("before %d", i)
    handler.flush(0.5)  # the sender has spooled them (the broker is down)
    shutil.rmtree(spool)
    proxy.start()
    try:
        flushed = handler.flush(15)
        stats = handler.stats()
        handler.close()
        docs = drain_amqp(rabbitmq, queue_name, 0, timeout=10, idle=1.0)
    finally:
        proxy.cut()
    delivered = {d["event"]["id"] for d in docs if d["log"]["logger"] == name}
    assert flushed
    assert set(stats["dropped"]) <= {"spool_deleted"}, stats["dropped"]
    assert len(delivered) + sum(stats["dropped"].values()) == 500, (
        f"delivered {len(delivered)}, dropped {stats['dropped']}"
    )
    assert _audit([d for d in docs if d["log"]["logger"] == name or is_marker(d)],
                  tmp_path / "sink.jsonl") == 0  # fmt: skip
