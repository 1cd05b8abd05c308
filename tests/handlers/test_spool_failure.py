"""MQHandler with a spool that fails while the broker is healthy (issue #11, defect 5).

How the spool is made to fail: the tests run as root, where ``chmod 0555`` does not stop a
write. After the handler opened its spool, the directory is replaced by a regular file, so every
segment create fails with ENOTDIR -- for root too (what a tmp cleaner removing the directory and
something else taking its name looks like). Records are counted at the RabbitMQ queue:
delivered + counted drops == emitted, exactly, and no record twice.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.brokers import RabbitMQ
from harness.drain import amqp_url, drain_amqp, is_marker, seqs
from harness.helpers import small_filesystem, wait_until
from harness.proxy import TcpProxy
from mqlogging.audit import Audit
from mqlogging.handlers import MQHandler
from mqlogging.wire import read_meta


def _break(spool_dir: Path) -> None:
    """Make every write to ``spool_dir`` fail, for root too."""
    shutil.rmtree(spool_dir)
    spool_dir.write_text("not a directory\n")


def _emit(logger: logging.Logger, n: int) -> None:
    for i in range(n):
        logger.info("record %d", i, extra={"seq": i})


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, so the spool's disk can really fill up (needs root; skipped otherwise)."""
    with small_filesystem(tmp_path / "fs", "1m") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        yield tmp_path / "fs"


def _logger(handler: logging.Handler, name: str) -> logging.Logger:
    log = logging.getLogger(name)
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return log


def _audit_gaps(docs: list[dict[str, Any]]) -> list[Any]:
    """The gaps ``mqlogging audit`` cannot explain (no record, no marker naming it)."""
    audit = Audit()
    for doc in docs:
        audit.add_document(doc)
    report = audit.report()
    return [p["gaps"] for p in report["producers"] if p["gaps"]]


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


class TestSpoolFullDuringOutage:
    """The spool's disk fills up while the broker is unreachable (review 7, D1 and D4)."""

    @pytest.mark.parametrize(
        ("durability", "queue_size"), [("spool", 10_000), ("memory", 10_000), ("memory", 300)]
    )
    def test_what_the_spool_holds_is_shipped_once_sends_work_again(
        self,
        rabbitmq: RabbitMQ,
        queue_name: str,
        small_fs: Path,
        durability: str,
        queue_size: int,
    ) -> None:
        """Broker unreachable, the spool takes records until its disk is full, then fails
        (the lane goes direct; write-ahead degrades to memory mode). Once the disk has room
        and the broker is back, what the spool took before the failure is replayed by this
        process, and flush() returns True only once it was: delivered + dropped (counted) ==
        emitted, every gap named by a marker, the spool empty. With a queue that holds them
        all, nothing is dropped; with a 300-record queue the overflow is (counted, announced).
        Before the fix those records (and the marker of the drops) stayed stranded and
        flush() said True."""
        proxy = TcpProxy(rabbitmq.host, rabbitmq.amqp_port)  # not started yet: refused
        url = f"amqp://guest:guest@{proxy.host}:{proxy.port}/?exchange=&queue={queue_name}"
        filler = small_fs / "filler"
        filler.write_bytes(b"\0" * (1024 * 1024 - 160 * 1024))  # ~160 KiB left for the spool
        handler = MQHandler(
            url, spool=small_fs / "spool", durability=durability, batch_size=50,
            queue_size=queue_size, close_timeout=2, retry_max=0.2,
        )  # fmt: skip
        log = _logger(handler, f"stranded.d1.{durability}")
        n = 2000
        for i in range(n):
            log.info("r %d %s", i, "x" * 300)
        wait_until(  # the spool took some records, then failed (disk full)
            lambda: handler.stats()["spooled"] and handler.stats()["spool"]["error"], timeout=20
        )
        spooled = handler.stats()["spooled"]
        filler.unlink()  # the disk has room again
        proxy.start()
        try:
            flushed = handler.flush(15)
            stats = handler.stats()
            handler.close()
            docs = drain_amqp(rabbitmq, queue_name, 0, timeout=10, idle=1.0)
        finally:
            proxy.cut()
        records = [d for d in docs if not is_marker(d)]
        delivered = {d["event"]["id"] for d in records}
        markers = [d for d in docs if is_marker(d)]
        announced = sum(r.last - r.first + 1 for d in markers for r in read_meta(d).dropped)
        dropped = sum(stats["dropped"].values())
        assert flushed
        assert stats["replayed"] >= spooled > 0  # the spool's records went out from it
        assert stats["spool"]["records"] == 0
        lost = n - len(delivered)
        # a dropped marker is counted (and announced) too, though it never was a record
        assert lost <= dropped <= lost + stats["markers"]["sent"], (
            f"emitted {n}, delivered {len(delivered)}, dropped {stats['dropped']}, "
            f"announced {announced}, spooled {spooled}, replayed {stats['replayed']}"
        )
        assert announced >= lost  # every record missing is named by a marker
        assert not _audit_gaps(docs)
        if queue_size >= n:
            assert len(delivered) == n  # the queue held what the spool could not
        else:
            assert set(stats["dropped"]) == {"spool_error"}  # overflow, spool failing

    def test_a_failing_spool_does_not_drop_what_memory_can_hold(
        self, rabbitmq: RabbitMQ, queue_name: str, small_fs: Path
    ) -> None:
        """Memory mode (the default), the spool's disk full from the start, the broker
        unreachable for a moment: the 500 records fit in the queue (10,000), so none is
        dropped (the handler's promise: only what can be neither sent nor held is): all 500
        arrive, once each, in emit order, once the broker is back. Before the fix every batch
        the broker did not take was dropped as spool_error."""
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={small_fs / 'filler'}", "bs=4k"],
            capture_output=True,
            check=False,
        )
        proxy = TcpProxy(rabbitmq.host, rabbitmq.amqp_port)
        url = f"amqp://guest:guest@{proxy.host}:{proxy.port}/?exchange=&queue={queue_name}"
        handler = MQHandler(
            url, spool=small_fs / "spool", batch_size=50, close_timeout=2, retry_max=0.2
        )
        log = _logger(handler, "stranded.d4")
        _emit(log, 500)
        wait_until(  # the sender tried (and failed) twice: what it could not send is decided
            lambda: sum(ep["failures"] for ep in handler.stats()["endpoints"].values()) >= 2,
            timeout=20,
        )
        assert handler.stats()["dropped"] == {}
        proxy.start()
        try:
            assert handler.flush(10)
            stats = handler.stats()
            handler.close()
            docs = drain_amqp(rabbitmq, queue_name, 500, timeout=10, idle=1.0)
        finally:
            proxy.cut()
        assert stats["dropped"] == {}
        assert seqs(docs) == list(range(500))


def test_a_full_disk_does_not_replay_the_spool_over_and_over(
    rabbitmq: RabbitMQ, queue_name: str, small_fs: Path, app_logger: logging.Logger
) -> None:
    """Broker unreachable: 500 records go to the spool (the writer's open segment). Then the
    disk fills up completely and the broker comes back (review 9, R1). Replaying is
    at-least-once, so a record may arrive twice after the failure, but not more: at most 2
    copies of each, and flush() is True once they are confirmed, although no replay progress
    could be written. Before the fix, every ~0.5 s the whole segment was published again (each
    record ~10 times in 5 s), for as long as the disk stayed full, and flush() stayed False."""
    proxy = TcpProxy(rabbitmq.host, rabbitmq.amqp_port)  # not started: refused
    url = f"amqp://guest:guest@{proxy.host}:{proxy.port}/?exchange=&queue={queue_name}"
    handler = MQHandler(url, spool=small_fs / "spool", close_timeout=2, retry_max=0.2)
    app_logger.addHandler(handler)
    n = 500
    for i in range(n):
        app_logger.info("r %d", i)
    wait_until(lambda: handler.stats()["spooled"] == n, timeout=10)
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={small_fs / 'filler'}", "bs=4k"],
        capture_output=True,
        check=False,
    )
    proxy.start()
    try:
        assert handler.flush(4)
        replayed = handler.stats()["replayed"]
        # Still full: nothing more is sent (the lane does not go back to replaying).
        with contextlib.suppress(AssertionError):
            wait_until(lambda: handler.stats()["replayed"] > replayed, timeout=2.5)
        assert handler.stats()["replayed"] == replayed
        assert handler.flush(1)
        (small_fs / "filler").unlink()
        handler.close()
        docs = drain_amqp(rabbitmq, queue_name, n, timeout=20, idle=1.0)
    finally:
        proxy.cut()
    records = [d for d in docs if not is_marker(d)]
    assert len({d["event"]["id"] for d in records}) == n
    assert len(records) <= 2 * n, f"{len(records)} copies of {n} records"


def _fill(fs: Path) -> None:
    """Take every free byte of ``fs``."""
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={fs / 'filler'}", "bs=4k"], capture_output=True, check=False
    )


def _dropped(handler: MQHandler) -> int:
    return sum(handler.stats()["dropped"].values())


class TestHeldMarker:
    """A marker riding with a batch held in memory (D4) is not a record to drop (review 9,
    R2): it waits with the batch, its drops stay pending, and the counts stay exact."""

    def test_a_held_batch_does_not_turn_its_marker_into_a_drop_every_second(
        self, rabbitmq: RabbitMQ, queue_name: str, small_fs: Path
    ) -> None:
        """Spool disk full, broker unreachable, queue_size=100: of 300 records 200 overflow
        (dropped and counted: exactly 200). Nothing more is emitted, so while the outage
        lasts the count stays 200 (the 100 queued are held, D4) and no marker is counted as
        sent, none went out. Once the broker is back, the 100 held records and the markers
        naming the 200 arrive (each counted in ``markers.sent``), and the audit finds no unexplained gap. Before the fix the
        marker fell off the full queue every second: ``dropped`` read 201, 202, 203... and
        ``markers.sent`` rose with it while none was delivered."""
        _fill(small_fs)
        proxy = TcpProxy(rabbitmq.host, rabbitmq.amqp_port)  # not started: refused
        url = f"amqp://guest:guest@{proxy.host}:{proxy.port}/?exchange=&queue={queue_name}"
        handler = MQHandler(
            url, spool=small_fs / "spool", close_timeout=2, retry_max=0.2, batch_size=50,
            queue_size=100,
        )  # fmt: skip
        log = _logger(handler, "stranded.r2")
        _emit(log, 300)
        wait_until(lambda: _dropped(handler) >= 200, timeout=10)  # the overflow is counted
        with contextlib.suppress(AssertionError):  # a marker interval or three go by
            wait_until(lambda: _dropped(handler) > 200, timeout=3.5)
        stats = handler.stats()
        assert _dropped(handler) == 200, f"dropped {stats['dropped']}, 200 records dropped"
        assert stats["markers"]["sent"] == 0
        (small_fs / "filler").unlink()
        proxy.start()
        try:
            assert handler.flush(10)
            stats = handler.stats()
            handler.close()
            docs = drain_amqp(rabbitmq, queue_name, 101, timeout=10, idle=1.0)
        finally:
            proxy.cut()
        assert _dropped(handler) == 200
        records = [d for d in docs if not is_marker(d)]
        assert len(records) == 100
        # the marker held through the outage, and one for drops noted after it was made
        assert 1 <= stats["markers"]["sent"] == len(docs) - len(records) <= 2
        assert _audit_gaps(docs) == []

    def test_close_with_batches_held_counts_each_record_once(
        self, rabbitmq: RabbitMQ, queue_name: str, small_fs: Path
    ) -> None:
        """Spool disk full, broker unreachable: 500 records are held in memory (D4, no
        drops). close() can neither send nor spool them: it counts exactly 500 drops (not
        one more per marker it tried to spool) and no marker as sent, since none went out.
        Before the fix: 503 dropped and ``markers.sent`` 3."""
        _fill(small_fs)
        proxy = TcpProxy(rabbitmq.host, rabbitmq.amqp_port)  # not started: refused
        url = f"amqp://guest:guest@{proxy.host}:{proxy.port}/?exchange=&queue={queue_name}"
        handler = MQHandler(
            url, spool=small_fs / "spool", batch_size=50, close_timeout=1, retry_max=0.2
        )
        log = _logger(handler, "stranded.r2close")
        _emit(log, 500)
        wait_until(
            lambda: sum(ep["failures"] for ep in handler.stats()["endpoints"].values()) >= 2,
            timeout=20,
        )
        handler.close()
        stats = handler.stats()
        assert _dropped(handler) == 500, stats["dropped"]
        assert stats["markers"]["sent"] == 0
