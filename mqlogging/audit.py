"""``mqlogging audit``: show from what a sink holds that no record was lost, per producer.

Every record :class:`~mqlogging.MQHandler` sends carries its producer id and a gap-free sequence
number, and every drop by policy is announced by a marker record (:mod:`mqlogging.wire`). The
audit reads a sink for a time window and reports, per producer: records, first/last seq and time,
the ranges dropped by policy (with their reasons), duplicates (one seq stored more than once) and
*gaps*: missing sequence numbers no marker explains — records lost. Exit status 0 when there is
no unexplained gap, 1 when there is one, 2 on a usage error or an unreadable source.

Sources:

- ``--es URL --index PATTERN``: Elasticsearch through the official client, one point-in-time
  with ``search_after`` sorted by (producer, seq), pages of ``--page-size`` documents fetching
  only the ``mqlogging`` object and the time; the markers are read in a second pass *without* the
  time window (a marker is sent after the drop it announces, possibly after ``--until``).
- ``--file PATH...``: JSON-lines files such as the collector's file sink (globs and rotated files
  accepted, ``.gz`` too).
- ``--spool DIR...``: spool directories (records not yet confirmed), read-only; the drops the
  spool journaled (``dropped.log``) that no record can be attributed to (torn or corrupt lines)
  are shown as ``unattributed``.

Dead letters (``--dead-letters SRC...``, repeatable, with any of the sources above): records
set aside instead of stored are kept, not lost — the collector's dead letters (poison
messages; by default the spool directory ``<state_dir>/dead-letters``) and the Elasticsearch
endpoint's rejected spool (``rejected=``), both in the envelope of :mod:`mqlogging.deadletters`
(also read: a bare record of ours, as a broker's dead-letter queue holds it). SRC is a spool
directory (what it still keeps, read-only), a JSON-lines file (globs, ``.gz``), or a URL read
through a :class:`~mqlogging.backends.Tap` with ``backlog`` until no dead letter arrives for
two seconds: nothing is consumed or acked, and a transport whose tap cannot show what is
already waiting (an AMQP queue cannot be browsed) is refused rather than read as empty.
ActiveMQ shows a queue browser at most its first ``maxBrowsePageSize`` (400) messages: dead
letters past those read as gaps (a false alarm, never a false pass). Each
original record's seq counts as explained whatever its time (like a marker's ranges); per
producer the report gives ``dead_lettered`` (explained seqs not also stored: a seq stored *and*
dead-lettered, one copy of a redelivered record refused, counts as stored),
``dead_lettered_ranges`` and the top ``dead_letter_reasons``; an original without producer/seq
(undecodable) counts in ``totals.dead_lettered_unattributed``. Without ``--until`` a producer
is checked up to its highest stored *or* dead-lettered seq.

Memory is O(producers + gaps), not O(records): each producer keeps its sequence numbers as a set
of sorted runs (:class:`SeqRuns`), and a mostly contiguous sequence of millions of records is a
handful of runs. A duplicate is an insert that overlaps a run.

What a gap means, and its limits:

- Without ``--since`` a producer's sequence is checked from 1. With it, from the seq after the
  producer's highest one timed before ``--since`` (``"start": "after seq N"``; for
  Elasticsearch one terms + max aggregation per 500 producers of the window finds it), so
  records lost at the window's start are gaps. When no stamped record of the source precedes
  the window, the window covers the whole source and the check starts at 1 as without
  ``--since``. A producer with nothing before the window while others have something is
  checked from its first seq in the window (``"start": "first in window"``): retention may have
  deleted its beginning, so records lost just before that first seq cannot be seen (audit
  without ``--since`` to check them). A gap is checked up to the last seq seen: records lost
  *after* a producer's last record in the sink cannot be seen (nothing says how many there were)
  until a later record or marker of that producer arrives. A handler's marker for drops before
  ``close()`` is sent (or spooled) during the close, so a drop at the end is visible through it.
- Ranges named by a marker count as explained whatever the marker's time. ``dropped`` counts the
  announced numbers that are absent; ``announced`` all of them: with ``strategy="all"`` a record
  dropped on one endpoint's lane still reaches the other endpoint's sink, and so does the marker
  (markers go to every lane), so there ``announced`` exceeds ``dropped``.
- Documents without producer/seq (other senders, older mqlogging) are only counted
  (``unstamped``); lines that are not JSON objects are counted as ``unreadable``.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import gzip
import json
import os
import re
import sys
import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import IO, Any

from .deadletters import open_letter
from .errors import ConfigurationError, MissingDependencyError, SinkError
from .spool import dropped_totals, refuse_lane_root, segments
from .wire import TIME_KEYS, DroppedRange, RecordMeta, decode, read_meta

__all__ = [
    "Audit",
    "SeqRuns",
    "Window",
    "add_arguments",
    "audit_dead_letters",
    "audit_es",
    "audit_files",
    "audit_spool",
    "run_command",
]

_UNATTRIBUTED_SPOOL_REASONS = ("torn", "corrupt", "rejected")
_SAMPLE_RUNS = 1000  # duplicate ranges kept per producer for the report (the count is exact)
_REASON_CHARS = 200  # a dead letter's reason as kept for the report
_MAX_REASONS = 100  # distinct reasons counted per producer; the rest count as "(other reasons)"
_TOP_REASONS = 5  # reasons shown per producer


_BLOCK = 1024  # most runs per block: bounds the splice an insert makes


class SeqRuns:
    """A set of sequence numbers kept as sorted, disjoint, non-adjacent runs ``[first, last]``.

    The runs live in blocks of at most ``block`` runs (a B-tree of height two, as in
    ``sortedcontainers``): an insert bisects the block maxima, then the block, and splices only
    that block, so it costs O(log runs) plus a splice of bounded size, whatever the order of the
    inserts. A flat list spliced on every out-of-order insert made records arriving
    odd-first-then-even (roundrobin over two sinks) quadratic: 140 s for a million. Appending in
    order (the common case) is O(1). :meth:`add` returns how many of the numbers were present
    already, which is how duplicates are counted without remembering every number.

    Args:
        block: the most runs a block holds before it is halved (small only in tests).
    """

    __slots__ = ("_block", "_firsts", "_lasts", "_maxes", "_runs")

    def __init__(self, *, block: int = _BLOCK) -> None:
        self._block = max(2, block)
        self._firsts: list[list[int]] = []  # per block, the first number of each run
        self._lasts: list[list[int]] = []  # per block, the last number of each run
        self._maxes: list[int] = []  # per block, its last number (bisected to find a block)
        self._runs = 0

    def __len__(self) -> int:
        """The number of runs."""
        return self._runs

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for firsts, lasts in zip(self._firsts, self._lasts, strict=True):
            yield from zip(firsts, lasts, strict=True)

    @property
    def lowest(self) -> int | None:
        """The smallest number held (``None`` when empty)."""
        return self._firsts[0][0] if self._firsts else None

    @property
    def highest(self) -> int | None:
        """The largest number held (``None`` when empty)."""
        return self._maxes[-1] if self._maxes else None

    def count(self) -> int:
        """How many numbers the set holds."""
        return sum(last - first + 1 for first, last in self)

    def add(self, first: int, last: int | None = None) -> int:
        """Add ``first``..``last`` (inclusive); return how many of them were already present."""
        last = first if last is None else last
        maxes = self._maxes
        if not maxes or first > maxes[-1] + 1:
            self._append(first, last)
            return 0
        if first == maxes[-1] + 1:
            self._lasts[-1][-1] = maxes[-1] = last
            return 0
        b = bisect_left(maxes, first - 1)  # first block ending at or after first - 1
        firsts, lasts = self._firsts[b], self._lasts[b]
        i = bisect_left(lasts, first - 1)  # first run that ends at or after first - 1
        if firsts[i] > last + 1:  # touches nothing: a new run
            firsts.insert(i, first)
            lasts.insert(i, last)
            self._runs += 1
            self._split(b)
            return 0
        present = max(0, min(lasts[i], last) - max(firsts[i], first) + 1)
        if self._next_first(b, i) > last + 1:  # touches run i only: widen it in place
            firsts[i], lasts[i] = min(firsts[i], first), max(lasts[i], last)
            self._maxes[b] = lasts[-1]
            return present
        if i + 2 < len(firsts) and firsts[i + 2] > last + 1:  # bridges runs i and i + 1
            present += max(0, min(lasts[i + 1], last) - firsts[i + 1] + 1)
            firsts[i], lasts[i] = min(firsts[i], first), max(lasts[i + 1], last)
            del firsts[i + 1], lasts[i + 1]
            self._runs -= 1
            return present
        return self._merge(b, i, first, last)

    def _next_first(self, b: int, i: int) -> float:
        """The first number of the run after run ``i`` of block ``b`` (infinity if none)."""
        if i + 1 < len(self._firsts[b]):
            return self._firsts[b][i + 1]
        return self._firsts[b + 1][0] if b + 1 < len(self._firsts) else float("inf")

    def _append(self, first: int, last: int) -> None:
        if not self._firsts or len(self._firsts[-1]) >= self._block:
            self._firsts.append([])
            self._lasts.append([])
            self._maxes.append(last)
        self._firsts[-1].append(first)
        self._lasts[-1].append(last)
        self._maxes[-1] = last
        self._runs += 1

    def _merge(self, b: int, i: int, first: int, last: int) -> int:
        """Replace the runs from block ``b``, index ``i`` on that touch ``first..last`` (there is
        at least one; they may continue into the next blocks) by their union with it."""
        present, low, high = 0, first, last
        block, start, done = b, i, False
        while block < len(self._firsts):
            firsts, lasts = self._firsts[block], self._lasts[block]
            k = bisect_right(firsts, last + 1, start)  # runs start..k-1 touch first..last
            if k > start:
                low, high = min(low, firsts[start]), max(high, lasts[k - 1])
                for a, z in zip(firsts[start:k], lasts[start:k], strict=True):
                    present += max(0, min(z, last) - max(a, first) + 1)
            done = k < len(firsts)
            del firsts[start:k], lasts[start:k]
            self._runs -= k - start
            if done:
                break
            block, start = block + 1, 0
        end = block if done else len(self._firsts)  # blocks b+1..end-1 were emptied
        del self._firsts[b + 1 : end], self._lasts[b + 1 : end], self._maxes[b + 1 : end]
        self._firsts[b].insert(i, low)
        self._lasts[b].insert(i, high)
        self._maxes[b] = self._lasts[b][-1]
        self._runs += 1
        self._split(b)
        return present

    def _split(self, b: int) -> None:
        """Halve block ``b`` once it holds more than ``block`` runs."""
        firsts, lasts = self._firsts[b], self._lasts[b]
        if len(firsts) <= self._block:
            return
        half = len(firsts) // 2
        self._firsts[b + 1 : b + 1] = [firsts[half:]]
        self._lasts[b + 1 : b + 1] = [lasts[half:]]
        del firsts[half:], lasts[half:]
        self._maxes[b : b + 1] = [lasts[-1], self._lasts[b + 1][-1]]

    def missing(self, low: int, high: int) -> Iterator[tuple[int, int]]:
        """The runs of ``low..high`` that are not in the set."""
        nxt = low
        for first, last in self:
            if last < nxt:
                continue
            if first > high:
                break
            if first > nxt:
                yield nxt, first - 1
            nxt = last + 1
        if nxt <= high:
            yield nxt, high

    def minus(self, ranges: Iterable[tuple[int, int]]) -> Iterator[tuple[int, int]]:
        """The parts of ``ranges`` (sorted, disjoint) that are not in the set."""
        for first, last in ranges:
            yield from self.missing(first, last)


@dataclass(slots=True)
class _Producer:
    name: str
    records: int = 0
    markers: int = 0
    duplicates: int = 0
    seqs: SeqRuns = field(default_factory=SeqRuns)
    duplicate_runs: SeqRuns = field(default_factory=SeqRuns)
    dropped: dict[str, SeqRuns] = field(default_factory=dict)
    dead: SeqRuns = field(default_factory=SeqRuns)  # seqs found in dead letters
    dead_reasons: dict[str, int] = field(default_factory=dict)
    first_time: str | None = None
    last_time: str | None = None
    # The same two times parsed: compared as moments, not strings (``+01:00`` against ``Z``),
    # and a time that does not parse is never shown as a producer's first or last.
    first_moment: datetime | None = None
    last_moment: datetime | None = None

    def saw(self, timestamp: str) -> None:
        """Widen the producer's time span to ``timestamp`` if it is a time."""
        moment = _parse_time(timestamp)
        if moment is None:
            return
        if self.first_moment is None or moment < self.first_moment:
            self.first_moment, self.first_time = moment, timestamp
        if self.last_moment is None or moment > self.last_moment:
            self.last_moment, self.last_time = moment, timestamp


def _parse_time(value: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_moment(value: str, *, now: datetime | None = None, option: str = "--since") -> datetime:
    """``2026-12-01T12:00:00Z`` (ISO-8601; UTC when no offset) or ``90s`` / ``15m`` / ``1h`` /
    ``2d`` / ``1w`` before ``now``.

    Raises:
        ConfigurationError: neither form.
    """
    match = _RELATIVE.match(value.strip())
    if match:
        now = now or datetime.now(timezone.utc)
        return now - timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    moment = _parse_time(value.strip())
    if moment is None:
        msg = f"{option} {value!r}: use an ISO-8601 time (2026-12-01T12:00:00Z) or 15m, 1h, 2d"
        raise ConfigurationError(msg)
    return moment


@dataclass(frozen=True, slots=True)
class Window:
    """Records whose time is in ``[since, until)``; ``None`` is open-ended."""

    since: datetime | None = None
    until: datetime | None = None

    @property
    def bounded(self) -> bool:
        return self.since is not None or self.until is not None

    def contains(self, timestamp: str | None) -> bool:
        """True if a record of that time (as the record carries it) is in the window."""
        if not self.bounded:
            return True
        moment = _parse_time(timestamp) if timestamp else None
        if moment is None:
            return False
        if self.since is not None and moment < self.since:
            return False
        return self.until is None or moment < self.until

    def precedes(self, timestamp: str | None) -> bool:
        """True if a record of that time is before the window's start (``since``)."""
        if self.since is None or not timestamp:
            return False
        moment = _parse_time(timestamp)
        return moment is not None and moment < self.since


class Audit:
    """Accumulates records and markers, then reports per producer (:meth:`report`).

    Where each producer's sequence is checked from (its *start*) follows from what precedes
    the window: seq 1 without ``since``; the seq after the highest one timed before ``since``
    (:meth:`add_before`), so records lost at the window's start are gaps; seq 1 again when
    no stamped record of the source precedes the window (it then covers the whole source);
    else, for a producer with nothing before the window while others have something, its
    first seq in the window (retention may have deleted its beginning), reported as such.

    Args:
        window: which records count (markers count whatever their time).
        from_one: True checks each sequence from 1 whatever the window; False never assumes
            that the window covers the whole source; None (default) decides as above.
    """

    def __init__(self, window: Window | None = None, *, from_one: bool | None = None) -> None:
        self.window = window or Window()
        self.from_one = from_one
        self.before: dict[str, int] = {}  # producer -> highest seq timed before the window
        self.anything_before = False  # a stamped record of the source precedes the window
        self.producers: dict[str, _Producer] = {}
        self.unstamped = 0
        self.unreadable = 0
        self.outside = 0
        self.unattributed: dict[str, int] = {}
        self.dead_letters = 0  # dead letters read (envelopes or bare records)
        self.dead_unattributed = 0  # records in them without producer/seq, or undecodable

    def _producer(self, name: str) -> _Producer:
        entry = self.producers.get(name)
        if entry is None:
            entry = self.producers[name] = _Producer(name)
        return entry

    def add_document(self, doc: Any) -> None:
        """Account for one decoded record (``None`` for a line that could not be decoded)."""
        if not isinstance(doc, dict):
            self.unreadable += 1
            return
        self.add_meta(read_meta(doc))

    def add_meta(self, meta: RecordMeta, *, in_window: bool | None = None) -> None:
        """Account for one record's metadata (``in_window``: already filtered by the source)."""
        for dropped in meta.dropped:
            self.add_dropped(dropped)
        if meta.producer is None or meta.seq is None:
            self.unstamped += 1
            return
        if not (self.window.contains(meta.timestamp) if in_window is None else in_window):
            self.outside += 1
            if in_window is None and self.window.precedes(meta.timestamp):
                self.add_before(meta.producer, meta.seq)
            return
        entry = self._producer(meta.producer)
        entry.records += 1
        entry.markers += bool(meta.dropped)
        again = entry.seqs.add(meta.seq)
        if again:
            entry.duplicates += again
            if len(entry.duplicate_runs) < _SAMPLE_RUNS:
                entry.duplicate_runs.add(meta.seq)
        if meta.timestamp is not None:
            entry.saw(meta.timestamp)

    def add_dead_letter(self, doc: Any) -> None:
        """Account for one dead letter (a decoded envelope, :mod:`mqlogging.deadletters`): each
        original record's seq counts as explained, whatever its time (like a marker's ranges);
        a record that cannot be attributed to a producer still counts, as unattributed."""
        self.dead_letters += 1
        letter = open_letter(doc)
        reason = letter.reason[:_REASON_CHARS]
        for record in letter.records or (None,):
            meta = read_meta(record)
            for dropped in meta.dropped:  # a dead-lettered marker still announces its drops
                self.add_dropped(dropped)
            if meta.producer is None or meta.seq is None:
                self.dead_unattributed += 1
                continue
            entry = self._producer(meta.producer)
            entry.dead.add(meta.seq)
            reasons = entry.dead_reasons
            key = reason if reason in reasons or len(reasons) < _MAX_REASONS else "(other reasons)"
            reasons[key] = reasons.get(key, 0) + 1

    def add_before(self, producer: str, seq: int) -> None:
        """Note a record of ``producer`` timed before the window (only its seq is kept)."""
        self.anything_before = True
        if seq > self.before.get(producer, 0):
            self.before[producer] = seq

    def start(self, entry: _Producer) -> tuple[int | None, str]:
        """The seq ``entry``'s sequence is checked from, and why (see the class docstring)."""
        if self.from_one or (self.window.since is None and self.from_one is None):
            return 1, "seq 1"
        before = self.before.get(entry.name)
        if before is not None:
            return before + 1, f"after seq {before}"
        if self.from_one is None and not self.anything_before:
            return 1, "seq 1 (nothing precedes the window)"
        return entry.seqs.lowest, "first in window"

    def add_dropped(self, dropped: DroppedRange) -> None:
        """Account for a range a marker names (idempotent: a marker seen twice counts once)."""
        runs = self._producer(dropped.producer).dropped.setdefault(dropped.reason, SeqRuns())
        runs.add(dropped.first, dropped.last)

    def report(self) -> dict[str, Any]:
        """The result as one JSON-ready document; ``ok`` is False when a gap is unexplained."""
        to_dead = self.window.until is None
        producers = [
            _report_producer(p, *self.start(p), to_dead=to_dead)
            for _, p in sorted(self.producers.items())
        ]
        return {
            "ok": not any(p["gaps"] for p in producers),
            "window": {
                "since": self.window.since.isoformat() if self.window.since else None,
                "until": self.window.until.isoformat() if self.window.until else None,
            },
            "totals": {
                "producers": len(producers),
                "records": sum(p["records"] for p in producers),
                "missing": sum(p["missing"] for p in producers),
                "dropped": sum(p["dropped"] for p in producers),
                "duplicates": sum(p["duplicates"] for p in producers),
                "dead_lettered": sum(p["dead_lettered"] for p in producers),
                "dead_lettered_unattributed": self.dead_unattributed,
                "dead_letters": self.dead_letters,
                "unstamped": self.unstamped,
                "unreadable": self.unreadable,
                "outside_window": self.outside,
                "unattributed_drops": dict(self.unattributed),
            },
            "producers": producers,
        }


def _report_producer(
    entry: _Producer, low: int | None, start: str, *, to_dead: bool = True
) -> dict[str, Any]:
    """One producer's part of the report. Its sequence is checked from ``low`` up to its
    highest stored seq, or (``to_dead``: no ``--until`` cuts the source short) its highest
    dead-lettered one, whichever is higher."""
    explained = SeqRuns()
    dropped_ranges = []
    for reason, runs in sorted(entry.dropped.items()):
        for first, last in runs:
            explained.add(first, last)
            dropped_ranges.append({"first": first, "last": last, "reason": reason})
    dropped_ranges.sort(key=lambda r: (r["first"], r["reason"]))
    seqs = entry.seqs
    dropped = sum(b - a + 1 for a, b in seqs.minus(explained))
    announced = explained.count()
    dead = list(seqs.minus(entry.dead))  # dead-lettered and not stored (stored counts as such)
    for first, last in dead:
        explained.add(first, last)
    tops = [n for n in (seqs.highest, entry.dead.highest if to_dead else None) if n is not None]
    low = entry.dead.lowest if low is None and seqs.lowest is None and to_dead else low
    gaps: list[list[int]] = []
    if low is not None and tops:
        gaps = [[a, b] for a, b in explained.minus(seqs.missing(low, max(tops)))]
    reasons = sorted(entry.dead_reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "producer": entry.name,
        "start": start,
        "checked_from": low,
        "records": entry.records,
        "markers": entry.markers,
        "first_seq": seqs.lowest,
        "last_seq": seqs.highest,
        "first_time": entry.first_time,
        "last_time": entry.last_time,
        "missing": sum(b - a + 1 for a, b in gaps),
        "gaps": gaps,
        "dropped": dropped,
        "announced": announced,
        "dropped_ranges": dropped_ranges,
        "duplicates": entry.duplicates,
        "duplicate_seqs": [[a, b] for a, b in entry.duplicate_runs],
        "dead_lettered": sum(b - a + 1 for a, b in dead),
        "dead_lettered_ranges": [[a, b] for a, b in dead[:_SAMPLE_RUNS]],
        "dead_letter_reasons": [{"reason": r, "count": n} for r, n in reasons[:_TOP_REASONS]],
    }


# -- sources ------------------------------------------------------------------------------------


def expand_paths(patterns: Sequence[str], *, option: str = "--file") -> list[str]:
    """Every file the patterns name (globs expanded, sorted per pattern).

    Raises:
        ConfigurationError: a pattern matches no file (the message names ``option``).
    """
    paths: list[str] = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        found = [p for p in found if os.path.isfile(p)]
        if not found:
            msg = f"{option} {pattern!r}: no such file"
            raise ConfigurationError(msg)
        paths.extend(p for p in found if p not in paths)
    return paths


def file_lines(paths: Sequence[str]) -> Iterator[bytes]:
    """The non-blank lines of JSON-lines files, one at a time (``.gz`` too)."""
    for path in paths:
        opener = gzip.open if path.endswith(".gz") else open
        try:
            with opener(path, "rb") as f:
                yield from (line for line in f if line.strip())
        except OSError as exc:
            msg = f"cannot read {path!r}: {exc.strerror or exc}"
            raise ConfigurationError(msg) from exc


def _spool_lines(directory: str) -> Iterator[bytes]:
    """The unconfirmed lines of a spool directory, read-only (no claim); a torn last line is
    skipped, a segment replayed and deleted meanwhile too."""
    refuse_lane_root(directory, "audit")
    for view in segments(directory):
        try:
            with open(view.path, "rb") as f:
                f.seek(view.confirmed)
                yield from (line for line in f if line.endswith(b"\n") and line.strip())
        except FileNotFoundError:
            continue


def audit_files(audit: Audit, patterns: Sequence[str]) -> None:
    """Feed ``audit`` every line of JSON-lines files, one line at a time (``.gz`` too)."""
    for line in file_lines(expand_paths(patterns)):
        audit.add_document(decode(line))


def audit_spool(audit: Audit, directories: Sequence[str]) -> None:
    """Feed ``audit`` the unconfirmed records of spool directories (read-only, no claims), and
    the drops their journal could not attribute to a record (torn, corrupt lines)."""
    for directory in directories:
        if not os.path.isdir(directory):
            msg = f"--spool {directory!r}: not a directory"
            raise ConfigurationError(msg)
        for line in _spool_lines(directory):
            audit.add_document(decode(line))
        for reason, n in dropped_totals(directory).items():
            if reason in _UNATTRIBUTED_SPOOL_REASONS:
                audit.unattributed[reason] = audit.unattributed.get(reason, 0) + n


_TAP_QUIET = 2.0  # seconds without a new dead letter after which a tap is read to its end


def audit_dead_letters(audit: Audit, sources: Sequence[str]) -> None:
    """Feed ``audit`` the dead letters of ``sources``: spool directories (the collector's
    dead-letter spool, the Elasticsearch endpoint's rejected spool: what they still keep),
    JSON-lines files (globs, ``.gz``), or endpoint URLs read through a tap that shows what is
    waiting without consuming it (:func:`audit_dead_letter_tap`)."""
    for source in sources:
        if "://" in source:
            audit_dead_letter_tap(audit, source)
        elif os.path.isdir(source):
            for body in _spool_lines(source):
                audit.add_dead_letter(decode(body))
        else:
            for body in file_lines(expand_paths([source], option="--dead-letters")):
                audit.add_dead_letter(decode(body))


def audit_dead_letter_tap(audit: Audit, url: str, *, quiet: float = _TAP_QUIET) -> None:
    """Feed ``audit`` the dead letters waiting at ``url``, read through a :class:`~mqlogging.
    backends.Tap` with ``backlog`` (nothing consumed, nothing acked) until none arrives for
    ``quiet`` seconds.

    Raises:
        ConfigurationError: the transport's tap cannot show what is already waiting (an AMQP
            queue cannot be browsed: it would have to be consumed).
    """
    from .backends import TapOptions, open_tap

    with open_tap(url, TapOptions(backlog=True)) as tap:
        if not tap.backlog:
            msg = (
                f"--dead-letters {_redact(url)}: this transport cannot show the dead "
                "letters already waiting without consuming them; give the collector a local:// "
                "[dead_letter] url (the default) or a STOMP queue on ActiveMQ"
            )
            raise ConfigurationError(msg)
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < quiet:
            bodies = tap.poll(min(0.5, quiet))
            if bodies:
                idle_since = time.monotonic()
            for body in bodies:
                audit.add_dead_letter(decode(body))


_ES_SOURCE = ["mqlogging", *TIME_KEYS]  # the time of every schema (wire.read_meta)


def _es_client(url: str, ca_certs: str | None) -> Any:
    try:
        from elasticsearch import Elasticsearch
    except ImportError as exc:
        raise MissingDependencyError("elasticsearch", "elasticsearch") from exc
    kwargs: dict[str, Any] = {"request_timeout": 60}
    if ca_certs:
        kwargs["ca_certs"] = ca_certs
    return Elasticsearch(url, **kwargs)


def _producer_field(es: Any, index: str) -> str:
    """``mqlogging.producer`` when some index maps it as a keyword, else its ``.keyword``
    sub-field (Elasticsearch's dynamic mapping of strings)."""
    mappings = es.indices.get_mapping(index=index)
    for body in dict(mappings).values():
        props = body.get("mappings", {}).get("properties", {})
        producer = props.get("mqlogging", {}).get("properties", {}).get("producer", {})
        if producer.get("type") == "keyword":
            return "mqlogging.producer"
    return "mqlogging.producer.keyword"


def _es_window(window: Window) -> list[dict[str, Any]]:
    if not window.bounded:
        return []
    bounds: dict[str, str] = {}
    if window.since is not None:
        bounds["gte"] = window.since.isoformat()
    if window.until is not None:
        bounds["lt"] = window.until.isoformat()
    return [_es_time_range(bounds)]


def _es_time_range(bounds: dict[str, str]) -> dict[str, Any]:
    """A query on the record time, ``@timestamp`` (ecs) or ``timestamp`` (other schemas)."""
    should = [{"range": {key: dict(bounds)}} for key in ("@timestamp", "timestamp")]
    return {"bool": {"should": should, "minimum_should_match": 1}}


_BEFORE_CHUNK = 500  # producers per aggregation query (well below index.max_terms_count)


def _es_before(es: Any, index: str, field_name: str, audit: Audit) -> None:
    """Tell ``audit`` what precedes its window: whether any stamped record does (one count),
    and the highest seq before it of each producer of the window (one terms + max aggregation
    per ``_BEFORE_CHUNK`` producers), so a producer is checked from the seq after it."""
    since = audit.window.since
    if since is None or audit.from_one:
        return
    before = [{"exists": {"field": "mqlogging.seq"}}, _es_time_range({"lt": since.isoformat()})]
    if not int(es.count(index=index, query={"bool": {"filter": before}})["count"]):
        return
    audit.anything_before = True
    names = sorted(name for name, entry in audit.producers.items() if entry.records)
    for i in range(0, len(names), _BEFORE_CHUNK):
        chunk = names[i : i + _BEFORE_CHUNK]
        query = {"bool": {"filter": [*before, {"terms": {field_name: chunk}}]}}
        aggs = {
            "producers": {
                "terms": {"field": field_name, "size": len(chunk)},
                "aggs": {"seq": {"max": {"field": "mqlogging.seq"}}},
            }
        }
        resp = es.search(index=index, size=0, query=query, aggs=aggs)
        for bucket in resp["aggregations"]["producers"]["buckets"]:
            if bucket["seq"]["value"] is not None:
                audit.add_before(str(bucket["key"]), int(bucket["seq"]["value"]))


def _pit_scan(
    es: Any, index: str, query: dict[str, Any], sort: list[Any], page: int
) -> Iterator[dict[str, Any]]:
    """Every matching document's source, streamed in ``sort`` order through a point in time."""
    pit = es.open_point_in_time(index=index, keep_alive="5m")["id"]
    try:
        after: list[Any] | None = None
        while True:
            extra = {"search_after": after} if after is not None else {}
            resp = es.search(
                pit={"id": pit, "keep_alive": "5m"}, size=page, query=query, sort=sort,
                source=_ES_SOURCE, track_total_hits=False, **extra,
            )  # fmt: skip
            pit = resp.get("pit_id") or pit
            hits = resp["hits"]["hits"]
            if not hits:
                return
            for hit in hits:
                yield hit.get("_source") or {}
            after = hits[-1]["sort"]
    finally:
        with contextlib.suppress(Exception):  # it expires by itself anyway
            es.close_point_in_time(id=pit)


def audit_es(
    audit: Audit, url: str, index: str, *, page: int = 5000, ca_certs: str | None = None
) -> None:
    """Feed ``audit`` from Elasticsearch: the stamped records of the window sorted by (producer,
    seq), what precedes the window (:func:`_es_before`), every marker whatever its time, then
    the count of unstamped documents."""
    es = _es_client(url, ca_certs)
    try:
        field_name = _producer_field(es, index)
        window = _es_window(audit.window)
        stamped = {"bool": {"filter": [{"exists": {"field": "mqlogging.seq"}}, *window]}}
        sort = [{field_name: "asc"}, {"mqlogging.seq": "asc"}]
        for doc in _pit_scan(es, index, stamped, sort, page):
            meta = read_meta(doc)
            if meta.producer is None or meta.seq is None:
                audit.unstamped += 1
                continue
            audit.add_meta(meta, in_window=True)
        _es_before(es, index, field_name, audit)
        markers = {"exists": {"field": "mqlogging.dropped.first"}}
        for doc in _pit_scan(es, index, markers, [{"mqlogging.seq": "asc"}], page):
            for dropped in read_meta(doc).dropped:
                audit.add_dropped(dropped)
        others = {"bool": {"must_not": [{"exists": {"field": "mqlogging.seq"}}], "filter": window}}
        audit.unstamped += int(es.count(index=index, query=others)["count"])
    except Exception as exc:
        if isinstance(exc, (ConfigurationError, MissingDependencyError)):
            raise
        msg = f"cannot audit {index!r} at {_redact(url)}: {type(exc).__name__}: {exc}"
        raise SinkError(msg) from exc
    finally:
        es.close()


def _redact(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", url)


# -- output -------------------------------------------------------------------------------------


def _printable(text: str) -> str:
    """``text`` with control characters escaped, so a producer name cannot drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _ranges(items: Sequence[Sequence[int]], limit: int) -> str:
    shown = [f"{a}" if a == b else f"{a}-{b}" for a, b in items[:limit]]
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(shown) + more if shown else "-"


def _describe_start(start: str, low: int) -> str:
    """The text for where a sequence was checked from (``start`` as :meth:`Audit.start`)."""
    if start.startswith("after seq"):
        return f"from seq {low}, {start}: the last before the window"
    if start == "first in window":
        return f"from seq {low}, the first in the window: none of its records precedes it"
    return f"from seq {low}" + (": nothing precedes the window" if start != "seq 1" else "")


def _print_dead_lettered(p: dict[str, Any], out: IO[str], limit: int) -> None:
    """The ``dead-lettered`` line of one producer, with its ranges and top reasons."""
    if not p["dead_lettered"] and not p["dead_letter_reasons"]:
        return
    ranges = f": {_ranges(p['dead_lettered_ranges'], limit)}" if p["dead_lettered"] else ""
    print(f"  dead-lettered {p['dead_lettered']}{ranges}", file=out)
    for r in p["dead_letter_reasons"]:
        print(f"    {r['count']:>8}  {_printable(r['reason'])}", file=out)


def print_report(report: dict[str, Any], out: IO[str], limit: int = 20) -> None:
    """The human-readable report (``--json`` prints ``report`` itself)."""
    for p in report["producers"]:
        status = "GAPS" if p["gaps"] else "ok"
        print(f"producer {_printable(p['producer'])}  [{status}]", file=out)
        seqs = f"seq {p['first_seq']}..{p['last_seq']}" if p["records"] else "no records"
        print(f"  records     {p['records']} ({seqs}, {p['markers']} markers)", file=out)
        if p["first_time"]:
            times = f"{_printable(p['first_time'])} .. {_printable(p['last_time'])}"
            print(f"  time        {times}", file=out)
        dropped = [(r["first"], r["last"], _printable(r["reason"])) for r in p["dropped_ranges"]]
        shown = ", ".join(
            (f"{a}" if a == b else f"{a}-{b}") + f" {reason}" for a, b, reason in dropped[:limit]
        )
        more = f" (+{len(dropped) - limit} more)" if len(dropped) > limit else ""
        also = f" (announced {p['announced']})" if p["announced"] != p["dropped"] else ""
        ranges = f": {shown}{more}" if dropped else ""
        print(f"  dropped     {p['dropped']}{also}{ranges}", file=out)
        print(f"  duplicates  {p['duplicates']}" + (
            f": {_ranges(p['duplicate_seqs'], limit)}" if p["duplicates"] else ""
        ), file=out)  # fmt: skip
        _print_dead_lettered(p, out, limit)
        gaps = f": {_ranges(p['gaps'], limit)}" if p["gaps"] else ""
        print(f"  gaps        {p['missing']} missing{gaps}", file=out)
        if report["window"]["since"] and p["checked_from"] is not None:
            print(f"  checked     {_describe_start(p['start'], p['checked_from'])}", file=out)
    t = report["totals"]
    verdict = "OK: no unexplained gap" if report["ok"] else "LOSS: unexplained gaps"
    print(
        f"{verdict}; {t['producers']} producers, {t['records']} records, {t['missing']} missing, "
        f"{t['dropped']} dropped by policy, {t['dead_lettered']} dead-lettered, "
        f"{t['duplicates']} duplicates, "
        f"{t['unstamped']} unstamped, {t['unreadable']} unreadable",
        file=out,
    )
    if t["dead_lettered_unattributed"]:
        print(
            f"unattributed dead letters (no producer/seq, or undecodable): "
            f"{t['dead_lettered_unattributed']} of the {t['dead_letters']} read",
            file=out,
        )
    if t["unattributed_drops"]:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(t["unattributed_drops"].items()))
        print(f"unattributed drops (spool journal): {counts}", file=out)


# -- command ------------------------------------------------------------------------------------

DESCRIPTION = __doc__.split("\n\n")[0] if __doc__ else ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``mqlogging audit``'s options on ``parser``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--es", metavar="URL", help="Elasticsearch URL (credentials allowed)")
    source.add_argument("--file", nargs="+", metavar="PATH", help="JSON-lines files or globs")
    source.add_argument("--spool", nargs="+", metavar="DIR", help="spool directories")
    parser.add_argument(
        "--dead-letters", nargs="+", action="extend", default=[], metavar="SRC",
        help="dead letters that explain missing records: a dead-letter or rejected-records "
        "spool directory, JSON-lines files, or a URL read through a tap (nothing consumed)",
    )  # fmt: skip
    parser.add_argument("--index", metavar="PATTERN", help="index pattern (with --es)")
    parser.add_argument("--ca-certs", metavar="FILE", help="CA bundle for --es over https")
    parser.add_argument("--since", metavar="TIME", help="ISO-8601 time or 15m, 1h, 2d ago")
    parser.add_argument("--until", metavar="TIME", help="ISO-8601 time or 15m, 1h, 2d ago")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--page-size", type=int, default=5000, metavar="N", help=argparse.SUPPRESS)


def run_command(args: argparse.Namespace) -> int:
    """Run the audit the parsed ``args`` describe; 0 no unexplained gap, 1 gaps, 2 usage."""
    now = datetime.now(timezone.utc)
    since = parse_moment(args.since, now=now, option="--since") if args.since else None
    until = parse_moment(args.until, now=now, option="--until") if args.until else None
    if args.es and not args.index:
        msg = "--es needs --index PATTERN (e.g. --index 'logs-mqlogging-*')"
        raise ConfigurationError(msg)
    if args.index and not args.es:
        msg = "--index goes with --es"
        raise ConfigurationError(msg)
    audit = Audit(Window(since, until))
    if args.es:
        audit_es(audit, args.es, args.index, page=max(1, args.page_size), ca_certs=args.ca_certs)
    elif args.file:
        audit_files(audit, args.file)
    else:
        audit_spool(audit, args.spool)
    audit_dead_letters(audit, args.dead_letters)
    report = audit.report()
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print_report(report, sys.stdout)
    return 0 if report["ok"] else 1
