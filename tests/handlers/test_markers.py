"""Drop markers end to end: what the handler drops by policy is announced, and ``mqlogging
audit`` over what arrived (a real RabbitMQ queue, a spool directory) explains every missing
sequence number with exactly the counts of :meth:`MQHandler.stats`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from harness.brokers import RabbitMQ
from harness.drain import amqp_url, drain_amqp
from harness.helpers import free_port, wait_until
from mqlogging import MQHandler
from mqlogging.audit import Audit
from mqlogging.cli import main
from mqlogging.handlers._markers import DropLedger
from mqlogging.wire import DroppedRange

N = 3000


def _audit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(["audit", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def _write_jsonl(path: Path, docs: list[dict[str, Any]]) -> Path:
    with path.open("w") as f:
        for doc in docs:
            clean = {k: v for k, v in doc.items() if k not in ("_mid", "_redelivered")}
            f.write(json.dumps(clean) + "\n")
    return path


def test_overflow_drops_arrive_as_markers_and_audit_explains_them(
    rabbitmq: RabbitMQ,
    queue_name: str,
    app_logger: logging.Logger,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A tiny queue with ``overflow="drop"`` drops records; the markers reach the broker with
    the rest, and ``mqlogging audit`` over everything that arrived reports no unexplained gap
    (exit 0), no duplicate, and exactly ``stats()["dropped"]["overflow"]`` records dropped by
    policy, every one of them accounted for: delivered + dropped = every sequence number."""
    handler = MQHandler(
        amqp_url(rabbitmq, queue_name),
        spool=False,
        overflow="drop",
        queue_size=20,
        batch_size=20,
        flush_interval=0.01,
    )
    app_logger.addHandler(handler)
    for i in range(N):
        app_logger.info("record %d", i)
    app_logger.removeHandler(handler)
    handler.close()
    stats = handler.stats()
    dropped = stats["dropped"]["overflow"]
    markers = stats["markers"]["sent"]
    assert {"overflow"} == set(stats["dropped"])
    assert 0 < dropped < N
    assert markers >= 1
    docs = drain_amqp(rabbitmq, queue_name, N - dropped + markers)
    assert N - dropped + markers == len(docs)

    code, report = _audit(capsys, "--file", str(_write_jsonl(tmp_path / "sink.jsonl", docs)))
    assert code == 0
    [producer] = report["producers"]
    assert handler.producer == producer["producer"]
    assert N - dropped + markers == producer["records"]
    assert markers == producer["markers"]
    assert dropped == producer["dropped"]
    assert {"overflow"} == {r["reason"] for r in producer["dropped_ranges"]}
    assert (producer["missing"], producer["gaps"], producer["duplicates"]) == (0, [], 0)
    assert N + markers == producer["last_seq"] == producer["records"] + producer["dropped"]


def test_without_markers_the_same_drops_are_gaps(
    rabbitmq: RabbitMQ,
    queue_name: str,
    app_logger: logging.Logger,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The markers are what explains the drops: with the marker records filtered out of the
    sink, audit reports the very same ranges as gaps and exits 1."""
    handler = MQHandler(
        amqp_url(rabbitmq, queue_name), spool=False, overflow="drop", queue_size=20, batch_size=20
    )
    app_logger.addHandler(handler)
    for i in range(N):
        app_logger.info("record %d", i)
    app_logger.removeHandler(handler)
    handler.close()
    stats = handler.stats()
    dropped, markers = stats["dropped"]["overflow"], stats["markers"]["sent"]
    docs = drain_amqp(rabbitmq, queue_name, N - dropped + markers)
    plain = [d for d in docs if "dropped" not in d["mqlogging"]]
    code, report = _audit(capsys, "--file", str(_write_jsonl(tmp_path / "sink.jsonl", plain)))
    assert code == 1
    [producer] = report["producers"]
    # Missing: exactly what the markers announced and the markers themselves, up to the last
    # record seen (nothing after it shows how many more there were).
    announced: set[int] = set()
    for doc in docs:
        if "dropped" in doc["mqlogging"]:
            announced.add(doc["mqlogging"]["seq"])
            for r in doc["mqlogging"]["dropped"]:
                announced.update(range(r["first"], r["last"] + 1))
    expected = {s for s in announced if s < producer["last_seq"]}
    missing = {s for a, b in producer["gaps"] for s in range(a, b + 1)}
    assert expected == missing
    assert producer["dropped"] == 0


@pytest.mark.parametrize("durability", ["memory", "spool"])
def test_spool_drop_oldest_is_announced_with_the_exact_ranges(
    app_logger: logging.Logger,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    durability: str,
) -> None:
    """With every broker down and a small spool, ``drop_oldest`` deletes whole segments (and,
    write-ahead, the spool refuses appends it cannot make room for); the markers (spooled like
    any record) name exactly the records dropped: audit of the spool finds no unexplained gap,
    ``spool_full`` drops equal to the handler's count (each drop counted once), and the
    records still spooled plus the ranges dropped are every sequence number, once."""
    spool = tmp_path / "spool"
    handler = MQHandler(
        f"amqp://guest:guest@127.0.0.1:{free_port()}/?exchange=&queue=nowhere",
        spool=str(spool),
        spool_max_bytes=64 * 1024,
        spool_options={"segment_bytes": 8 * 1024},
        batch_size=50,
        close_timeout=1.0,
        retry_max=0.2,
        durability=durability,
    )
    app_logger.addHandler(handler)
    for i in range(N):
        app_logger.info("record %d %s", i, "x" * 100)
    app_logger.removeHandler(handler)
    handler.close()
    stats = handler.stats()
    dropped = stats["dropped"]["spool_full"]
    assert {"spool_full"} == set(stats["dropped"])
    assert dropped > N // 2

    code, report = _audit(capsys, "--spool", str(spool))
    assert code == 0
    [producer] = report["producers"]
    assert dropped == producer["dropped"]
    assert {"spool_full"} == {r["reason"] for r in producer["dropped_ranges"]}
    assert (producer["missing"], producer["duplicates"]) == (0, 0)
    markers = stats["markers"]["sent"]
    assert N + markers == producer["last_seq"] == producer["records"] + producer["dropped"]


def _body(producer: str, seq: int, **ns: Any) -> bytes:
    return json.dumps(
        {"mqlogging": {"schema": "ecs", "producer": producer, "seq": seq, **ns}}
    ).encode()


class TestLedger:
    def test_runs_are_coalesced_per_producer_and_reason(self) -> None:
        """Consecutive drops make one run, the same batch dropped on two lanes counts once,
        another reason or producer is a run of its own, oldest first."""
        ledger = DropLedger()
        ledger.note([_body("p", s) for s in range(1, 11)], "overflow")
        ledger.note([_body("p", s) for s in range(11, 21)], "overflow")
        ledger.note([_body("p", s) for s in range(11, 21)], "overflow")  # second lane
        ledger.note([_body("p", 30), _body("old", 7)], "spool_full")
        ranges, generation = ledger.take()
        assert [
            DroppedRange("old", 7, 7, "spool_full"),
            DroppedRange("p", 1, 20, "overflow"),
            DroppedRange("p", 30, 30, "spool_full"),
        ] == ranges
        assert (generation, bool(ledger)) == (4, False)

    def test_a_dropped_marker_gives_its_ranges_back(self) -> None:
        """Dropping a marker loses nothing announced: its ranges are pending again, and its
        own seq is a dropped record like any other; unparseable bodies are only counted."""
        ledger = DropLedger()
        carried = [{"producer": "p", "first": 1, "last": 5, "reason": "overflow"}]
        ledger.note([_body("p", 6, dropped=carried), b"{torn", b""], "unsent")
        ranges, _ = ledger.take()
        assert [DroppedRange("p", 1, 5, "overflow"), DroppedRange("p", 6, 6, "unsent")] == ranges
        assert ledger.unattributed == 2

    def test_markers_are_bounded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A marker carries at most MAX_RANGES_PER_MARKER ranges (the generation is complete
        only with the last one), and the ledger holds at most MAX_PENDING_RANGES: beyond, drops
        are counted as unannounced."""
        from mqlogging.handlers import _markers

        monkeypatch.setattr(_markers, "MAX_RANGES_PER_MARKER", 2)
        monkeypatch.setattr(_markers, "MAX_PENDING_RANGES", 3)
        ledger = DropLedger()
        ledger.note([_body("p", s) for s in range(1, 20, 2)], "overflow")  # 10 single runs
        assert ledger.unannounced == 7
        first, gen1 = ledger.take()
        second, gen2 = ledger.take()
        assert ([r.first for r in first], gen1, [r.first for r in second], gen2) == (
            [1, 3],
            0,
            [5],
            1,
        )

    @pytest.mark.parametrize("schema", ["ecs", "logstash", "flat", "otel"])
    def test_a_user_field_cannot_pass_for_the_stamp(self, schema: str) -> None:
        """The seq of a dropped record is read from the handler's own ``mqlogging`` object in
        every schema, never from a user field of that name (moved under ``extra``)."""
        from mqlogging import JsonFormatter

        record = logging.LogRecord("app", logging.INFO, __file__, 1, "m", None, None)
        record.__dict__["mqlogging"] = {"producer": "forged", "seq": 999}
        body = JsonFormatter(schema=schema).format_message(record, {"producer": "p", "seq": 7})
        ledger = DropLedger()
        ledger.note([body.body, body.body[:-1]], "overflow")  # and a torn copy
        assert ([DroppedRange("p", 7, 7, "overflow")], 1) == (ledger.take()[0], ledger.unattributed)


def test_a_lone_marker_waits_while_every_lane_spools(
    app_logger: logging.Logger, tmp_path: Path
) -> None:
    """While the brokers are down and the queue is empty, a pending marker is not written to
    the (full) spool on its own: making room for it would drop records, whose marker would drop
    more, one segment a second for as long as the outage lasts. It rides with the next records
    instead."""
    handler = MQHandler(
        f"amqp://guest:guest@127.0.0.1:{free_port()}/?exchange=&queue=nowhere",
        spool=str(tmp_path / "spool"),
        spool_max_bytes=32 * 1024,
        spool_options={"segment_bytes": 4 * 1024},
        batch_size=20,
        close_timeout=1.0,
        retry_max=0.2,
    )
    app_logger.addHandler(handler)
    for i in range(500):
        app_logger.info("record %d %s", i, "x" * 100)
    pipe = handler._pipe
    wait_until(lambda: not pipe.queue and all(lane.backlogged for lane in pipe.lanes))
    wait_until(lambda: handler.stats()["dropped"].get("spool_full", 0) > 0)
    if not pipe.drops:  # the marker already rode with the last batch: drop some more
        app_logger.info("one more %s", "x" * 20_000)
        wait_until(lambda: not pipe.queue and bool(pipe.drops))
    pipe.drops.next_due = 0.0  # the interval has passed
    assert pipe._marker_due() is False
    sent = handler.stats()["markers"]["sent"]
    app_logger.info("a record to ride with")
    wait_until(lambda: handler.stats()["markers"]["sent"] > sent)
    app_logger.removeHandler(handler)
    handler.close()


def test_drops_of_another_producers_segments_are_announced_for_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two handlers share a spool directory (an earlier run, or another process): when the
    second one's bounds delete the first one's segments, its markers name the first producer's
    ranges, so audit of the spool explains both producers' missing numbers (exit 0) and the
    dropped counts add up to what the second handler counted."""
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/?exchange=&queue=nowhere"
    options: dict[str, Any] = {
        "spool": str(tmp_path / "spool"),
        "spool_options": {"segment_bytes": 8 * 1024},
        "close_timeout": 0.5,
        "retry_max": 0.2,
        "batch_size": 50,
    }
    handlers = []
    for name, bound in (("first", 10**9), ("second", 64 * 1024)):
        handler = MQHandler(url, spool_max_bytes=bound, **options)
        logger = logging.getLogger(f"markers.shared.{name}")
        logger.propagate = False
        logger.addHandler(handler)
        for i in range(1000):
            logger.warning("%s %d %s", name, i, "x" * 100)
        logger.removeHandler(handler)
        handler.close()
        handlers.append(handler)
    first, second = handlers
    code, report = _audit(capsys, "--spool", str(tmp_path / "spool"))
    assert code == 0
    by_name = {p["producer"]: p for p in report["producers"]}
    assert {first.producer, second.producer} == set(by_name)
    assert by_name[first.producer]["dropped"] > 0
    assert second.stats()["dropped"]["spool_full"] == sum(p["dropped"] for p in by_name.values())
    assert by_name[first.producer]["records"] + by_name[first.producer]["dropped"] == 1000


def test_without_a_spool_what_close_drops_is_announced(rabbitmq: RabbitMQ, queue_name: str) -> None:
    """spool=False, broker up, close() runs out of time with thousands of records queued
    (batch_size=1 makes the sender slow): those records are dropped and counted as ``closed``,
    and close() has the running sender publish the marker naming them before it stops
    (review 7, D6), so the audit over what arrived has no unexplained gap and delivered +
    dropped == emitted."""
    n = 5000
    handler = MQHandler(
        amqp_url(rabbitmq, queue_name), spool=False, batch_size=1, queue_size=n,
        close_timeout=0.5,
    )  # fmt: skip
    log = logging.getLogger("markers.d6")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        log.info("first")
        assert handler.flush(10)  # connected: the endpoint is healthy
        for i in range(n - 1):
            log.info("r %d", i)
        handler.close()
    finally:
        log.handlers[:] = []
    stats = handler.stats()
    docs = drain_amqp(rabbitmq, queue_name, 0, timeout=10, idle=1.0)
    records = [d for d in docs if not d["mqlogging"].get("dropped")]
    markers = [d for d in docs if d["mqlogging"].get("dropped")]
    assert stats["dropped"].get("closed", 0) > 0, stats["dropped"]  # close() did drop some
    assert set(stats["dropped"]) == {"closed"}
    assert len(records) + stats["dropped"]["closed"] == n
    announced = sum(r["last"] - r["first"] + 1 for m in markers for r in m["mqlogging"]["dropped"])
    assert announced == stats["dropped"]["closed"]
    audit = Audit()
    for doc in docs:
        audit.add_document(doc)
    report = audit.report()
    assert report["ok"], report["producers"]
