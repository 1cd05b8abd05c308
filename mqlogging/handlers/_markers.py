"""Drop markers: the handler announces, in a record of its own, what it dropped by policy.

Every record carries its producer id and a gap-free sequence number (:mod:`mqlogging.wire`), so
a missing number at the sink is visible. To tell a record *dropped and counted* (queue overflow,
spool full or expired, no spool, closed) from one *lost*, the pipeline notes the sequence range
of every record it drops in a :class:`DropLedger`, and the sender turns the pending ranges into a
*marker*: a WARNING record of the handler's own producer (its next ``seq``) from the logger
``mqlogging`` whose ``mqlogging.dropped`` lists ``{"producer", "first", "last", "reason"}`` runs.
The marker goes the normal way (broker, or the spool when the lane is backlogged).

Rules:

- The seq of a dropped record is read back from its body with :func:`~mqlogging.wire.read_meta`:
  drops are rare and this keeps ``emit()`` (the normal path) exactly as cheap as without markers.
  A body that cannot be attributed (not JSON, no producer/seq: e.g. a torn spool line) is only
  counted (``unattributed``).
- Ranges are coalesced per (producer, reason): consecutive or overlapping drops make one run
  (``strategy="all"`` drops the same batch on two lanes: still one run).
- At most one marker per :data:`MARKER_INTERVAL` seconds per handler, carrying every range
  pending then, at most :data:`MAX_RANGES_PER_MARKER` (the rest go in the next one); plus one at
  once when :meth:`~mqlogging.MQHandler.flush` (hence ``close()``) has handled its records and
  waits for the marker of their drops. A drop storm costs one marker record per second, not one
  per drop.
- A marker rides at the end of the sender's next batch. Alone (no records queued) it is not
  written to a spool every lane is backlogged on: making room in a full spool for it would drop
  records, announced by the next marker, which would drop more... It waits for records to ride
  with, a direct lane, or ``close()``, which spools what is still pending.
- A marker is not a record to drop (review 9, R2): one that no lane published or spooled is
  held by the pipeline and goes out later (same seq, same ranges) -- it is never counted as a
  dropped record, nor in ``markers.sent`` (:meth:`DropLedger.count_sent`, only once it went
  out). Only a spool's bounds may delete a spooled marker: its own seq then becomes a range of
  the next marker, and the ranges it carried (read back from its body) are pending again, so
  nothing announced is forgotten.
- Memory is bounded: beyond :data:`MAX_PENDING_RANGES` pending runs (only reachable when records
  are dropped one in two for a long time and no marker can be delivered), further drops are
  counted in ``unannounced`` instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ..wire import NAMESPACE, DroppedRange, decode, read_meta

__all__ = [
    "MARKER_INTERVAL",
    "MAX_PENDING_RANGES",
    "MAX_RANGES_PER_MARKER",
    "DropLedger",
    "dropped_runs",
    "marker_record",
    "marker_stamp",
]

MARKER_INTERVAL = 1.0
MAX_RANGES_PER_MARKER = 1000
MAX_PENDING_RANGES = 100_000


_KEY = b'"mqlogging":'


def _namespace(body: bytes) -> dict[str, Any] | None:
    """The ``mqlogging`` object of an encoded record (``None`` if it has none or is not JSON).

    The formatter writes that object last, so it is parsed alone (a few dozen bytes) when the
    text from the last ``"mqlogging":{`` to the closing brace of the document is one JSON
    object: that is only the case for the top-level key (a nested one leaves extra closing
    braces; quotes inside strings are escaped). Anything else: the whole body is parsed.
    """
    start = body.rfind(_KEY + b"{")
    if start >= 0 and body.endswith(b"}"):
        ns: Any = decode(body[start + len(_KEY) : -1])
        if isinstance(ns, dict):
            return ns
    doc: Any = decode(body)
    ns = doc.get(NAMESPACE) if isinstance(doc, dict) else None
    return ns if isinstance(ns, dict) else None


def marker_record(ranges: Sequence[DroppedRange]) -> logging.LogRecord:
    """The record announcing that ``ranges`` were dropped: a WARNING of logger ``mqlogging``
    whose message counts them and names their reasons (format it with :func:`marker_stamp`)."""
    count = sum(r.last - r.first + 1 for r in ranges)
    reasons = ", ".join(sorted({r.reason for r in ranges}))
    return logging.LogRecord(
        "mqlogging", logging.WARNING, __file__, 0,
        "mqlogging dropped %d records (%s)", (count, reasons), None,
    )  # fmt: skip


def marker_stamp(producer: str, seq: int, ranges: Sequence[DroppedRange]) -> dict[str, Any]:
    """The ``mqlogging`` stamp of a marker: its own producer and seq (a lost marker is a
    visible gap too) and the ``dropped`` ranges it announces (:mod:`mqlogging.wire`)."""
    return {"producer": producer, "seq": seq, "dropped": [r.as_json() for r in ranges]}


def dropped_runs(bodies: Iterable[bytes], reason: str) -> tuple[list[DroppedRange], int]:
    """The runs of consecutive sequence numbers among dropped ``bodies``, and how many bodies
    could not be attributed to a producer.

    A dropped marker contributes its own seq (for ``reason``) and, as they were, the ranges it
    carried. (Called for every line of a spool segment its bounds delete: kept tight.)
    """
    runs: list[DroppedRange] = []
    carried: list[DroppedRange] = []
    unattributed = 0
    producer: str | None = None
    first = last = 0
    for body in bodies:
        ns = _namespace(body)
        meta = read_meta({NAMESPACE: ns}) if ns is not None else None
        if meta is None or meta.producer is None or meta.seq is None:
            unattributed += 1
            continue
        if meta.dropped:
            carried.extend(meta.dropped)
        if meta.producer == producer and meta.seq == last + 1:
            last = meta.seq
            continue
        if producer is not None:
            runs.append(DroppedRange(producer, first, last, reason))
        producer, first, last = meta.producer, meta.seq, meta.seq
    if producer is not None:
        runs.append(DroppedRange(producer, first, last, reason))
    return runs + carried, unattributed


class DropLedger:
    """Ranges dropped and not announced yet, coalesced per (producer, reason). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[tuple[str, str], list[DroppedRange]] = {}
        self._size = 0
        self.unattributed = 0
        self.unannounced = 0
        #: Markers that went out (published or spooled): see :meth:`count_sent`.
        self.markers = 0
        self.next_due = 0.0
        #: Counts :meth:`note` calls: flush() waits for the marker of the drops before it.
        self.generation = 0

    def __bool__(self) -> bool:
        return self._size > 0

    def note(self, bodies: Iterable[bytes], reason: str) -> None:
        """Record the drop of ``bodies`` (encoded records) for ``reason``."""
        runs, unattributed = dropped_runs(bodies, reason)
        self.note_runs(runs, unattributed)

    def note_runs(self, runs: Iterable[DroppedRange], unattributed: int = 0) -> None:
        """Record the drop of the records of ``runs`` (known by their seqs, e.g. a record
        the handler numbered but could not make into a message at all)."""
        with self._lock:
            self.generation += 1
            self.unattributed += unattributed
            for run in runs:
                self._add_locked(run)

    def _add_locked(self, run: DroppedRange) -> None:
        runs = self._runs.setdefault((run.producer, run.reason), [])
        if runs:
            last = runs[-1]
            if run.first <= last.last + 1 and run.last >= last.first - 1:
                first, end = min(last.first, run.first), max(last.last, run.last)
                runs[-1] = DroppedRange(run.producer, first, end, run.reason)
                return
        if self._size >= MAX_PENDING_RANGES:
            self.unannounced += run.last - run.first + 1
            return
        runs.append(run)
        self._size += 1

    def take(self) -> tuple[list[DroppedRange], int]:
        """The pending ranges for one marker (at most ``MAX_RANGES_PER_MARKER``), oldest
        first, and the generation they complete (0 while more remain); starts the interval
        until the next marker."""
        out: list[DroppedRange] = []
        with self._lock:
            for key in list(self._runs):
                runs = self._runs[key]
                room = MAX_RANGES_PER_MARKER - len(out)
                out.extend(runs[:room])
                del runs[:room]
                if not runs:
                    del self._runs[key]
                if len(out) >= MAX_RANGES_PER_MARKER:
                    break
            self._size -= len(out)
            if out:
                self.next_due = time.monotonic() + MARKER_INTERVAL
            generation = self.generation if self._size == 0 else 0
        out.sort(key=lambda r: (r.producer, r.first))
        return out, generation

    def count_sent(self) -> None:
        """A marker went out (a broker confirmed it or a spool took it). Counted here, not in
        :meth:`take`: a marker held back is not sent (review 9, R2)."""
        with self._lock:
            self.markers += 1

    def postpone(self) -> None:
        """A marker could not go out: try again one interval from now, not at once."""
        with self._lock:
            self.next_due = time.monotonic() + MARKER_INTERVAL
