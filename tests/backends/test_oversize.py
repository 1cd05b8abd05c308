"""A record above the broker's message size limit is refused alone, not the whole lane
(review 7, D3): every other record is delivered exactly once, the big one is counted as dropped
(``too_large_for_broker``) and announced by a drop marker, so ``mqlogging audit`` explains it.

One private RabbitMQ with ``max_message_size`` = 1 MiB serves the module (AMQP and STOMP).
Without ``max_message_bytes`` the producer assumes 16 MiB and learns the broker's limit from
its refusal; with ``max_message_bytes`` it refuses the big record before sending it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.brokers import ActiveMQ, RabbitMQ, reserve_port
from harness.drain import amqp_url, stomp_url
from harness.helpers import free_port, unique_name
from mqlogging import MQHandler
from mqlogging.backends import open_consumer
from mqlogging.backends.oversize import SizeGuard, stated_limit
from mqlogging.cli import main
from mqlogging.cli.spool import inspect_spool
from mqlogging.errors import ConfigurationError
from mqlogging.packing import Packer, PackOptions, unpack_bodies

LIMIT = 1024 * 1024
N = 100  # records before and after the big one


@pytest.fixture(scope="module")
def small_max_rabbitmq() -> Iterator[RabbitMQ]:
    """A private RabbitMQ refusing messages above 1 MiB (``max_message_size``), for the
    module (booting one takes ~10 s). In a directory of its own, which ``close()`` deletes
    after a SIGKILL: a graceful stop of a throwaway broker would only cost seconds."""
    broker = RabbitMQ(extra_config=f"max_message_size = {LIMIT}")
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture(scope="module")
def small_frame_activemq() -> Iterator[str]:
    """The STOMP URL of a private ActiveMQ connector refusing frames above 1 MiB
    (``maxFrameSize``; its ERROR frame does not say the limit), for the module; in a
    directory of its own, killed by ``close()``."""
    port = reserve_port(set())
    connector = (
        f'<transportConnector name="small" '
        f'uri="stomp://127.0.0.1:{port}?transport.maxFrameSize={LIMIT}"/>'
    )
    broker = ActiveMQ(extra_connectors=connector, extra_ports=(port,))
    broker.start()
    try:
        yield f"stomp://guest:guest@{broker.host}:{port}"
    finally:
        broker.close()


def _url(broker: RabbitMQ, transport: str, queue: str, query: str) -> str:
    if transport == "amqp":
        return amqp_url(broker, queue) + (f"&{query}" if query else "")
    return stomp_url(broker, queue) + (f"?{query}" if query else "")


def _drain(url: str, timeout: float = 20.0, idle: float = 1.0) -> list[dict[str, Any]]:
    """Every record on the queue (packed messages unpacked) until ``idle`` s bring nothing."""
    docs: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    with open_consumer(url) as consumer:
        while time.monotonic() < deadline:
            batch = consumer.fetch(1000, idle)
            if not batch:
                break
            consumer.ack(batch)
            for d in batch:
                docs.extend(json.loads(b) for b in unpack_bodies(d.body, d.headers, 2**26))
    return docs


def _run(url: str, spool: Path) -> tuple[bool, dict[str, Any], list[dict[str, Any]]]:
    """Log N records, one 2 MB record and N records; flush, close, drain the queue.

    Records are bounded at 4 MiB (not cut), or not at all where the URL states the broker's
    limit (a bound above it is refused at startup)."""
    bound = None if "max_message_bytes" in url else 4 * 1024 * 1024
    handler = MQHandler(url, spool=spool, close_timeout=2, retry_max=0.5, max_record_bytes=bound)
    log = logging.getLogger(unique_name("oversize"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    for i in range(N):
        log.info("before %d", i)
    log.info("big %s", "x" * 2_000_000)
    for i in range(N):
        log.info("after %d", i)
    try:
        flushed = handler.flush(4)  # review 7's bound
        stats = handler.stats()  # before close(): the endpoint's producer counters with it
    finally:
        handler.close()
        log.handlers[:] = []
    return flushed, stats, _drain(url)


def _audit(docs: list[dict[str, Any]], path: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    capsys.readouterr()
    code = main(["audit", "--file", str(path), "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    ("transport", "query"),
    [
        ("amqp", ""),  # the broker's 406 states the limit: learnt, the rest sent again
        ("amqp", "max_message_bytes=1MiB"),  # refused up front, nothing sent twice
        ("amqp", "pack=50"),  # packed: the big record travels alone and is refused alone
        ("stomp", ""),  # the broker's ERROR frame states the limit
        ("stomp", "max_message_bytes=1MiB&pack=50"),
    ],
)
def test_a_record_above_the_broker_limit_is_dropped_alone(
    small_max_rabbitmq: RabbitMQ,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    transport: str,
    query: str,
) -> None:
    """100 records, a 2 MB record (broker limit 1 MiB), 100 records: flush() succeeds, the 200
    arrive exactly once each (none delivered again from a batch the broker cut short), the
    big one is counted as dropped with reason ``too_large_for_broker`` (in the handler and
    under its endpoint) and announced by a marker, and ``mqlogging audit`` reports no
    unexplained gap and no duplicate. (Review 7, D3: the lane was blocked for good.)"""
    url = _url(small_max_rabbitmq, transport, unique_name("big"), query)
    flushed, stats, docs = _run(url, tmp_path / "spool")
    _check(flushed, stats, docs, tmp_path, capsys)


def _check(
    flushed: bool,
    stats: dict[str, Any],
    docs: list[dict[str, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The 200 delivered once each, the big one dropped, counted, announced and explained."""
    records = [d for d in docs if not d["mqlogging"].get("dropped")]
    words = Counter(d["message"].split()[0] for d in records)
    assert flushed, f"flush() timed out; dropped {stats['dropped']}"
    assert words == {"before": N, "after": N}, words
    assert len({d["event"]["id"] for d in records}) == len(records) == 2 * N
    assert stats["dropped"] == {"too_large_for_broker": 1}
    [endpoint] = stats["endpoints"].values()
    assert endpoint["too_large_for_broker"] == 1
    code, report = _audit(docs, tmp_path / "sink.jsonl", capsys)
    [producer] = report["producers"]
    assert (code, producer["missing"], producer["duplicates"], producer["dropped"]) == (0, 0, 0, 1)
    assert {r["reason"] for r in producer["dropped_ranges"]} == {"too_large_for_broker"}


@pytest.mark.parametrize("query", ["", "pack=50"])
def test_activemq_frame_limit_refuses_the_big_record_alone(
    small_frame_activemq: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    query: str,
) -> None:
    """ActiveMQ's STOMP ``maxFrameSize`` (1 MiB here) refuses the 2 MB record with an ERROR
    that names no limit: the producer knows it is that record (it waited for the receipt
    of the records before it), refuses it alone and delivers the 200 others exactly once;
    the drop is counted and announced as on RabbitMQ."""
    url = f"{small_frame_activemq}/queue/{unique_name('big')}" + (f"?{query}" if query else "")
    flushed, stats, docs = _run(url, tmp_path / "spool")
    _check(flushed, stats, docs, tmp_path, capsys)


def test_pack_bytes_above_max_message_bytes_is_a_configuration_error() -> None:
    """A config whose full packed messages the broker would refuse is refused at startup, in
    one line naming both options."""
    with pytest.raises(ConfigurationError, match=r"pack_bytes=.*above max_message_bytes"):
        MQHandler("amqp://localhost/?pack_bytes=2MiB&max_message_bytes=1MiB", spool=False)


@pytest.mark.parametrize("url", ["amqp://localhost/", "stomp://localhost/queue/logs"])
def test_max_record_bytes_above_max_message_bytes_is_a_configuration_error(url: str) -> None:
    """Records the formatter would let through whole but the broker would refuse (and the
    handler drop) are refused at startup, in one line naming both options; with a
    ``max_message_bytes`` that holds them, the handler starts."""
    with pytest.raises(ConfigurationError, match=r"max_record_bytes=.*above max_message_bytes"):
        MQHandler(url, spool=False, max_record_bytes=32 * 1024 * 1024)
    sep = "&" if "?" in url else "?"
    MQHandler(
        url + f"{sep}max_message_bytes=64MiB", spool=False, max_record_bytes=32 * 1024 * 1024
    ).close()


def test_packer_keeps_packs_under_the_limit_even_when_compression_grows_them() -> None:
    """Incompressible records packed up to the limit: gzip makes the body larger than its
    records, so the packer halves such a pack; no pack of several records is above the
    limit, and the records stay in order, each exactly once."""
    import os

    from mqlogging._types import Message

    messages = [Message(f"id{i}", os.urandom(1000).hex().encode()) for i in range(64)]
    packer = Packer(PackOptions(records=1000, max_bytes=64 * 1024, compress="gzip"))
    packs = packer.pack(messages, limit=32 * 1024)
    assert all(len(p.body) <= 32 * 1024 for p in packs)
    assert [i for p in packs for i in range(p.first, p.first + p.count)] == list(range(64))


def test_size_guard_learns_only_a_smaller_limit() -> None:
    """The limit is learnt from RabbitMQ's refusal text, or from the size of the message a
    refusal about size (ActiveMQ) concerns, only when it is below the one applied (anything
    else is not a size refusal this producer can act on); big messages wait for the
    confirms before them (and on STOMP travel alone)."""
    from mqlogging.backends.amqp import AMQPEndpoint

    text = "PRECONDITION_FAILED - message size 2000000 is larger than configured max size 1048576"
    assert stated_limit(text) == LIMIT
    assert stated_limit("NOT_FOUND - no exchange 'x'") is None
    guard = SizeGuard(AMQPEndpoint.from_url("amqp://localhost/"))
    assert guard.limit == 16 * 1024 * 1024
    assert guard.learn(text)
    assert guard.limit == LIMIT
    assert not guard.learn(text)  # nothing new: a second refusal is not acted on again
    big, small = 2 * LIMIT, 100
    assert guard.barriers([small, big, small, big]) == [1, 3]
    assert guard.alone([small, big, small, big]) == [1, 2, 3, 4]
    assert guard.alone([small, small]) == [2]
    # ActiveMQ names no limit: the first unconfirmed message, larger than any proven, is it
    assert not guard.learn("Processing error", culprit=big)
    assert guard.learn("The maximum frame size was exceeded", culprit=LIMIT)
    assert (guard.limit, guard.inferred) == (LIMIT - 1, True)


def _log_between_bigs(url: str, spool: Path, bigs: tuple[int, ...]) -> tuple[bool, dict[str, Any]]:
    """Log N small records, then for each size in ``bigs`` a record of that size followed by
    N small ones, all in one batch (flush_interval 1 s); flush, read stats, close."""
    handler = MQHandler(
        url,
        spool=spool,
        close_timeout=2,
        retry_max=0.5,
        flush_interval=1.0,
        max_record_bytes=4 * 1024 * 1024,
    )
    log = logging.getLogger(unique_name("bigs"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    for i in range(N):
        log.info("small %d", i)
    for k, size in enumerate(bigs):
        log.info("big %s", "x" * size)
        for i in range(N):
            log.info("small %d-%d", k, i)
    try:
        flushed = handler.flush(20)
        stats = handler.stats()
    finally:
        handler.close()
        log.handlers[:] = []
    return flushed, stats


def _check_bigs(
    url: str,
    bigs: int,
    flushed: bool,
    stats: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every small record delivered exactly once, each big one counted once as
    too_large_for_broker (and not also as confirmed) and named by a marker, the audit
    explaining every gap."""
    docs = _drain(url)
    records = [d for d in docs if not d["mqlogging"].get("dropped")]
    ids = Counter(d["event"]["id"] for d in records)
    assert flushed, f"flush() timed out; dropped {stats['dropped']}"
    assert sum(ids.values()) - len(ids) == 0, "records delivered twice"
    assert len(ids) == (bigs + 1) * N
    assert {d["message"].split()[0] for d in records} == {"small"}
    assert stats["dropped"] == {"too_large_for_broker": bigs}
    # a refused record is counted as dropped, not also as confirmed
    assert stats["confirmed"] == len(ids) + stats["markers"]["sent"]
    code, report = _audit(docs, tmp_path / "sink.jsonl", capsys)
    [producer] = report["producers"]
    assert (code, producer["missing"], producer["duplicates"]) == (0, 0, 0)
    assert producer["dropped"] == bigs
    assert {r["reason"] for r in producer["dropped_ranges"]} == {"too_large_for_broker"}


def test_several_big_records_of_falling_size_on_activemq_are_not_duplicated(
    small_frame_activemq: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One batch holding five records above ActiveMQ's frame limit (whose refusal names no
    limit, so each teaches only a bound below its own size), each smaller than the one
    before, with small records between them: every small record arrives exactly once (no
    round cap sends the batch's confirmed records again) and the five big ones are counted
    and announced as too_large_for_broker. (Review 10, D1: 150 duplicates.)"""
    url = f"{small_frame_activemq}/queue/{unique_name('falling')}"
    bigs = (2_000_000, 1_800_000, 1_600_000, 1_400_000, 1_200_000)
    flushed, stats = _log_between_bigs(url, tmp_path / "spool", bigs)
    _check_bigs(url, len(bigs), flushed, stats, tmp_path, capsys)


def test_packed_two_big_records_on_activemq_are_both_counted(
    small_frame_activemq: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Packed messages to ActiveMQ (frame limit 1 MiB, refusal names no limit), one batch
    holding a 2 MB record and later a 1.5 MB one: both are counted as too_large_for_broker
    and announced, every small record arrives exactly once. (Review 10, D4: the record the
    packer refused up front in a round that then hit a size refusal vanished uncounted.)"""
    url = f"{small_frame_activemq}/queue/{unique_name('packed2')}?pack=50"
    flushed, stats = _log_between_bigs(url, tmp_path / "spool", (2_000_000, 1_500_000))
    _check_bigs(url, 2, flushed, stats, tmp_path, capsys)


def _spool_with_a_big_record(spool: Path) -> None:
    """Write N small records, a 2 MB one and N small ones to ``spool`` (no broker up)."""
    down = f"amqp://guest:guest@127.0.0.1:{free_port()}/?exchange=&queue=q"
    handler = MQHandler(
        down, spool=str(spool), retry_max=0.05, close_timeout=1, max_record_bytes=4 * 1024**2
    )
    log = logging.getLogger(unique_name("replay"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    for i in range(N):
        log.info("small %d", i)
    log.info("big %s", "x" * 2_000_000)
    for i in range(N):
        log.info("small after %d", i)
    handler.close()
    log.handlers[:] = []


def test_spool_replay_of_a_spool_holding_an_oversize_record(
    small_frame_activemq: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``mqlogging spool replay`` of a spool holding a 2 MB record among small ones, to an
    ActiveMQ whose frame limit is 1 MiB, run twice as an operator re-running it would: the
    first run goes through, exits 3 and names the refused record and its reason on stderr;
    the second has nothing left (exit 0); every small record arrives exactly once and the
    spool is empty. (Review 10, D2: PartlyRefused escaped before the batch was committed,
    every rerun sent the batch again and the spool never drained.) The refused record is
    announced by a drop marker the replay sends: the audit counts it as dropped
    (too_large_for_broker), not missing (it reported one record lost before)."""
    spool = tmp_path / "spool"
    _spool_with_a_big_record(spool)
    url = f"{small_frame_activemq}/queue/{unique_name('replay')}"
    capsys.readouterr()
    codes = [main(["spool", "replay", str(spool), "--to", url, "--quiet"])]
    first = capsys.readouterr().err
    codes.append(main(["spool", "replay", str(spool), "--to", url, "--quiet"]))
    second = capsys.readouterr().err
    docs = _drain(url)
    records = [d for d in docs if not d["mqlogging"].get("dropped")]
    ids = Counter(d["event"]["id"] for d in records)
    assert codes == [3, 0], (first, second)
    assert sum(ids.values()) == len(ids) == 2 * N
    code, report = _audit(docs, tmp_path / "sink.jsonl", capsys)
    handler = next(p for p in report["producers"] if p["records"] == 2 * N)
    assert (code, handler["missing"], handler["duplicates"], handler["dropped"]) == (0, 0, 0, 1)
    assert {r["reason"] for r in handler["dropped_ranges"]} == {"too_large_for_broker"}
    assert inspect_spool(str(spool)).records == 0
    assert "replayed 200 records" in first
    [named] = re.findall(r"refused 1 records for good \(too_large_for_broker\).*ids (\S+)", first)
    assert named not in ids
    assert "replayed 0 records" in second
    assert "refused" not in second
