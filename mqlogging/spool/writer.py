"""Writing a spool: :class:`Spool` appends batches to its own open segment and keeps the bounds.

``append(bodies)`` writes a batch with one ``write(2)`` to this writer's own open segment;
several threads and several processes may append to one directory at the same time (each
:class:`Spool` instance has its own segment). Segments are sealed (renamed to
``<stem>.<records>.jsonl``) when they reach ``segment_bytes`` or ``segment_age``, on
:meth:`Spool.seal` and on :meth:`Spool.close`. ``fsync``: ``"never"``; ``"segment"`` (default;
a segment is fsynced when sealed, so a machine crash may lose the open segment's tail, never a
sealed segment); ``"always"`` (every append is fdatasync'ed before it returns). A failed write
(``ENOSPC``, ``EFBIG``...) is rolled back (the segment is truncated to its previous length and
sealed) and raised as :class:`~mqlogging.errors.SpoolError`: the records of that call were *not*
stored and the caller counts them.

Bounds
    ``max_bytes`` (all segments of the directory, every writer included) and ``max_age`` (a
    sealed segment whose newest record, i.e. its mtime, is older is dropped), enforced by
    writers on append (the directory is rescanned at most once a second, or when the estimate
    says full); readers replay whatever is there, so a spool shipped late is not discarded.
    Overflow policy: ``"drop_oldest"`` (default: delete the oldest sealed segments not being
    replayed), ``"drop_newest"`` (the new batch is dropped; ``append`` returns 0) or ``"refuse"``
    (:class:`~mqlogging.errors.SpoolFull` is raised). Every dropped record is counted *by
    record* (sealed names carry their line count, ``.ack`` files the confirmed part) in
    ``dropped.log``, which :meth:`Spool.stats` sums over every process that used the directory.

Deleted under the writer
    A tmp cleaner or an operator may delete the directory (or the open segment) while a writer
    appends: writes to the unlinked file still succeed and would vanish. So every append (one
    ``fstat``, after its write), every seal, and every companion reader that finds nothing more
    to read (:meth:`Spool.verify`) checks that the open segment still has a name. If not, its
    records no companion reader confirmed are counted as ``deleted`` drops (and given to
    :attr:`Spool.drop_hook`), the directory is re-created (bound to the same ``DESTINATION``)
    and the batch is written again to a fresh segment, so ``append`` never reports a batch
    stored that is not in the directory. The unlinked file is first cut after the records a
    companion reader already handed out (:meth:`Spool.handed_out`): that reader, which still
    holds the file open, reads nothing after them (:meth:`Spool.cut_at`), so a record not
    handed out is either delivered or counted, and the batch written again arrives once.
    Records handed out but not confirmed, or read in the instant between the check and the
    cut, may be both (counted *and* delivered, or delivered twice): the safe side for an
    audit, never a loss. A moved directory is not detected (its records are not
    lost: they are where it went). Sealed segments deleted by hand are simply gone: readers skip
    them; how many records they held is not knowable once their names are gone.

Thread-safety: :class:`Spool` is thread-safe. Fork-safe: a forked child drops the parent's open
segment (without releasing the parent's lock) and starts its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from .. import _fork
from ..errors import SpoolError, SpoolFull
from . import format as fmt
from .options import (
    DEFAULT_FSYNC,
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_BYTES,
    DEFAULT_OVERFLOW,
    DEFAULT_SEGMENT_AGE,
    DEFAULT_SEGMENT_BYTES,
    check_spool_options,
)
from .reader import SpoolReader

__all__ = ["Spool", "SpoolStats"]

_REFRESH_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """A snapshot of a spool directory (all writers and readers of it).

    ``records`` counts records not yet confirmed: exact for sealed segments (from their names
    and ``.ack`` files), counted by lines for open ones (a live writer may add more meanwhile).
    ``dropped`` sums ``dropped.log`` by reason: ``max_bytes``, ``max_age`` (bounds,
    drop_oldest), ``overflow`` (drop_newest), ``torn`` (a writer died mid-line), ``corrupt``
    (not UTF-8 JSON), ``rejected`` (a consumer rejected without requeue), ``deleted`` (the open
    segment was deleted under its writer before a reader confirmed them). ``failed`` counts
    records whose ``append`` raised in *this* :class:`Spool` instance (the caller owns them).
    ``oldest`` is the creation time (Unix seconds) of the oldest segment, ``None`` if empty.
    """

    segments: int
    open_segments: int
    bytes: int
    records: int
    dropped: Mapping[str, int] = field(default_factory=dict)
    failed: int = 0
    oldest: float | None = None

    @property
    def corrupt_lines(self) -> int:
        return self.dropped.get("corrupt", 0)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


@dataclass(slots=True)
class _OpenSegment:
    stem: str
    fd: int
    size: int = 0
    records: int = 0
    created: float = field(default_factory=time.monotonic)
    confirmed: int = 0  # leading records a companion reader confirmed (see Spool.confirmed)
    read: int = 0  # leading records a companion reader handed out (see Spool.handed_out)


class Spool:
    """A spool directory opened for appending (and the factory of its readers).

    Args:
        directory: created if missing.
        segment_bytes: seal the open segment before it would grow beyond this (16 MiB).
        segment_age: seal the open segment once it is this many seconds old (600 s), checked
            on append.
        max_bytes: bound of all segments in the directory (1 GiB).
        max_age: drop sealed segments whose newest record is older (7 days).
        fsync: ``"segment"`` (default), ``"never"`` or ``"always"``.
        overflow: ``"drop_oldest"`` (default), ``"drop_newest"`` or ``"refuse"``.

    Raises:
        ConfigurationError: a bad option.
        SpoolError: the directory cannot be created.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        segment_age: float = DEFAULT_SEGMENT_AGE,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_age: float = DEFAULT_MAX_AGE,
        fsync: str = DEFAULT_FSYNC,
        overflow: str = DEFAULT_OVERFLOW,
    ) -> None:
        self.directory = os.fspath(directory)
        check_spool_options(
            where=f"spool {self.directory!r}",
            segment_bytes=segment_bytes, segment_age=segment_age, max_bytes=max_bytes,
            max_age=max_age, fsync=fsync, overflow=overflow,
        )  # fmt: skip
        self.segment_bytes = int(segment_bytes)
        self.segment_age = float(segment_age)
        self.max_bytes = int(max_bytes)
        self.max_age = float(max_age)
        self.fsync = fsync
        self.overflow = overflow
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as exc:
            msg = f"cannot create spool directory {self.directory!r}: {exc.strerror}"
            raise SpoolError(msg) from exc
        self._lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._appends = 0
        self._seg: _OpenSegment | None = None
        self._last_ns = 0
        self._est_bytes = 0
        self._next_refresh = 0.0
        self._failed = 0
        self._unjournaled: dict[str, int] = {}
        self._closed = False
        self._own: set[str] = set()  # stems of the segments this instance created (see wrote)
        # Confirmed prefix of our segments as this process's readers know it: ahead of the
        # .ack file while the disk is full (see holds_own_records).
        self._progress: dict[str, int] = {}
        self._destination: str | None = None  # the DESTINATION key, to bind a re-created dir
        self._journal_seen: dict[str, int] = {}  # highest dropped.log counts stats() read
        self._journal_gone: dict[str, int] = {}  # counts of dropped.log files deleted since
        self._cuts: dict[str, int] = {}  # deleted open segments: where _lost cut them (bytes)
        #: Called (with the lock held) with the unconfirmed lines of a segment the bounds
        #: delete, and the reason, before they go: the handler announces them (drop markers).
        self.drop_hook: Callable[[list[bytes], str], None] | None = None
        _fork.register(self)

    def __repr__(self) -> str:
        return f"Spool({self.directory!r})"

    def wrote(self, stem: str) -> bool:
        """True if ``stem`` is a segment this :class:`Spool` created (in this process)."""
        return stem in self._own

    def confirmed(self, stem: str, records: int) -> None:
        """A reader of this process confirmed the first ``records`` records of segment ``stem``.

        Called by companion readers (:meth:`reader`) as they commit, without the lock (one
        attribute store): if the open segment is then deleted under this writer, only the
        records after those are counted as lost (see the module docstring). Remembered per
        own segment for :meth:`holds_own_records`, since the ``.ack`` write may have failed.
        """
        seg = self._seg
        if seg is not None and seg.stem == stem and records > seg.confirmed:
            seg.confirmed = records
        if stem in self._own and records > self._progress.get(stem, 0):
            self._progress[stem] = records

    def handed_out(self, stem: str, records: int) -> None:
        """A reader of this process handed out the first ``records`` records of segment
        ``stem`` (read, maybe not yet confirmed).

        Called by companion readers after each read, without the lock (one attribute store): if
        the open segment is then deleted, the unlinked file is cut after those records (see
        :meth:`_lost` and :meth:`cut_at`).
        """
        seg = self._seg
        if seg is not None and seg.stem == stem and records > seg.read:
            seg.read = records

    def cut_at(self, stem: str) -> int | None:
        """Where this writer cut its deleted segment ``stem`` (bytes), ``None`` if it did not.

        A companion reader still holding the unlinked file trims what it buffered beyond that
        point, so it delivers no record counted as ``deleted`` and no batch written again.
        """
        return self._cuts.get(stem)

    def verify(self) -> None:
        """Check that the open segment still has a name; if it was deleted, count what it held
        that no reader confirmed (``deleted``) now.

        Companion readers call this when they find nothing more to read: "caught up" must not
        be reported (flush() True) while records vanished with a deleted segment, and no append
        may come to notice it.
        """
        with self._lock:
            seg = self._seg
            if seg is not None and seg.records and _unlinked(seg):
                self._lost(seg)

    def foreign_segments(self) -> bool:
        """True if the directory holds a segment this :class:`Spool` did not write.

        One ``listdir``, no lock, no claim: the handler's cheap periodic check for segments left
        by other processes sharing the directory (exited workers, crashed writers) before it
        starts a reader to adopt them. Open segments of live writers count too; the handler's
        :class:`~mqlogging.spool.SegmentChoice` leaves those to their writers.

        Raises:
            SpoolError: the directory cannot be listed.
        """
        return any(
            entry.name is not None and entry.stem not in self._own
            for entry in fmt.scan(self.directory).values()
        )

    def holds_own_records(self) -> bool:
        """True if a segment this :class:`Spool` wrote still holds a record no reader confirmed.

        One ``listdir`` and the progress file of each of our segments: the handler asks this
        after its spool failed (its lane went direct), so that the records stored before the
        failure are replayed, not stranded (review 7, D1). The open segment's count is known
        here; an own segment left open by a failed seal is counted by reading it. Progress
        that our readers confirmed but could not write (disk full) counts as confirmed: else
        the lane went back to replaying every ``SPOOL_RETRY`` while the disk stays full, and
        flush() never returned True (review 9, R1).

        Raises:
            SpoolError: the directory or a segment cannot be read.
        """
        with self._lock:
            seg = self._seg
            current = (seg.stem, seg.records) if seg is not None else None
            own = set(self._own)
            progress = dict(self._progress)
        if not own:
            return False  # never wrote a segment: no listdir
        for entry in fmt.scan(self.directory).values():
            if entry.name is None or entry.stem not in own:
                continue
            lines = entry.count
            if lines is None and current is not None and entry.stem == current[0]:
                lines = current[1]
            elif lines is None:
                lines = _count_lines(os.path.join(self.directory, entry.name))
            if lines > max(
                fmt.read_ack(self.directory, entry.stem)[1], progress.get(entry.stem, 0)
            ):
                return True
        return False

    # -- appending ----------------------------------------------------------------------------

    def append(self, bodies: Sequence[bytes]) -> int:
        """Append ``bodies`` in order, with one write; return how many were stored.

        Returns ``len(bodies)``, or 0 when the spool is full and the policy is
        ``drop_newest`` (the records are counted as ``overflow`` drops). Durable per the fsync
        policy when it returns.

        Raises:
            SpoolFull: the spool is full and the policy is ``refuse``.
            SpoolError: the write failed (disk full, file size limit, permissions); nothing of
                this call was stored.
        """
        if not bodies:
            return 0
        data = fmt.frame(bodies)
        with self._lock:
            if self._closed:
                msg = f"spool {self.directory!r} is closed"
                raise SpoolError(msg)
            try:
                if not self._make_room(len(data), len(bodies)):
                    return 0
                seg = self._store(data, len(bodies))
            except SpoolError:
                self._failed += len(bodies)
                raise
            seg.records += len(bodies)
            self._est_bytes += len(data)
        with self._cond:
            self._appends += 1
            self._cond.notify_all()
        return len(bodies)

    def seal(self) -> None:
        """Seal this writer's open segment now (before a replay), if it holds any record."""
        with self._lock:
            self._seal_current()

    def close(self) -> None:
        """Seal the open segment and stop appending. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(SpoolError):
                self._seal_current()

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def reader(self) -> SpoolReader:
        """A reader of this directory whose :meth:`SpoolReader.wait` wakes on our appends."""
        return SpoolReader(self.directory, spool=self)

    # -- inspection ---------------------------------------------------------------------------

    def stats(self) -> SpoolStats:
        """Scan the directory and summarise it (see :class:`SpoolStats`).

        Other writers' open segments are counted by reading them; this spool's own open one
        (up to ``segment_bytes``, and growing during an outage) from memory, so polling
        :meth:`stats` stays cheap while this process spools.
        """
        with self._lock:
            seg = self._seg
            own = (seg.stem, seg.records, seg.size) if seg is not None else None
            progress = dict(self._progress)
        entries = fmt.scan(self.directory)
        segments = opened = size = records = 0
        oldest: float | None = None
        for entry in sorted(entries.values(), key=lambda e: e.stem):
            if entry.name is None:
                continue
            path = os.path.join(self.directory, entry.name)
            try:
                if entry.count is None and own is not None and entry.stem == own[0]:
                    lines, length = own[1], own[2]
                    opened += 1
                elif entry.count is None:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        lines, _, length = fmt.count_lines(fd)
                    finally:
                        os.close(fd)
                    opened += 1
                else:
                    lines, length = entry.count, os.stat(path).st_size
            except FileNotFoundError:
                continue
            except OSError as exc:
                msg = f"cannot read spool segment {path!r}: {exc.strerror}"
                raise SpoolError(msg) from exc
            # Our readers' progress may be ahead of .ack (disk full): see holds_own_records.
            done = max(fmt.read_ack(self.directory, entry.stem)[1], progress.get(entry.stem, 0))
            segments += 1
            size += length
            records += max(0, lines - done)
            if oldest is None:
                oldest = fmt.stem_time(entry.stem)
        journal = fmt.read_journal(self.directory)
        with self._lock:
            failed = self._failed
            dropped = self._monotonic_drops(journal)
            for reason, n in self._unjournaled.items():
                dropped[reason] = dropped.get(reason, 0) + n
        return SpoolStats(
            segments=segments, open_segments=opened, bytes=size, records=records,
            dropped=dropped, failed=failed, oldest=oldest,
        )  # fmt: skip

    # -- internals (called with self._lock held) ----------------------------------------------

    def _monotonic_drops(self, journal: dict[str, int]) -> dict[str, int]:
        """The drop counts of ``journal`` plus those of journals deleted with the directory.

        ``dropped.log`` goes when the directory is deleted; the counts it held that this
        instance saw are kept (see :meth:`_recreate`), so the handler's counters never go back.
        """
        seen = self._journal_seen
        dropped = dict(self._journal_gone)
        for reason, n in journal.items():
            seen[reason] = max(seen.get(reason, 0), n)
        for reason, n in seen.items():
            dropped[reason] = dropped.get(reason, 0) + n
        return dropped

    def _drop(self, reason: str, records: int, segment: str = "") -> None:
        if records <= 0:
            return
        if fmt.journal(self.directory, reason, records, segment):
            # what the journal holds now is at least that (kept if it is deleted)
            self._journal_seen[reason] = self._journal_seen.get(reason, 0) + records
        else:
            self._unjournaled[reason] = self._unjournaled.get(reason, 0) + records

    def _store(self, data: bytes, records: int) -> _OpenSegment:
        """Write ``data`` to the open segment (a new one if needed) and return that segment.

        The check that the segment still has a name comes after the write, so a deletion before
        or during it is caught: the batch then went into an unlinked file, and is written again
        to a fresh segment of the re-created directory (once; a second deletion raises).
        """
        for _ in range(2):
            seg = self._segment_for(len(data))
            self._write(seg, data)
            if not _unlinked(seg):
                return seg
            seg.size -= len(data)  # the batch is written again: not lost with the segment
            self._lost(seg)
        msg = (
            f"cannot spool {records} records: the spool directory {self.directory!r} was "
            "deleted again while writing to it"
        )
        raise SpoolError(msg)

    def _lost(self, seg: _OpenSegment) -> None:
        """The open segment ``seg`` was deleted under us: cut the unlinked file after what a
        companion reader already read, count the rest (``deleted``), and re-create the
        directory for what comes next.

        The cut is made after the records a companion reader handed out (the reader, which
        keeps reading the unlinked file through its open descriptor, trims its buffer there:
        :meth:`cut_at`), so it delivers no record counted here and not the batch :meth:`_store`
        writes again (it lies past ``seg.size``). Records handed out and not yet confirmed are
        counted too (a reader closed now would never confirm them): if they are delivered after
        all they are both delivered and counted, the safe side for an audit. So is a record
        read in the instant between our ``fstat`` and the cut; a batch written again may then
        arrive twice; nothing is lost.
        """
        self._seg = None
        self._own.discard(seg.stem)
        lines = _read_lines(seg.fd, seg.size)
        kept = min(seg.records, max(seg.read, seg.confirmed))
        if len(lines) >= kept:  # else unreadable: left whole (the reader may rewind and read)
            cut = sum(len(line) + 1 for line in lines[:kept])
            with contextlib.suppress(OSError):
                os.ftruncate(seg.fd, cut)
                self._cuts[seg.stem] = cut
        lost = max(0, seg.records - seg.confirmed)
        lines = lines[seg.confirmed : seg.records]
        with contextlib.suppress(OSError):
            os.close(seg.fd)
        self._recreate()
        if lost and self.drop_hook is not None:
            lines += [b""] * (lost - len(lines))
            with contextlib.suppress(Exception):  # never let the announcement stop the count
                self.drop_hook(lines, "deleted")
        self._drop("deleted", lost, seg.stem)

    def _recreate(self) -> None:
        """Create the directory again (and its ``DESTINATION`` binding); best effort: if it
        fails, the next segment's creation reports it."""
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError:
            return
        for reason, n in self._journal_seen.items():  # the deleted dropped.log's counts
            self._journal_gone[reason] = self._journal_gone.get(reason, 0) + n
        self._journal_seen = {}
        if self._destination is not None:
            with contextlib.suppress(SpoolError):
                fmt.bind_destination(self.directory, self._destination)

    def _segment_for(self, nbytes: int) -> _OpenSegment:
        seg = self._seg
        if (
            seg is not None
            and seg.size > 0
            and (
                seg.size + nbytes > self.segment_bytes
                or time.monotonic() - seg.created >= self.segment_age
            )
        ):
            self._seal_current()
            seg = None
        if seg is None:
            seg = self._seg = self._create()
        return seg

    def _create(self) -> _OpenSegment:
        if self._destination is None:
            self._destination = fmt.read_destination(self.directory)
        stem, self._last_ns = fmt.new_stem(self._last_ns)
        tmp = os.path.join(self.directory, fmt.temp_name(stem))
        path = os.path.join(self.directory, fmt.open_name(stem))
        # Read-write: if the segment is deleted under us, what it held is read back to be
        # announced (see _lost).
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            try:
                fd = os.open(tmp, flags, 0o644)
            except FileNotFoundError:  # the directory was deleted while no segment was open
                self._recreate()
                fd = os.open(tmp, flags, 0o644)
        except OSError as exc:
            msg = f"cannot create spool segment in {self.directory!r}: {exc.strerror}"
            raise SpoolError(msg) from exc
        try:
            # Locked before it gets its visible name, so no reader ever sees it unlocked.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(tmp, path)
            if self.fsync == "always":
                fmt.fsync_dir(self.directory)
        except OSError as exc:
            os.close(fd)
            fmt.unlink(tmp)
            msg = f"cannot create spool segment {path!r}: {exc.strerror}"
            raise SpoolError(msg) from exc
        self._own.add(stem)
        return _OpenSegment(stem, fd)

    def _write(self, seg: _OpenSegment, data: bytes) -> None:
        view = memoryview(data)
        written = 0
        try:
            while written < len(data):
                written += os.write(seg.fd, view[written:])
            if self.fsync == "always":
                os.fdatasync(seg.fd)
        except OSError as exc:
            # Roll back the partial batch, and seal, so that the segment never holds a torn
            # line followed by more records and readers never see bytes that later vanish.
            with contextlib.suppress(OSError):
                os.ftruncate(seg.fd, seg.size)
            with contextlib.suppress(SpoolError):
                self._seal_current()
            path = os.path.join(self.directory, fmt.open_name(seg.stem))
            msg = f"cannot write to spool segment {path!r}: {exc.strerror or exc}"
            raise SpoolError(msg) from exc
        seg.size += len(data)

    def _seal_current(self) -> None:
        seg = self._seg
        if seg is None:
            return
        self._seg = None
        if seg.records and _unlinked(seg):
            self._lost(seg)
            return
        path = os.path.join(self.directory, fmt.open_name(seg.stem))
        try:
            if seg.records == 0:
                fmt.unlink(path)
                return
            if self.fsync != "never":
                os.fsync(seg.fd)
            os.rename(path, os.path.join(self.directory, fmt.sealed_name(seg.stem, seg.records)))
            if self.fsync != "never":
                fmt.fsync_dir(self.directory)
        except OSError as exc:
            msg = f"cannot seal spool segment {path!r}: {exc.strerror}"
            raise SpoolError(msg) from exc
        finally:
            os.close(seg.fd)  # releases the writer lock; an unsealed file is now an orphan

    def _make_room(self, nbytes: int, nrecords: int) -> bool:
        now = time.monotonic()
        if now >= self._next_refresh or self._est_bytes + nbytes > self.max_bytes:
            self._refresh()
            self._next_refresh = now + _REFRESH_INTERVAL
        if self._est_bytes + nbytes <= self.max_bytes:
            return True
        if self.overflow == "refuse":
            msg = (
                f"spool {self.directory!r} is full ({self._est_bytes} of {self.max_bytes} bytes);"
                " raise max_bytes or choose overflow=drop_oldest"
            )
            raise SpoolFull(msg)
        if self.overflow == "drop_oldest":
            self._drop_oldest(nbytes)
            if self._est_bytes + nbytes <= self.max_bytes:
                return True
        self._drop("overflow", nrecords)
        return False

    def _refresh(self) -> None:
        """Recount the directory's bytes, seal orphans, drop segments older than max_age."""
        entries = fmt.scan(self.directory)
        # Forget our segments that are gone; rebound, not mutated: foreign_segments() reads it
        # without the lock.
        self._own = self._own & entries.keys()
        self._progress = {s: n for s, n in self._progress.items() if s in self._own}
        total = 0
        horizon = time.time() - self.max_age
        own = self._seg.stem if self._seg is not None else None
        for listed in sorted(entries.values(), key=lambda e: e.stem):
            entry = listed
            if entry.name is None:
                if entry.side:
                    fmt.collect_garbage(self.directory, entry.stem)
                continue
            if entry.count is None and entry.stem != own:
                fsync = self.fsync != "never"
                sealed = fmt.seal_orphan(self.directory, entry.stem, fsync, self._drop)
                if sealed is not None:
                    entry = sealed
            try:
                st = os.stat(os.path.join(self.directory, entry.name or ""))
            except FileNotFoundError:
                continue
            except OSError as exc:
                msg = f"cannot stat spool segment in {self.directory!r}: {exc.strerror}"
                raise SpoolError(msg) from exc
            expired = entry.count is not None and st.st_mtime < horizon
            if expired and self._drop_segment(entry, "max_age"):
                continue
            total += st.st_size
        self._est_bytes = total

    def _drop_segment(self, entry: fmt.Entry, reason: str) -> bool:
        """Delete a sealed segment nobody is replaying; count its unconfirmed records."""
        fd = fmt.claim(self.directory, entry.stem)
        if fd is None:
            return False
        current = fmt.resolve(self.directory, entry.stem)
        if current is None or current.count is None:
            os.close(fd)
            return False
        offset, done = fmt.read_ack(self.directory, entry.stem)
        if self.drop_hook is not None:
            self._announce(current, offset, current.count - done, reason)
        fmt.remove_segment(self.directory, entry.stem, current.name, fd)
        self._drop(reason, current.count - done, entry.stem)
        return True

    def _announce(self, entry: fmt.Entry, offset: int, records: int, reason: str) -> None:
        """Give :attr:`drop_hook` the unconfirmed lines of a segment about to be dropped.

        Drops are rare, and the segment is read once before it is deleted; lines that cannot be
        read are passed as empty lines (the hook counts them as unattributed).
        """
        hook = self.drop_hook
        assert hook is not None
        assert entry.name is not None
        try:
            with open(os.path.join(self.directory, entry.name), "rb") as f:
                f.seek(offset)
                lines = f.read().split(b"\n")[:-1]  # a sealed segment ends with a newline
        except OSError:
            lines = []
        lines += [b""] * (records - len(lines))
        with contextlib.suppress(Exception):  # never let the announcement stop the drop
            hook(lines[:records], reason)

    def _drop_oldest(self, nbytes: int) -> None:
        for _ in range(2):
            for entry in sorted(fmt.scan(self.directory).values(), key=lambda e: e.stem):
                if self._est_bytes + nbytes <= self.max_bytes:
                    return
                if entry.count is None or entry.name is None:
                    continue
                try:
                    size = os.stat(os.path.join(self.directory, entry.name)).st_size
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    msg = f"cannot stat spool segment in {self.directory!r}: {exc.strerror}"
                    raise SpoolError(msg) from exc
                if self._drop_segment(entry, "max_bytes"):
                    self._est_bytes -= size
            # Still full: our own open segment is the oldest thing we may drop; seal it and
            # try once more (live segments of other writers are never touched).
            if self._seg is None or self._seg.records == 0:
                return
            self._seal_current()

    def after_fork_in_child(self) -> None:
        """Forget the parent's open segment in a forked child (see :mod:`mqlogging._fork`)."""
        self._lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        if self._seg is not None:
            # Close our copy only: flock(LOCK_UN) would release the parent's writer lock.
            with contextlib.suppress(OSError):
                os.close(self._seg.fd)
            self._seg = None
        self._last_ns = 0
        self._own = set()  # the parent's segments are not the child's
        self._progress = {}

    # -- for readers --------------------------------------------------------------------------

    @property
    def appends(self) -> int:
        """How many :meth:`append` calls stored records so far (a reader's wake-up token)."""
        return self._appends

    def wait_append(self, seen: int, timeout: float) -> int:
        """Wait until :attr:`appends` differs from ``seen`` or ``timeout`` passes; return it."""
        with self._cond:
            if self._appends == seen:
                self._cond.wait(timeout)
            return self._appends


def _count_lines(path: str) -> int:
    """The complete lines of the segment at ``path`` (0 if it vanished meanwhile)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        msg = f"cannot read spool segment {path!r}: {exc.strerror}"
        raise SpoolError(msg) from exc
    try:
        return fmt.count_lines(fd)[0]
    finally:
        os.close(fd)


def _unlinked(seg: _OpenSegment) -> bool:
    """True if the open segment's file has no name any more (deleted under its writer).

    One ``fstat``: 3-7 us on the 2-core CI machine under load, about what the ``write`` itself
    costs; a batch of 100 records pays it once (~0.05 us a record), so every append checks.
    """
    try:
        return os.fstat(seg.fd).st_nlink == 0
    except OSError:
        return True


def _read_lines(fd: int, size: int) -> list[bytes]:
    """The complete lines of the first ``size`` bytes of ``fd`` (a deleted segment, read once
    to announce what it held); ``[]`` if it cannot be read."""
    chunks: list[bytes] = []
    offset = 0
    try:
        while offset < size:
            data = os.pread(fd, min(fmt.CHUNK, size - offset), offset)
            if not data:
                break
            chunks.append(data)
            offset += len(data)
    except OSError:
        return []
    return b"".join(chunks).split(b"\n")[:-1]
