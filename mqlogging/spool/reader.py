"""Reading a spool as a queue: :class:`SpoolReader` claims segments and commits progress.

A reader claims segments oldest-first, exclusively (``flock`` on ``<stem>.lock``), and returns
their records in file order; several readers (threads or processes) share the work like
competing consumers, each segment going to one reader at a time. Order is FIFO per writer (its
segments are read in creation order, each from start to end); records of different writers
interleave by segment. A torn last line (no newline: a writer died mid-write) is skipped and
counted as ``"torn"``; a line that is not UTF-8 JSON is skipped and counted as ``"corrupt"``;
neither ever stops the replay. The open segment of a *live* writer is read too (unless the
reader's :class:`SegmentChoice` says otherwise), up to its last complete line, so a ``local://``
consumer sees records within one poll interval; it is never deleted under its writer.

Progress is durable: :meth:`SpoolReader.commit` records "confirmed up to byte X" in the
segment's ``.ack`` file (:func:`~mqlogging.spool.format.write_ack`), and a segment is deleted
only once it is sealed and every record of it was committed. A reader that stops (crash,
``close()``, ``rewind()``) leaves the uncommitted records to the next claimer: at-least-once,
never lost.

Which segments a reader takes is the caller's policy, given as a :class:`SegmentChoice`: the
default takes them all (``local://`` consumers, ``mqlogging spool replay``); the handler passes
its own (its writer's live segment, other writers' sealed ones: see ``handlers/_sender.py``).

A :class:`SpoolReader` belongs to one thread. Fork-safe: a forked child drops the parent's
claims without releasing the parent's locks.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Literal, NamedTuple

from .. import _fork
from ..errors import SpoolError
from ..wire import decode, read_meta
from . import format as fmt

if TYPE_CHECKING:
    from .writer import Spool

__all__ = ["EVERY_SEGMENT", "Access", "SegmentChoice", "SpoolReader", "SpoolRecord", "record_id"]

Access = Literal["read", "sealed", "skip"]
"""How a reader may take a segment: ``read`` it (open or sealed), only once ``sealed`` (a live
writer's open segment is left to that writer, and holds back the newer segments of its writer),
or ``skip`` it (never taken, holds back nothing)."""


class SegmentChoice:
    """Which segments a :class:`SpoolReader` takes, and which writer each belongs to.

    The default takes every segment and orders segments by the pid field of their stem
    (conservative: two writers of one process, or a reused pid, are ordered together). A caller
    with a narrower policy overrides :meth:`access` and :meth:`writer`; both are called once per
    segment per :meth:`SpoolReader.read` and must be cheap.
    """

    def access(self, stem: str) -> Access:
        """How this reader may take the segment ``stem`` (see :data:`Access`)."""
        return "read"

    def writer(self, stem: str) -> str:
        """The writer whose segments must be shipped in order, one at a time."""
        return fmt.stem_writer(stem)


EVERY_SEGMENT = SegmentChoice()
"""Take every segment, open ones included: the choice of consumers and the replay tool."""


def _nonempty(line: bytes) -> bytes | None:
    """``line``, or ``None`` when it is empty (the only corrupt line without validation)."""
    return line or None


def record_id(record: SpoolRecord) -> str:
    """The record's id (:func:`mqlogging.wire.read_meta`), else one derived from its place.

    The derived id (``<segment>:<offset>``) is deterministic, so a line without an id that is
    delivered twice still gets the same Elasticsearch ``_id``.
    """
    return read_meta(decode(record.body)).id or f"{record.segment}:{record.offset}"


class SpoolRecord(NamedTuple):
    """One record read from a segment: its body (no newline) and where it lies.

    ``segment`` is the segment's stem, ``offset``/``end`` the byte range of its line (newline
    included in ``end``) and ``line`` its 0-based line number: together a stable identity of
    the record, the same on every replay of the same directory. (A named tuple, not a
    dataclass: replay creates one per record and this is 3x cheaper.)
    """

    body: bytes
    segment: str
    offset: int
    end: int
    line: int
    redelivered: bool = False


_BUSY = object()  # SpoolReader._take: the segment is held by another reader


@dataclass(slots=True, eq=False)
class _Claim:
    stem: str
    lock_fd: int
    fd: int
    name: str
    sealed: bool
    pos: int  # next byte to parse
    line: int  # index of the next line
    committed: tuple[int, int]  # (offset, lines) persisted in .ack
    high: int  # lines seen by this reader (corrupt lines are counted once)
    outstanding: deque[SpoolRecord] = field(default_factory=deque)
    acked: set[int] = field(default_factory=set)
    buf: bytes = b""
    buf_off: int = 0
    eof: bool = False
    ack_fd: int = -1
    unsaved: bool = False  # ``committed`` is in memory only: its .ack write failed (disk full)


class SpoolReader:
    """Claims segments of a spool directory oldest-first and reads their records in order.

    Args:
        directory: the spool directory (created if missing, so a consumer may start first).
        spool: a :class:`Spool` of this process whose appends wake :meth:`wait` (write-ahead).
        fsync: fsync ``.ack`` files on commit (slower; the default relies on the OS).
        validate: parse every line as JSON and skip (count) the corrupt ones. ``False`` skips
            only empty lines: for a write-ahead sender reading back bodies its own formatter
            produced (~2x faster replay); corrupt lines then reach the consumer.
        choice: which segments this reader takes and which writer each belongs to
            (:class:`SegmentChoice`; the default takes every segment, open ones included).

    Order per writer, whatever the number of readers: a reader takes one writer's segments
    only in creation order. Once a segment is held by another reader (or is a live open
    segment this reader may not read), the newer segments of the same writer are left alone
    in that :meth:`read`, so no reader ships a writer's newer segment while an older one is
    still being shipped elsewhere (issue #11, defect 3). A writer is what
    :meth:`SegmentChoice.writer` says (by default the pid field of the stem). :attr:`deferred`
    lists the segments the last :meth:`read` left for that reason, so a caller can tell
    "nothing to read" from "the rest is held elsewhere".

    One reader belongs to one thread. Segments stay claimed while this reader has records of
    them outstanding (read, not committed); a live writer's segment is released again when
    everything read from it is committed, so its writer's own reader may take it over.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        spool: Spool | None = None,
        fsync: bool = False,
        validate: bool = True,
        choice: SegmentChoice = EVERY_SEGMENT,
    ) -> None:
        self.directory = os.fspath(directory)
        self._spool = spool
        self._choice = choice
        # Stems the last read() left because another reader held them (or an older segment
        # of their writer): see the class docstring.
        self.deferred: frozenset[str] = frozenset()
        self._fsync = fsync
        # decode() is None for a line that is not JSON (or is null: see _parse), and so is
        # _nonempty() for an empty line: the hot loop calls one of them per line.
        self._parse_line: Callable[[bytes], object] = decode if validate else _nonempty
        self._claims: dict[str, _Claim] = {}
        self._seen = 0
        self._closed = False
        self._unjournaled: dict[str, int] = {}
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as exc:
            msg = f"cannot create spool directory {self.directory!r}: {exc.strerror}"
            raise SpoolError(msg) from exc
        _fork.register(self)

    def __repr__(self) -> str:
        return f"SpoolReader({self.directory!r}, claimed={len(self._claims)})"

    # -- public -------------------------------------------------------------------------------

    def read(self, max_records: int = 1000) -> list[SpoolRecord]:
        """Return up to ``max_records`` of the oldest records not yet read; ``[]`` if none.

        Records come in segment order, each segment in file order; a record is returned once
        per reader unless :meth:`rewind` gives it back. Never blocks (see :meth:`wait`).

        Raises:
            SpoolError: the directory or a segment cannot be read.
        """
        if self._closed:
            msg = f"spool reader of {self.directory!r} is closed"
            raise SpoolError(msg)
        out: list[SpoolRecord] = []
        if self._spool is not None:
            self._seen = self._spool.appends
        for stem in sorted(self._claims):
            if len(out) >= max_records:
                return out
            claim = self._claims.get(stem)
            if claim is not None:
                self._read_segment(claim, out, max_records)
        if len(out) < max_records:
            self._read_unclaimed(out, max_records)
        if not out and self._spool is not None:
            self._spool.verify()  # caught up: unless our writer's segment was deleted
        return out

    def _read_unclaimed(self, out: list[SpoolRecord], limit: int) -> None:
        """Claim and read further segments, oldest first, one writer's segments in order."""
        self.deferred = frozenset()
        held: set[str] = set()  # writers with a segment another reader holds (or live)
        deferred: set[str] = set()
        for stem, entry in sorted(fmt.scan(self.directory).items()):
            if len(out) >= limit:
                break
            if stem in self._claims:
                continue
            if entry.name is None:
                if entry.side:
                    fmt.collect_garbage(self.directory, stem)
                continue
            access = self._choice.access(stem)
            if access == "skip":
                continue
            writer = self._choice.writer(stem)
            if writer in held:
                deferred.add(stem)
                continue
            taken = self._take(entry, sealed_only=access == "sealed")
            if isinstance(taken, _Claim):
                self._read_segment(taken, out, limit)
            elif taken is _BUSY:
                held.add(writer)
                deferred.add(stem)
        self.deferred = frozenset(deferred)

    def commit(self, records: Iterable[SpoolRecord]) -> None:
        """Confirm ``records`` (in any order): durable, and finished segments are deleted.

        Progress is persisted as the contiguous confirmed prefix of each segment, so after a
        crash only records after the first unconfirmed one are read again. Records this reader
        no longer tracks (already committed, or released) are ignored.

        Raises:
            SpoolError: the progress file could not be written.
        """
        touched: dict[str, _Claim] = {}
        claims = self._claims
        claim: _Claim | None = None
        for record in records:
            if claim is None or claim.stem != record.segment:
                claim = claims.get(record.segment)
                if claim is None:
                    continue
                touched[claim.stem] = claim
            line = record.line
            if line < claim.committed[1]:
                continue
            pending = claim.outstanding
            if pending and pending[0].line == line and not claim.acked:
                pending.popleft()  # the common case: in-order commits
            else:
                claim.acked.add(line)
        for touched_claim in touched.values():
            self._settle(touched_claim)

    def rewind(self, records: Iterable[SpoolRecord] | None = None) -> None:
        """Give back outstanding records: they are read again (``redelivered=True``).

        With ``records``, each segment is rewound to the earliest of them (records after it that
        were already committed are not returned again); without, every uncommitted record of
        this reader is given back.
        """
        targets: dict[str, SpoolRecord | None] = {}
        if records is None:
            targets = {stem: None for stem in self._claims}
        else:
            for record in records:
                old = targets.get(record.segment)
                if old is None or record.line < old.line:
                    targets[record.segment] = record
        for stem, target in targets.items():
            claim = self._claims.get(stem)
            if claim is None:
                continue
            if target is None and not claim.outstanding:
                continue
            first = target or claim.outstanding[0]
            if first.line < claim.committed[1] or first.line >= claim.line:
                continue
            while claim.outstanding and claim.outstanding[-1].line >= first.line:
                claim.outstanding.pop()
            claim.pos, claim.line = first.offset, first.line
            claim.buf, claim.buf_off, claim.eof = b"", first.offset, False

    def reject(self, records: Iterable[SpoolRecord]) -> None:
        """Confirm ``records`` without delivering them; counted as ``rejected`` drops."""
        batch = list(records)
        self.commit(batch)
        self._drop("rejected", len(batch))

    def wait(self, timeout: float) -> None:
        """Sleep until the companion :class:`Spool` appends, or ``timeout`` seconds pass.

        Without a companion spool (other writers are other processes) this simply sleeps:
        callers poll :meth:`read` in a loop with a short timeout.
        """
        if self._spool is not None:
            self._seen = self._spool.wait_append(self._seen, timeout)
        elif timeout > 0:
            time.sleep(timeout)

    @property
    def outstanding(self) -> int:
        """Records read and not yet committed."""
        return sum(max(0, len(c.outstanding) - len(c.acked)) for c in self._claims.values())

    def close(self) -> None:
        """Release every claim; uncommitted records go to the next reader. Idempotent."""
        self._closed = True
        for claim in list(self._claims.values()):
            if claim.unsaved and claim.lock_fd >= 0:
                self._persist(claim, claim.committed)  # last chance to keep the progress
            self._release(claim)

    def __enter__(self) -> SpoolReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _drop(self, reason: str, records: int, segment: str = "") -> None:
        if records > 0 and not fmt.journal(self.directory, reason, records, segment):
            self._unjournaled[reason] = self._unjournaled.get(reason, 0) + records

    def _take(self, entry: fmt.Entry, *, sealed_only: bool) -> _Claim | object | None:
        """Claim ``entry``: its claim, ``_BUSY`` if another reader holds it (or it is a live
        open segment and this reader may take it only ``sealed_only``), ``None`` if it is
        gone."""
        lock_fd = fmt.claim(self.directory, entry.stem)
        if lock_fd is None:
            return _BUSY
        try:
            current = fmt.resolve(self.directory, entry.stem)
            if current is None or current.name is None:
                fmt.remove_segment(self.directory, entry.stem, None, lock_fd)  # leftovers
                return None
            if current.count is None:
                sealed = fmt.seal_orphan(self.directory, entry.stem, self._fsync, self._drop)
                current = sealed or fmt.resolve(self.directory, entry.stem) or current
                if sealed_only and current.count is None:
                    os.close(lock_fd)  # a live writer's open segment: not ours to take
                    return _BUSY
            try:
                fd = os.open(
                    os.path.join(self.directory, current.name or ""), os.O_RDONLY | os.O_CLOEXEC
                )
            except FileNotFoundError:
                current = fmt.resolve(self.directory, entry.stem)
                if current is None or current.name is None:
                    fmt.remove_segment(self.directory, entry.stem, None, lock_fd)
                    return None
                fd = os.open(os.path.join(self.directory, current.name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            os.close(lock_fd)
            msg = f"cannot open spool segment {entry.stem!r} in {self.directory!r}: {exc.strerror}"
            raise SpoolError(msg) from exc
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(lock_fd)
            raise
        offset, lines = fmt.read_ack(self.directory, entry.stem)
        claim = _Claim(
            stem=entry.stem, lock_fd=lock_fd, fd=fd, name=current.name or "",
            sealed=current.count is not None, pos=offset, line=lines,
            committed=(offset, lines), high=lines, buf_off=offset,
        )  # fmt: skip
        self._claims[entry.stem] = claim
        return claim

    def _fill(self, claim: _Claim) -> bool:
        start = claim.buf_off + len(claim.buf)
        try:
            data = os.pread(claim.fd, fmt.CHUNK, start)
        except OSError as exc:
            msg = f"cannot read spool segment {claim.name!r} in {self.directory!r}: {exc.strerror}"
            raise SpoolError(msg) from exc
        if not data:
            claim.eof = True
            return False
        claim.eof = False
        claim.buf = claim.buf[claim.pos - claim.buf_off :] + data
        claim.buf_off = claim.pos
        return True

    def _read_segment(self, claim: _Claim, out: list[SpoolRecord], limit: int) -> None:
        before = len(out)
        cut = self._spool.cut_at(claim.stem) if self._spool is not None else None
        if cut is not None:  # its writer found it deleted and cut it: nothing past that
            claim.buf = claim.buf[: max(0, cut - claim.buf_off)]
        self._parse(claim, out, limit)
        if claim.eof and not claim.sealed and len(out) < limit:
            # At the end of an open segment: has its writer sealed it, or died?
            if (
                not fmt.is_open(self.directory, claim.stem)
                or fmt.seal_orphan(self.directory, claim.stem, self._fsync, self._drop) is not None
            ):
                self._became_sealed(claim)
            if claim.sealed:
                claim.eof = False
                self._parse(claim, out, limit)
        if claim.eof and claim.sealed and claim.pos < claim.buf_off + len(claim.buf):
            # A sealed segment ending without a newline (copied mid-write, failed truncate).
            self._drop("torn", 1, claim.stem)
            claim.pos = claim.buf_off + len(claim.buf)
            claim.line += 1
        if self._spool is not None:  # if the segment is deleted, its writer cuts it after these
            self._spool.handed_out(claim.stem, claim.high)
        self._settle(claim, idle=len(out) == before)

    def _became_sealed(self, claim: _Claim) -> None:
        current = fmt.resolve(self.directory, claim.stem)
        if current is None or current.name is None:
            self._release(claim)  # deleted under us (dropped by bounds)
            return
        if current.count is not None:
            claim.sealed = True
            claim.name = current.name

    def _parse(self, claim: _Claim, out: list[SpoolRecord], limit: int) -> None:
        if claim.lock_fd < 0:
            return
        want = limit - len(out)
        buf = claim.buf
        i = claim.pos - claim.buf_off
        base = claim.buf_off
        corrupt = 0
        # Hot loop (one pass per record): locals instead of attribute lookups.
        stem, high, index, acked = claim.stem, claim.high, claim.line, claim.acked
        parse, is_null = self._parse_line, fmt.is_json_null
        keep, give = claim.outstanding.append, out.append
        new, cls = tuple.__new__, SpoolRecord  # skips NamedTuple's Python-level __new__
        while want > 0:
            j = buf.find(b"\n", i)
            if j < 0:
                claim.pos = base + i
                if not self._fill(claim):
                    break
                buf, i, base = claim.buf, 0, claim.buf_off
                continue
            line = buf[i:j]
            if parse(line) is None and not is_null(line):
                if index >= high:
                    corrupt += 1
            else:
                record = new(cls, (line, stem, base + i, base + j + 1, index, index < high))
                keep(record)
                if index not in acked:
                    give(record)
                    want -= 1
            index += 1
            i = j + 1
        claim.line = index
        claim.high = max(high, index)
        claim.pos = base + i
        if corrupt:
            self._drop("corrupt", corrupt, claim.stem)

    def _settle(self, claim: _Claim, *, idle: bool = False) -> None:
        """Advance the confirmed prefix, persist it, delete or release finished segments."""
        if claim.lock_fd < 0:
            return
        pending = claim.outstanding
        while pending and pending[0].line in claim.acked:
            claim.acked.discard(pending.popleft().line)
        mark = (pending[0].offset, pending[0].line) if pending else (claim.pos, claim.line)
        if self._spool is not None:  # its writer counts only the rest if the file is deleted
            self._spool.confirmed(claim.stem, mark[1])
        if pending or not (claim.sealed and claim.eof):
            if mark[1] > claim.committed[1] or claim.unsaved:
                self._persist(claim, mark if mark[1] > claim.committed[1] else claim.committed)
            if not pending and idle and not claim.sealed and not claim.unsaved:
                self._release(claim)  # caught up with a live writer: let others take it
            return
        # Sealed, read to the end, everything confirmed: the segment is finished.
        self._claims.pop(claim.stem, None)
        os.close(claim.fd)
        if claim.ack_fd >= 0:
            os.close(claim.ack_fd)
        lock_fd, claim.lock_fd = claim.lock_fd, -1
        fmt.remove_segment(self.directory, claim.stem, claim.name, lock_fd)

    def _persist(self, claim: _Claim, mark: tuple[int, int]) -> None:
        """Record ``mark`` as the claim's progress, in ``.ack`` if the disk lets us.

        A failed write (disk full: issue 6, `make faults` scenario 9; review 9, R1) keeps the
        progress in memory, flagged ``unsaved``, and the reader goes on: raising wedged every
        read() for good, and only finishing the segment frees the space. An unsaved claim is
        not released when caught up (the next claimer would start again from the stale
        progress on disk: the whole segment re-sent every cycle for as long as the disk stays
        full); the write is retried on each settle and on close. A crash (or a release while
        the endpoints are down) before a write succeeds replays those records once more:
        at-least-once, never lost.
        """
        try:
            claim.ack_fd = fmt.write_ack(
                self.directory, claim.stem, claim.ack_fd, mark[0], mark[1], fsync=self._fsync
            )
            claim.unsaved = False
        except SpoolError:
            claim.ack_fd = -1
            claim.unsaved = True
        claim.committed = mark

    def _release(self, claim: _Claim) -> None:
        self._claims.pop(claim.stem, None)
        if claim.lock_fd >= 0:
            for fd in (claim.fd, claim.ack_fd, claim.lock_fd):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            claim.lock_fd = -1

    def after_fork_in_child(self) -> None:
        """Drop the parent's claims in a forked child (see :mod:`mqlogging._fork`)."""
        for claim in self._claims.values():
            # Close our copies only: flock(LOCK_UN) would release the parent's claims.
            for fd in (claim.fd, claim.ack_fd, claim.lock_fd):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            claim.lock_fd = -1
        self._claims = {}
