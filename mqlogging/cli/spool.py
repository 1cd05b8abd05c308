"""``mqlogging spool inspect | export | replay``: offline tools for a spool directory.

For nodes that were offline: copy the handler's spool directory anywhere and ship it with
:func:`replay_spool`, which publishes batch by batch with broker confirmation and commits each
confirmed batch (the spool's ``.ack`` progress files), so an interrupted replay resumes where it
stopped and a segment is deleted only once every record of it was confirmed. ``--to`` may name
any endpoint: the ``DESTINATION`` file that binds a handler's spool directory to its own
destination (a handler configured for another destination refuses the directory) does not
apply to this explicit operator choice.

:func:`inspect_spool` and :func:`export_spool` only read: they never take a claim, never write a
progress file and never seal a segment, so they are safe next to a running application.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from .._types import Message
from ..backends import Producer, open_producer
from ..backends.endpoints import Endpoint
from ..errors import PartlyRefused, SpoolError
from ..formatting import JsonFormatter
from ..handlers._markers import dropped_runs, marker_record, marker_stamp
from ..spool import SpoolReader, SpoolRecord, lane_spools, record_id, refuse_lane_root, segments
from ..spool.format import is_json_line, unconfirmed_lines
from ..wire import decode, new_producer_id, read_meta

__all__ = ["ReplayResult", "SpoolSummary", "export_spool", "inspect_spool", "replay_spool"]


@dataclass(slots=True)
class SpoolSummary:
    """What a spool directory holds (records not yet confirmed)."""

    directory: str
    segments: int = 0
    open_segments: int = 0
    records: int = 0
    bytes: int = 0
    corrupt_lines: int = 0
    torn_lines: int = 0
    oldest: str | None = None
    newest: str | None = None
    subdirectories: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "segments": self.segments,
            "open_segments": self.open_segments,
            "records": self.records,
            "bytes": self.bytes,
            "corrupt_lines": self.corrupt_lines,
            "torn_lines": self.torn_lines,
            "oldest": self.oldest,
            "newest": self.newest,
            "subdirectories": list(self.subdirectories),
        }


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """Outcome of :func:`replay_spool`: records and batches confirmed, time taken, and the
    ids of the records the destination refused for good, by drop reason (e.g.
    ``"too_large_for_broker"``): no longer in the spool, never delivered."""

    records: int
    batches: int
    seconds: float
    refused: dict[str, list[str]] = field(default_factory=dict)

    @property
    def refused_count(self) -> int:
        """How many records the destination refused for good."""
        return sum(len(ids) for ids in self.refused.values())


def _check_dir(directory: str) -> str:
    path = os.path.abspath(os.path.expanduser(directory))
    if not os.path.isdir(path):
        msg = f"spool directory {directory!r} does not exist"
        raise SpoolError(msg)
    return path


def inspect_spool(directory: str) -> SpoolSummary:
    """Count the records, bytes, corrupt lines and time range of a spool directory.

    ``oldest``/``newest`` are the timestamps of the first and last readable records (their
    ``@timestamp``), records being in replay order. Sub-directories holding segments (one per
    endpoint with ``strategy="all"``) are listed, not summed: each goes to its own endpoint and
    is inspected, exported and replayed on its own.

    Raises:
        SpoolError: the directory does not exist or cannot be read.
    """
    path = _check_dir(directory)
    summary = SpoolSummary(path)
    for segment in segments(path):
        summary.segments += 1
        summary.open_segments += not segment.sealed
        try:
            size = os.stat(segment.path).st_size
        except FileNotFoundError:
            continue
        summary.bytes += max(0, size - segment.confirmed)
    for line in unconfirmed_lines(path):
        if line is None:
            summary.torn_lines += 1
            continue
        doc = decode(line)
        if doc is None and not is_json_line(line):
            summary.corrupt_lines += 1
            continue
        summary.records += 1
        stamp = read_meta(doc).timestamp
        if stamp is not None:
            if summary.oldest is None:
                summary.oldest = stamp
            summary.newest = stamp
    summary.subdirectories = [os.path.basename(lane) for lane in lane_spools(path)]
    return summary


def export_spool(directory: str, out: IO[bytes]) -> int:
    """Write every readable unconfirmed record to ``out`` as JSON lines; return the count.

    Corrupt and torn lines are skipped. Nothing in the directory changes.

    Raises:
        SpoolError: the directory does not exist, cannot be read, or is a ``strategy="all"``
            root (one spool per endpoint below it): export each of those instead.
    """
    path = _check_dir(directory)
    refuse_lane_root(path, "export")
    n = 0
    for line in unconfirmed_lines(path):
        if line is None:
            continue
        if not is_json_line(line):
            continue
        out.write(line + b"\n")
        n += 1
    return n


def replay_spool(
    directory: str,
    to: str | Endpoint,
    *,
    batch_size: int = 500,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Publish every record of ``directory`` to ``to``, FIFO, deleting only what was confirmed.

    ``progress(done, total)`` is called after each confirmed batch (``total`` counted at the
    start). Resumable: progress is committed batch by batch, so after an interruption a new
    call continues with the first unconfirmed batch (that batch may arrive twice, with the same
    record ids).

    Records the destination refuses for good (:class:`~mqlogging.errors.PartlyRefused`:
    above the broker's message size limit, or documents Elasticsearch rejects and the endpoint
    could not keep) are not sent again, as the handler does: sending them again can never
    succeed, and stopping would send the batch's confirmed records again on every rerun and
    never drain the spool. They are announced as the handler announces its drops, by a drop
    marker sent to the same destination (``mqlogging audit`` counts them as dropped for that
    reason, not lost); the batch is committed once the marker is confirmed, and their ids are
    in :attr:`ReplayResult.refused`, by reason.

    Raises:
        BackendError: the endpoint failed; what was confirmed so far stays confirmed.
        SpoolError: the directory cannot be read or progress cannot be recorded, or it is a
            ``strategy="all"`` root (one spool per endpoint below it): replay each of those.
    """
    path = _check_dir(directory)
    refuse_lane_root(path, "replay")
    total = inspect_spool(path).records
    started = time.monotonic()
    done = batches = 0
    refused: dict[str, list[str]] = {}
    producer = open_producer(to)
    announce = _Announcer(producer)
    try:
        with SpoolReader(path) as reader:
            while records := reader.read(batch_size):
                for reason, gone in _publish(producer, records).items():
                    refused.setdefault(reason, []).extend(record_id(r) for r in gone)
                    announce(gone, reason)
                reader.commit(records)
                done += len(records)
                batches += 1
                if progress is not None:
                    progress(done, max(total, done))
    finally:
        producer.close()
    lost = sum(len(ids) for ids in refused.values())
    return ReplayResult(done - lost, batches, time.monotonic() - started, refused)


def _publish(producer: Producer, records: Sequence[SpoolRecord]) -> dict[str, list[SpoolRecord]]:
    """Publish one batch; the records the destination refused for good, by reason (the rest
    of the batch is confirmed: the batch can be committed)."""
    try:
        producer.publish_batch([Message(record_id(r), r.body) for r in records])
    except PartlyRefused as exc:
        return {exc.drop_reason: [r for r in records if record_id(r) in exc.ids]}
    return {}


class _Announcer:
    """Announces the records a replay could not deliver, as the handler announces its drops:
    a drop marker (:mod:`mqlogging.handlers`' markers) sent to the same destination, so
    ``mqlogging audit`` explains their sequence numbers instead of reporting them lost.

    The marker is this replay's own record (a new producer id, seq from 1). It is confirmed
    before the batch is committed: if it cannot be sent, the replay fails and a rerun sends
    the batch, and the marker, again.
    """

    def __init__(self, producer: Producer) -> None:
        self._producer = producer
        self._formatter = JsonFormatter()
        self._id = new_producer_id()
        self._seq = itertools.count(1)

    def __call__(self, records: Sequence[SpoolRecord], reason: str) -> None:
        runs, _ = dropped_runs((r.body for r in records), reason)
        if runs:  # records of no producer (another shipper's) have no seq to announce
            stamp = marker_stamp(self._id, next(self._seq), runs)
            marker = self._formatter.format_message(marker_record(runs), stamp)
            self._producer.publish_batch([marker])


# -- the ``mqlogging spool`` subcommands ------------------------------------------------------


def inspect_command(directory: str, *, as_json: bool = False) -> int:
    """``mqlogging spool inspect DIR``: print a summary of the directory; exit code 0."""
    summary = inspect_spool(directory)
    if as_json:
        import json

        print(json.dumps(summary.as_dict(), indent=2))
        return 0
    rows = [
        ("directory", summary.directory),
        ("records", str(summary.records)),
        ("bytes", str(summary.bytes)),
        ("segments", f"{summary.segments} ({summary.open_segments} open)"),
        ("oldest", summary.oldest or "-"),
        ("newest", summary.newest or "-"),
        ("corrupt lines", str(summary.corrupt_lines)),
        ("torn lines", str(summary.torn_lines)),
    ]
    if summary.subdirectories:
        lanes = ", ".join(summary.subdirectories)
        rows.append(("per-endpoint spools", f"{lanes} (not counted above: use each on its own)"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def export_command(directory: str, out: IO[bytes] | None = None) -> int:
    """``mqlogging spool export DIR``: JSON lines on stdout, a count on stderr; exit code 0."""
    import sys

    stream = out if out is not None else sys.stdout.buffer
    n = export_spool(directory, stream)
    stream.flush()
    print(f"mqlogging: exported {n} records", file=sys.stderr)
    _note_lanes_left(directory, "exported")
    return 0


class _Progress:
    """Replay progress on stderr: a live line on a terminal, a line every 10% otherwise."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last_decile = -1

    def __call__(self, done: int, total: int) -> None:
        rate = done / max(time.monotonic() - self.started, 1e-6)
        pct = 100 * done // max(total, 1)
        if self.tty:
            width = 30
            filled = width * done // max(total, 1)
            bar = "#" * filled + "-" * (width - filled)
            line = f"\rreplay [{bar}] {done}/{total} {pct:3d}% {rate:,.0f} rec/s"
            self.stream.write(line)
            self.stream.flush()
        elif pct // 10 != self.last_decile:
            self.last_decile = pct // 10
            print(f"replay: {done}/{total} records ({pct}%), {rate:,.0f} rec/s", file=self.stream)

    def end(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


REFUSED_EXIT = 3
"""Exit code of ``mqlogging spool replay`` when the replay went through but the destination
refused records for good (named on stderr): they left the spool, there is nothing to rerun."""

_NAMED_IDS = 20


def replay_command(directory: str, to: str, *, batch_size: int = 500, quiet: bool = False) -> int:
    """``mqlogging spool replay DIR --to URL``: 0 when everything was confirmed, 1 when the
    replay stopped (run it again), :data:`REFUSED_EXIT` when it went through but the
    destination refused records for good (named on stderr; no longer in the spool)."""
    import sys

    from ..errors import MQLoggingError

    progress = None if quiet else _Progress(sys.stderr)
    done = [0]

    def report(n: int, total: int) -> None:
        done[0] = n
        if progress is not None:
            progress(n, total)

    endpoint = Endpoint.from_url(to)
    refuse_lane_root(_check_dir(directory), "replay")  # a usage error (exit 2), not a failure
    try:
        result = replay_spool(directory, endpoint, batch_size=batch_size, progress=report)
    except MQLoggingError as exc:
        if progress is not None:
            progress.end()
        print(
            f"mqlogging: error: replay to {endpoint.redacted()} stopped after {done[0]} "
            f"confirmed records: {exc}",
            file=sys.stderr,
        )
        return 1
    if progress is not None:
        progress.end()
    print(
        f"mqlogging: replayed {result.records} records to {endpoint.redacted()} "
        f"in {result.seconds:.1f}s",
        file=sys.stderr,
    )
    _note_records_left(directory)
    _note_lanes_left(directory, "replayed")
    if result.refused:
        _report_refused(result, endpoint.redacted())
        return REFUSED_EXIT
    return 0


def _report_refused(result: ReplayResult, where: str) -> None:
    """Name the records the destination refused for good on stderr (escaped: ids come from
    the spool's lines), at most :data:`_NAMED_IDS` per reason."""
    import sys

    from ..tail import escape

    for reason, ids in result.refused.items():
        shown = ", ".join(escape(i) for i in ids[:_NAMED_IDS])
        more = f" and {len(ids) - _NAMED_IDS} more" if len(ids) > _NAMED_IDS else ""
        print(
            f"mqlogging: error: {where} refused {len(ids)} records for good "
            f"({escape(reason)}); they are no longer in the spool and were not delivered "
            f"(nothing to rerun): ids {shown}{more}",
            file=sys.stderr,
        )


def _note_records_left(directory: str) -> None:
    """Say so when records are still in the spool after a replay: their segments were claimed
    by a running process (a handler sending them, or one that is still exiting), or written
    during the replay. Without this, "replayed 0 records" read as "nothing to do"."""
    import sys

    left = inspect_spool(_check_dir(directory)).records
    if left:
        print(
            f"mqlogging: note: {left} records are still in the spool: a running process holds "
            "them (it sends them itself) or wrote them during the replay; run replay again "
            "once it has exited",
            file=sys.stderr,
        )


def _note_lanes_left(directory: str, done: str) -> None:
    """Name the per-endpoint spools below a spool that also holds segments of its own (its
    strategy changed to ``"all"``): they were not part of what was just done."""
    import sys

    lanes = lane_spools(_check_dir(directory))
    if lanes:
        print(
            f"mqlogging: note: per-endpoint spools below it were not {done}: " + ", ".join(lanes),
            file=sys.stderr,
        )
