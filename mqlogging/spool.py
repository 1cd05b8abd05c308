"""The on-disk segment spool: the handler's failover buffer and the ``local://`` queue.

A spool is a directory of append-only *segments*, each a file of JSON lines: one record per
line, the line being the record's JSON body exactly as it would go on the wire (``jq . *.jsonl``
works). Nothing else in the directory matters to anyone but the spool::

    01732233000123456789-4242-9f3ab2c1.open       open segment of writer pid 4242 (flock held)
    01732232990000000000-4242-1c0ffee0.5000.jsonl sealed segment holding 5000 records
    01732232990000000000-4242-1c0ffee0.ack        replay progress: {"offset": ..., "records": ...}
    01732232990000000000-4242-1c0ffee0.lock       reader claim (flock)
    dropped.log                                   one JSON line per drop event (audit, stats)
    DESTINATION                                   where a handler's spool ships to (see
                                                  bind_destination); readers ignore it

Segment names sort in creation order (``<time_ns>-<pid>-<random>``; the pid is informative
only). **Locks, never pids, decide liveness**: a writer holds an exclusive ``flock`` on its open
segment for as long as it lives, so a segment whose lock can be taken belongs to a dead writer
(killed, crashed, or on another host the directory was copied from) and is sealed by whoever
notices. No absolute path or host state is stored, so a directory copied elsewhere replays there.

Writing (:class:`Spool`)
    ``append(bodies)`` writes a batch with one ``write(2)`` to this writer's own open segment;
    several threads and several processes may append to one directory at the same time (each
    :class:`Spool` instance has its own segment). Segments are sealed (renamed to
    ``<stem>.<records>.jsonl``) when they reach ``segment_bytes`` or ``segment_age``, on
    :meth:`Spool.seal` and on :meth:`Spool.close`. ``fsync``: ``"never"``; ``"segment"``
    (default; a segment is fsynced when sealed, so a machine crash may lose the open segment's
    tail, never a sealed segment); ``"always"`` (every append is fdatasync'ed before it returns).
    A body containing a newline (JSON pretty-printed across lines) has its newlines replaced by
    spaces: for valid JSON that changes only insignificant whitespace, and it keeps one record
    per line. A failed write (``ENOSPC``, ``EFBIG``...) is rolled back (the segment is truncated
    to its previous length and sealed) and raised as :class:`~mqlogging.errors.SpoolError`: the
    records of that call were *not* stored and the caller counts them.

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

Reading (:class:`SpoolReader`)
    A reader claims segments oldest-first, exclusively (``flock`` on ``<stem>.lock``), and
    returns their records in file order; several readers (threads or processes) share the work
    like competing consumers, each segment going to one reader at a time. Order is FIFO per
    writer (its segments are read in creation order, each from start to end); records of
    different writers interleave by segment. A torn last line (no newline: a writer died
    mid-write) is skipped and counted as ``"torn"``; a line that is not UTF-8 JSON is skipped and
    counted as ``"corrupt"``; neither ever stops the replay. The open segment of a *live* writer
    is read too, up to its last complete line, so a ``local://`` consumer sees records within
    one poll interval; it is never deleted under its writer.

    Progress is durable: :meth:`SpoolReader.commit` records "confirmed up to byte X" in the
    segment's ``.ack`` file (one appended line per commit; the last complete line counts, so a
    crash in mid-write leaves the previous value; compacted by rename past 64 KiB), and a
    segment is deleted only once it is sealed and every record of it was committed. A reader
    that stops (crash, ``close()``, ``rewind()``) leaves the uncommitted records to the next
    claimer: at-least-once, never lost.

How the handler uses it
    (a) Failover, brokers down::

            spool.append([body, ...])               # SpoolError -> count the batch as dropped

    (b)+(c) Replay, FIFO, when a broker is back::

            spool.seal()                            # make this writer's records sealed
            with spool.reader() as reader:
                while records := reader.read(500):
                    producer.publish_batch([Message(record_id(r), r.body) for r in records])
                    reader.commit(records)          # durable; deletes finished segments
                # on a publish failure: reader.rewind() (or close()) and retry later

        (``record_id`` is :func:`mqlogging.backends.local.record_id`: the body's id.)

    (d) ``durability: spool`` (write-ahead): append every batch, and let the sender read it
        back with a reader of the *same* :class:`Spool`::

            reader = spool.reader()                 # or SpoolReader(dir, spool=spool,
            while running:                          #                validate=False)
                records = reader.read(500)          # our appends, in order, from the page cache
                if not records:
                    reader.wait(0.5)                # wakes as soon as this process appends
                    continue
                producer.publish_batch(...)         # failure: reader.rewind(), back off, retry
                reader.commit(records)

        ``read()`` returns records straight from the live open segment (no seal, no fsync
        needed to see them), so nothing is kept in memory twice, and a crash at any point
        replays exactly the uncommitted suffix. The same loop serves (c): records appended
        while the brokers were down are simply read first.

Thread-safety: :class:`Spool` is thread-safe. A :class:`SpoolReader` belongs to one thread.
Both are fork-safe: a forked child drops the parent's open segment and claims (without
releasing the parent's locks) and starts its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from random import getrandbits
from types import TracebackType
from typing import Any, NamedTuple

from . import _fork
from .errors import ConfigurationError, SpoolError, SpoolFull

__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_SEGMENT_AGE",
    "DEFAULT_SEGMENT_BYTES",
    "SegmentView",
    "Spool",
    "SpoolReader",
    "SpoolRecord",
    "SpoolStats",
    "bind_destination",
    "coerce_spool_options",
    "dropped_totals",
    "lane_spools",
    "refuse_lane_root",
    "segments",
]

DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024
DEFAULT_SEGMENT_AGE = 600.0
DEFAULT_MAX_BYTES = 1024 * 1024 * 1024
DEFAULT_MAX_AGE = 7 * 24 * 3600.0

_FSYNC = ("segment", "never", "always")
_OVERFLOW = ("drop_oldest", "drop_newest", "refuse")
_OPEN_SUFFIX = ".open"
_STEM = r"\d{20}-\d+-[0-9a-f]{8}"
_NAME_RE = re.compile(rf"^({_STEM})(?:\.open|\.(\d+)\.jsonl|\.(ack|lock))$")
_JOURNAL = "dropped.log"
_DESTINATION = "DESTINATION"
_CHUNK = 1 << 20
_REFRESH_INTERVAL = 1.0

try:  # orjson is ~5x faster at validating lines; the stdlib is the fallback
    import orjson

    _parse_json: Callable[[bytes], object] = orjson.loads
    _INVALID: tuple[type[Exception], ...] = (ValueError,)  # orjson.JSONDecodeError is one

except ImportError:  # pragma: no cover - exercised only without the [fast] extra

    def _parse_json(line: bytes) -> object:
        return json.loads(line.decode("utf-8"))

    _INVALID = (ValueError,)  # UnicodeDecodeError and JSONDecodeError are ValueErrors


def _nonempty(line: bytes) -> object:
    if not line:
        msg = "empty line"
        raise ValueError(msg)
    return line


# -- options --------------------------------------------------------------------------------

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_AGE_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def _parse_size(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(name)
    if isinstance(value, (int, float)):
        return int(value)
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(name)
    return int(float(match[1]) * _SIZE_UNITS[match[2].lower()])


def _parse_age(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(name)
    if isinstance(value, (int, float)):
        return float(value)
    match = _AGE_RE.match(str(value))
    if not match:
        raise ValueError(name)
    return float(match[1]) * _AGE_UNITS[match[2].lower()]


def coerce_spool_options(options: Mapping[str, Any], *, where: str = "spool") -> dict[str, Any]:
    """Turn option values given as strings (URL query, TOML, env) into :class:`Spool` kwargs.

    Sizes accept bytes or binary multiples (``16M``, ``16MiB``, ``1g``); ages accept seconds or
    a unit (``90s``, ``10m``, ``12h``, ``7d``, ``1w``).

    Raises:
        ConfigurationError: an unknown option or a value that does not parse.
    """
    out: dict[str, Any] = {}
    for key, value in options.items():
        try:
            if key in ("segment_bytes", "max_bytes"):
                out[key] = _parse_size(key, value)
            elif key in ("segment_age", "max_age"):
                out[key] = _parse_age(key, value)
            elif key in ("fsync", "overflow"):
                out[key] = str(value).strip().lower()
            else:
                known = "segment_bytes, segment_age, max_bytes, max_age, fsync, overflow"
                msg = f"unknown spool option {key!r} for {where} (known: {known})"
                raise ConfigurationError(msg)
        except ValueError as exc:
            if isinstance(exc, ConfigurationError):
                raise
            kind = "a size like 16M" if key.endswith("bytes") else "a duration like 7d or 600"
            msg = f"{where}: option {key}={value!r} is not valid; give {kind}"
            raise ConfigurationError(msg) from None
    _validate(where=where, **out)
    return out


def _validate(
    *,
    where: str,
    segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    segment_age: float = DEFAULT_SEGMENT_AGE,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_age: float = DEFAULT_MAX_AGE,
    fsync: str = "segment",
    overflow: str = "drop_oldest",
) -> None:
    if segment_bytes < 1024:
        msg = f"{where}: segment_bytes={segment_bytes} is too small; give at least 1024 bytes"
        raise ConfigurationError(msg)
    if max_bytes < segment_bytes:
        msg = f"{where}: max_bytes={max_bytes} is smaller than segment_bytes={segment_bytes}"
        raise ConfigurationError(msg)
    if segment_age <= 0 or max_age <= 0:
        msg = f"{where}: segment_age and max_age must be positive numbers of seconds"
        raise ConfigurationError(msg)
    if fsync not in _FSYNC:
        msg = f"{where}: fsync must be one of {', '.join(_FSYNC)}, not {fsync!r}"
        raise ConfigurationError(msg)
    if overflow not in _OVERFLOW:
        msg = f"{where}: overflow must be one of {', '.join(_OVERFLOW)}, not {overflow!r}"
        raise ConfigurationError(msg)


# -- public value types -------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """A snapshot of a spool directory (all writers and readers of it).

    ``records`` counts records not yet confirmed: exact for sealed segments (from their names
    and ``.ack`` files), counted by lines for open ones (a live writer may add more meanwhile).
    ``dropped`` sums ``dropped.log`` by reason: ``max_bytes``, ``max_age`` (bounds,
    drop_oldest), ``overflow`` (drop_newest), ``torn`` (a writer died mid-line), ``corrupt``
    (not UTF-8 JSON), ``rejected`` (a consumer rejected without requeue). ``failed`` counts
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


# -- directory helpers (module functions: no state) ---------------------------------------


@dataclass(slots=True)
class _Entry:
    stem: str
    name: str | None = None  # data file name
    count: int | None = None  # records of a sealed segment; None while open
    side: int = 0  # number of .ack/.lock files


def _scan(directory: str) -> dict[str, _Entry]:
    entries: dict[str, _Entry] = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return entries
    except OSError as exc:
        msg = f"cannot list spool directory {directory!r}: {exc.strerror}"
        raise SpoolError(msg) from exc
    for name in names:
        match = _NAME_RE.match(name)
        if not match:
            continue
        entry = entries.get(match[1])
        if entry is None:
            entry = entries[match[1]] = _Entry(match[1])
        if match[3]:
            entry.side += 1
        else:
            entry.name = name
            entry.count = int(match[2]) if match[2] else None
    return entries


def _stem_time(stem: str) -> float:
    return int(stem[:20]) / 1e9


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _claim(directory: str, stem: str) -> int | None:
    """Take the exclusive reader claim of ``stem``; ``None`` if another reader holds it."""
    path = os.path.join(directory, stem + ".lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        msg = f"cannot create claim file {path!r}: {exc.strerror}"
        raise SpoolError(msg) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    try:  # the file may have been deleted (segment finished) between open and flock
        same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None
    return fd


_ACK_COMPACT = 64 * 1024


def _read_ack(directory: str, stem: str) -> tuple[int, int]:
    """The last complete progress line of ``<stem>.ack`` (``(0, 0)`` when there is none)."""
    try:
        with open(os.path.join(directory, stem + ".ack"), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return 0, 0
    except OSError:
        return 0, 0  # unreadable progress: replay the segment again (at-least-once)
    for raw in reversed(data.split(b"\n")[:-1]):  # a torn last line has no newline: ignored
        try:
            doc = json.loads(raw)
            return int(doc["offset"]), int(doc["records"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0, 0


@dataclass(frozen=True, slots=True)
class SegmentView:
    """A segment seen from outside, without a claim: for inspecting or exporting a spool."""

    path: str
    sealed: bool
    confirmed: int  # bytes at the start of the file whose records were confirmed


def segments(directory: str) -> list[SegmentView]:
    """Every segment of ``directory`` in replay (FIFO) order, with its confirmed progress.

    Read-only: takes no claim, seals nothing and writes no progress, so it is safe next to
    running writers and readers (what it reports may be stale a moment later).

    Raises:
        SpoolError: the directory cannot be listed.
    """
    return [
        SegmentView(
            os.path.join(directory, entry.name),
            sealed=entry.count is not None,
            confirmed=_read_ack(directory, stem)[0],
        )
        for stem, entry in sorted(_scan(directory).items())
        if entry.name is not None
    ]


def lane_spools(directory: str) -> list[str]:
    """The sub-directories of ``directory`` that hold segments, sorted: the per-endpoint spools
    (lanes) of a ``strategy="all"`` spool root. Each lane holds its own copy of every record,
    for its own endpoint, so a lane root is read lane by lane (:func:`refuse_lane_root`).

    A sub-directory that cannot be listed is left out (it is no spool this process can read).
    """
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        msg = f"cannot list spool directory {directory!r}: {exc.strerror or exc}"
        raise SpoolError(msg) from exc
    lanes = []
    for name in names:
        sub = os.path.join(directory, name)
        with contextlib.suppress(SpoolError):
            if os.path.isdir(sub) and segments(sub):
                lanes.append(sub)
    return lanes


def refuse_lane_root(directory: str, action: str) -> None:
    """Refuse to ``action`` a ``strategy="all"`` spool root as one spool: it holds no segment
    of its own, so reading it would find nothing and report success while records wait in its
    lanes (review #11 follow-up); read together, the lanes would show every record twice.

    Raises:
        SpoolError: ``directory`` is a lane root; the message names its lanes.
    """
    if segments(directory):
        return
    lanes = lane_spools(directory)
    if lanes:
        msg = (
            f'spool directory {directory!r} holds one spool per endpoint (strategy="all"); '
            f"{action} each of them instead: " + ", ".join(lanes)
        )
        raise SpoolError(msg)


def _write_ack(
    directory: str, stem: str, fd: int, offset: int, records: int, *, fsync: bool
) -> int:
    """Record progress: append one line to ``<stem>.ack`` (``fd``, ``-1`` to open it).

    Appending a ~30-byte line is atomic enough: a torn line has no newline and is ignored by
    :func:`_read_ack`, which then uses the line before. No rename per commit (a rename costs
    milliseconds on loaded overlay filesystems); past 64 KiB the log is compacted by writing a
    one-line file and renaming it over. Returns the fd to reuse; on failure the fd is closed.
    """
    path = os.path.join(directory, stem + ".ack")
    line = b'{"offset":%d,"records":%d}\n' % (offset, records)
    try:
        if fd >= 0 and os.fstat(fd).st_size > _ACK_COMPACT:
            os.close(fd)
            fd = -1
            tmp = os.path.join(directory, f".{stem}.ack.tmp")
            tfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(tfd, line)
                if fsync:
                    os.fsync(tfd)
            finally:
                os.close(tfd)
            os.replace(tmp, path)
        else:
            if fd < 0:
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                fd = os.open(path, flags, 0o644)
            os.write(fd, line)
            if fsync:
                os.fsync(fd)
    except OSError as exc:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        msg = f"cannot record replay progress in {path!r}: {exc.strerror}"
        raise SpoolError(msg) from exc
    return fd


def _resolve(directory: str, stem: str) -> _Entry | None:
    """Find the current data file of ``stem`` (it may have been sealed since it was listed)."""
    if os.path.exists(os.path.join(directory, stem + _OPEN_SUFFIX)):
        return _Entry(stem, stem + _OPEN_SUFFIX, None)
    entry = _scan(directory).get(stem)
    if entry is None or entry.name is None:
        return None
    return entry


def _remove_segment(directory: str, stem: str, name: str | None, claim_fd: int) -> None:
    """Delete a segment and its side files; the caller holds the claim ``claim_fd``."""
    try:
        if name is not None:
            _unlink(os.path.join(directory, name))
        _unlink(os.path.join(directory, stem + ".ack"))
        _unlink(os.path.join(directory, stem + ".lock"))
    except OSError as exc:
        msg = f"cannot delete spool segment {os.path.join(directory, stem)!r}: {exc.strerror}"
        raise SpoolError(msg) from exc
    finally:
        os.close(claim_fd)


def _journal(directory: str, reason: str, records: int, segment: str = "") -> bool:
    """Append one drop event to ``dropped.log``; ``False`` if that failed (disk full...)."""
    if records <= 0:
        return True
    line = json.dumps(
        {"time": round(time.time(), 3), "reason": reason, "records": records,
         "segment": segment, "pid": os.getpid()},
        separators=(",", ":"),
    ).encode() + b"\n"  # fmt: skip
    try:
        fd = os.open(
            os.path.join(directory, _JOURNAL),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
            0o644,
        )
        try:
            os.write(fd, line)  # O_APPEND + one small write: lines of processes don't mix
        finally:
            os.close(fd)
    except OSError:
        return False
    return True


def dropped_totals(directory: str) -> dict[str, int]:
    """Records dropped from ``directory`` by reason, summed over ``dropped.log`` (read-only)."""
    return _read_journal(directory)


def _read_journal(directory: str) -> dict[str, int]:
    totals: dict[str, int] = {}
    try:
        with open(os.path.join(directory, _JOURNAL), "rb") as f:
            for raw in f:
                try:
                    event = json.loads(raw)
                    totals[event["reason"]] = totals.get(event["reason"], 0) + int(event["records"])
                except (ValueError, KeyError, TypeError):
                    continue
    except OSError:
        pass
    return totals


def _count_lines(fd: int) -> tuple[int, int, int]:
    """``(complete lines, offset after the last newline, file size)`` of an open file."""
    lines = 0
    last_nl = 0
    pos = 0
    while True:
        chunk = os.pread(fd, _CHUNK, pos)
        if not chunk:
            break
        n = chunk.count(b"\n")
        if n:
            lines += n
            last_nl = pos + chunk.rindex(b"\n") + 1
        pos += len(chunk)
    return lines, last_nl, pos


def _seal_orphan(
    directory: str, stem: str, fsync: bool, drops: Callable[[str, int, str], None]
) -> _Entry | None:
    """Seal the open segment ``stem`` if its writer is gone (its flock can be taken).

    A torn last line is cut off and counted as ``torn``. Returns the sealed entry, or ``None``
    when the writer is alive or someone else sealed it first.
    """
    path = os.path.join(directory, stem + _OPEN_SUFFIX)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        msg = f"cannot open spool segment {path!r}: {exc.strerror}"
        raise SpoolError(msg) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return None  # a live writer holds it
        try:
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                return None
        except FileNotFoundError:
            return None  # sealed by its writer meanwhile
        lines, last_nl, size = _count_lines(fd)
        if size > last_nl:
            os.ftruncate(fd, last_nl)
            drops("torn", 1, stem)
        if fsync:
            os.fsync(fd)
        name = f"{stem}.{lines}.jsonl"
        os.rename(path, os.path.join(directory, name))
        return _Entry(stem, name, lines)
    except OSError as exc:
        msg = f"cannot seal orphaned spool segment {path!r}: {exc.strerror}"
        raise SpoolError(msg) from exc
    finally:
        os.close(fd)


def bind_destination(directory: str, key: str) -> str:
    """Bind ``directory`` to the destination ``key`` on first use; return the bound key.

    The key (secret-free text naming where the directory's records go) is written once, to
    ``DESTINATION``, by whoever uses the directory first; later callers get that key back and
    compare it with theirs. The write is a hard link of a complete temporary file, so
    concurrent first users agree on one key and nobody reads a half-written one. A directory
    used before this file existed is bound by its next user. Readers ignore the file: a spool
    copied elsewhere is still replayed with ``mqlogging spool replay DIR --to URL`` to any
    destination the operator names.

    Raises:
        SpoolError: the file can neither be created nor read.
    """
    path = os.path.join(directory, _DESTINATION)
    text = key.rstrip("\n") + "\n"
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().rstrip("\n")
    except FileNotFoundError:
        pass
    except OSError as exc:
        msg = f"cannot read {path!r}: {exc.strerror}"
        raise SpoolError(msg) from exc
    tmp = os.path.join(directory, f".{_DESTINATION}.{os.getpid()}.{getrandbits(32):08x}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            os.link(tmp, path)
        except FileExistsError:
            with open(path, encoding="utf-8") as f:
                return f.read().rstrip("\n")
    except OSError as exc:
        msg = f"cannot record the destination of spool directory {directory!r}: {exc.strerror}"
        raise SpoolError(msg) from exc
    finally:
        _unlink(tmp)
    return text.rstrip("\n")


# -- fork safety ----------------------------------------------------------------------------
# Spool and SpoolReader register with the package's one fork registry (mqlogging._fork), which
# calls their after_fork_in_child() in a forked child: they close their copies of the
# parent's descriptors (never unlock them) and start with nothing of the parent's.


# -- writer ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _OpenSegment:
    stem: str
    fd: int
    size: int = 0
    records: int = 0
    created: float = field(default_factory=time.monotonic)


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
        fsync: str = "segment",
        overflow: str = "drop_oldest",
    ) -> None:
        self.directory = os.fspath(directory)
        _validate(
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
        #: Called (with the lock held) with the unconfirmed lines of a segment the bounds
        #: delete, and the reason, before they go: the handler announces them (drop markers).
        self.drop_hook: Callable[[list[bytes], str], None] | None = None
        _fork.register(self)

    def __repr__(self) -> str:
        return f"Spool({self.directory!r})"

    def wrote(self, stem: str) -> bool:
        """True if ``stem`` is a segment this :class:`Spool` created (in this process)."""
        return stem in self._own

    def foreign_segments(self) -> bool:
        """True if the directory holds a segment this :class:`Spool` did not write.

        One ``listdir``, no lock, no claim: the handler's cheap periodic check for segments left
        by other processes sharing the directory (exited workers, crashed writers) before it
        starts a ``sealed_only`` reader to adopt them. Open segments of live writers count too;
        the reader skips those.

        Raises:
            SpoolError: the directory cannot be listed.
        """
        return any(
            entry.name is not None and entry.stem not in self._own
            for entry in _scan(self.directory).values()
        )

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
        data = b"\n".join(bodies) + b"\n"
        if data.count(b"\n") != len(bodies):  # a body contains a newline: keep one per line
            data = b"\n".join(b.replace(b"\n", b" ") for b in bodies) + b"\n"
        with self._lock:
            if self._closed:
                msg = f"spool {self.directory!r} is closed"
                raise SpoolError(msg)
            try:
                if not self._make_room(len(data), len(bodies)):
                    return 0
                seg = self._segment_for(len(data))
                self._write(seg, data)
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
        entries = _scan(self.directory)
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
                        lines, _, length = _count_lines(fd)
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
            done = _read_ack(self.directory, entry.stem)[1]
            segments += 1
            size += length
            records += max(0, lines - done)
            if oldest is None:
                oldest = _stem_time(entry.stem)
        dropped = _read_journal(self.directory)
        with self._lock:
            failed = self._failed
            for reason, n in self._unjournaled.items():
                dropped[reason] = dropped.get(reason, 0) + n
        return SpoolStats(
            segments=segments, open_segments=opened, bytes=size, records=records,
            dropped=dropped, failed=failed, oldest=oldest,
        )  # fmt: skip

    # -- internals (called with self._lock held) ----------------------------------------------

    def _drop(self, reason: str, records: int, segment: str = "") -> None:
        if records > 0 and not _journal(self.directory, reason, records, segment):
            self._unjournaled[reason] = self._unjournaled.get(reason, 0) + records

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
        ns = max(time.time_ns(), self._last_ns + 1)
        self._last_ns = ns
        stem = f"{ns:020d}-{os.getpid()}-{getrandbits(32):08x}"
        tmp = os.path.join(self.directory, f".{stem}.tmp")
        path = os.path.join(self.directory, stem + _OPEN_SUFFIX)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            msg = f"cannot create spool segment in {self.directory!r}: {exc.strerror}"
            raise SpoolError(msg) from exc
        try:
            # Locked before it gets its visible name, so no reader ever sees it unlocked.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(tmp, path)
            if self.fsync == "always":
                _fsync_dir(self.directory)
        except OSError as exc:
            os.close(fd)
            _unlink(tmp)
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
            path = os.path.join(self.directory, seg.stem + _OPEN_SUFFIX)
            msg = f"cannot write to spool segment {path!r}: {exc.strerror or exc}"
            raise SpoolError(msg) from exc
        seg.size += len(data)

    def _seal_current(self) -> None:
        seg = self._seg
        if seg is None:
            return
        self._seg = None
        path = os.path.join(self.directory, seg.stem + _OPEN_SUFFIX)
        try:
            if seg.records == 0:
                _unlink(path)
                return
            if self.fsync != "never":
                os.fsync(seg.fd)
            os.rename(path, os.path.join(self.directory, f"{seg.stem}.{seg.records}.jsonl"))
            if self.fsync != "never":
                _fsync_dir(self.directory)
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
        entries = _scan(self.directory)
        # Forget our segments that are gone; rebound, not mutated: foreign_segments() reads it
        # without the lock.
        self._own = self._own & entries.keys()
        total = 0
        horizon = time.time() - self.max_age
        own = self._seg.stem if self._seg is not None else None
        for listed in sorted(entries.values(), key=lambda e: e.stem):
            entry = listed
            if entry.name is None:
                if entry.side:
                    self._collect_garbage(entry.stem)
                continue
            if entry.count is None and entry.stem != own:
                sealed = _seal_orphan(self.directory, entry.stem, self.fsync != "never", self._drop)
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

    def _collect_garbage(self, stem: str) -> None:
        fd = _claim(self.directory, stem)
        if fd is None:
            return
        if _resolve(self.directory, stem) is not None:
            os.close(fd)
            return
        _remove_segment(self.directory, stem, None, fd)

    def _drop_segment(self, entry: _Entry, reason: str) -> bool:
        """Delete a sealed segment nobody is replaying; count its unconfirmed records."""
        fd = _claim(self.directory, entry.stem)
        if fd is None:
            return False
        current = _resolve(self.directory, entry.stem)
        if current is None or current.count is None:
            os.close(fd)
            return False
        offset, done = _read_ack(self.directory, entry.stem)
        if self.drop_hook is not None:
            self._announce(current, offset, current.count - done, reason)
        _remove_segment(self.directory, entry.stem, current.name, fd)
        self._drop(reason, current.count - done, entry.stem)
        return True

    def _announce(self, entry: _Entry, offset: int, records: int, reason: str) -> None:
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
            for entry in sorted(_scan(self.directory).values(), key=lambda e: e.stem):
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
        """In a forked child (see :mod:`mqlogging._fork`): fresh locks, no segment of the
        parent's (its descriptor closed, never unlocked), numbering of the child's own."""
        self._lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        if self._seg is not None:
            # Close our copy only: flock(LOCK_UN) would release the parent's writer lock.
            with contextlib.suppress(OSError):
                os.close(self._seg.fd)
            self._seg = None
        self._last_ns = 0
        self._own = set()  # the parent's segments are not the child's

    # -- for readers --------------------------------------------------------------------------

    def _wait_append(self, seen: int, timeout: float) -> int:
        with self._cond:
            if self._appends == seen:
                self._cond.wait(timeout)
            return self._appends


# -- reader ---------------------------------------------------------------------------------


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


class SpoolReader:
    """Claims segments of a spool directory oldest-first and reads their records in order.

    Args:
        directory: the spool directory (created if missing, so a consumer may start first).
        spool: a :class:`Spool` of this process whose appends wake :meth:`wait` (write-ahead).
        fsync: fsync ``.ack`` files on commit (slower; the default relies on the OS).
        validate: parse every line as JSON and skip (count) the corrupt ones. ``False`` skips
            only empty lines: for a write-ahead sender reading back bodies its own formatter
            produced (~2x faster replay); corrupt lines then reach the consumer.
        sealed_only: never read the open segment of a live writer (open segments of dead
            writers are sealed and read), except the segments ``own`` accepts. For the
            handler: it must not compete with other live writers' own readers.
        skip: segments (by stem) this reader must never take (the handler's own segments).
        own: segments (by stem) of this reader's own writer (the handler's :class:`Spool`,
            :meth:`Spool.wrote`): read even while open under ``sealed_only``, and ordered as
            one writer of their own (see below).

    Order per writer, whatever the number of readers: a reader takes one writer's segments
    only in creation order. Once a segment is held by another reader (or is a live open
    segment this reader may not read), the newer segments of the same writer are left alone
    in that :meth:`read`, so no reader ships a writer's newer segment while an older one is
    still being shipped elsewhere (issue #11, defect 3). A writer is the pid field of the
    stem (conservative: two writers of one process, or a reused pid, are ordered together),
    except that ``own`` segments form a writer of their own. :attr:`deferred` lists the
    segments the last :meth:`read` left for that reason, so a caller can tell "nothing to
    read" from "the rest is held elsewhere".

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
        sealed_only: bool = False,
        skip: Callable[[str], bool] | None = None,
        own: Callable[[str], bool] | None = None,
    ) -> None:
        self.directory = os.fspath(directory)
        self._spool = spool
        self._sealed_only = sealed_only
        self._skip = skip
        self._own = own
        # Stems the last read() left because another reader held them (or an older segment
        # of their writer): see the class docstring.
        self.deferred: frozenset[str] = frozenset()
        self._fsync = fsync
        self._validate = _parse_json if validate else _nonempty
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
            self._seen = self._spool._appends
        for stem in sorted(self._claims):
            if len(out) >= max_records:
                return out
            claim = self._claims.get(stem)
            if claim is not None:
                self._read_segment(claim, out, max_records)
        if len(out) >= max_records:
            return out
        self.deferred = frozenset()
        held: set[str] = set()  # writers with a segment another reader holds (or live)
        deferred: set[str] = set()
        for stem, entry in sorted(_scan(self.directory).items()):
            if len(out) >= max_records:
                break
            if stem in self._claims:
                continue
            if entry.name is None:
                if entry.side:
                    self._collect_garbage(stem)
                continue
            if self._skip is not None and self._skip(stem):
                continue
            writer = self._writer(stem)
            if writer in held:
                deferred.add(stem)
                continue
            taken = self._take(entry)
            if isinstance(taken, _Claim):
                self._read_segment(taken, out, max_records)
            elif taken is _BUSY:
                held.add(writer)
                deferred.add(stem)
        self.deferred = frozenset(deferred)
        return out

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
            self._seen = self._spool._wait_append(self._seen, timeout)
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
        if records > 0 and not _journal(self.directory, reason, records, segment):
            self._unjournaled[reason] = self._unjournaled.get(reason, 0) + records

    def _writer(self, stem: str) -> str:
        """The writer a segment belongs to, for ordering (see the class docstring)."""
        if self._owns(stem):
            return ""  # no pid field is empty
        return stem.split("-", 2)[1]

    def _take(self, entry: _Entry) -> _Claim | object | None:
        """Claim ``entry``: its claim, ``_BUSY`` if another reader holds it (or it is a live
        open segment this reader may not read), ``None`` if it is gone."""
        lock_fd = _claim(self.directory, entry.stem)
        if lock_fd is None:
            return _BUSY
        try:
            current = _resolve(self.directory, entry.stem)
            if current is None or current.name is None:
                _remove_segment(self.directory, entry.stem, None, lock_fd)  # leftovers
                return None
            if current.count is None:
                sealed = _seal_orphan(self.directory, entry.stem, self._fsync, self._drop)
                current = sealed or _resolve(self.directory, entry.stem) or current
                if self._sealed_only and current.count is None and not self._owns(entry.stem):
                    os.close(lock_fd)  # a live writer's open segment: not ours to take
                    return _BUSY
            try:
                fd = os.open(
                    os.path.join(self.directory, current.name or ""), os.O_RDONLY | os.O_CLOEXEC
                )
            except FileNotFoundError:
                current = _resolve(self.directory, entry.stem)
                if current is None or current.name is None:
                    _remove_segment(self.directory, entry.stem, None, lock_fd)
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
        offset, lines = _read_ack(self.directory, entry.stem)
        claim = _Claim(
            stem=entry.stem, lock_fd=lock_fd, fd=fd, name=current.name or "",
            sealed=current.count is not None, pos=offset, line=lines,
            committed=(offset, lines), high=lines, buf_off=offset,
        )  # fmt: skip
        self._claims[entry.stem] = claim
        return claim

    def _owns(self, stem: str) -> bool:
        return self._own is not None and self._own(stem)

    def _collect_garbage(self, stem: str) -> None:
        """Remove ``.ack``/``.lock`` files left by a segment deleted by a crashed process."""
        fd = _claim(self.directory, stem)
        if fd is None:
            return
        if _resolve(self.directory, stem) is not None:
            os.close(fd)
            return
        _remove_segment(self.directory, stem, None, fd)

    def _fill(self, claim: _Claim) -> bool:
        start = claim.buf_off + len(claim.buf)
        try:
            data = os.pread(claim.fd, _CHUNK, start)
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
        self._parse(claim, out, limit)
        if claim.eof and not claim.sealed and len(out) < limit:
            # At the end of an open segment: has its writer sealed it, or died?
            open_path = os.path.join(self.directory, claim.stem + _OPEN_SUFFIX)
            if (
                not os.path.exists(open_path)
                or _seal_orphan(self.directory, claim.stem, self._fsync, self._drop) is not None
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
        self._settle(claim, idle=len(out) == before)

    def _became_sealed(self, claim: _Claim) -> None:
        current = _resolve(self.directory, claim.stem)
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
        validate, invalid = self._validate, _INVALID
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
            try:
                validate(line)
            except invalid:
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
        if pending or not (claim.sealed and claim.eof):
            if mark != claim.committed and mark[1] > claim.committed[1]:
                try:
                    claim.ack_fd = _write_ack(
                        self.directory, claim.stem, claim.ack_fd, mark[0], mark[1],
                        fsync=self._fsync,
                    )  # fmt: skip
                except SpoolError:
                    # Disk full (issue 6, `make faults` scenario 9): keep the progress in memory
                    # and go on. Raising here wedged every read() for good, and only finishing
                    # the segment frees the space; a crash before the next successful write
                    # replays these records again (at-least-once), it never loses them.
                    claim.ack_fd = -1
                claim.committed = mark
            if not pending and idle and not claim.sealed:
                self._release(claim)  # caught up with a live writer: let others take it
            return
        # Sealed, read to the end, everything confirmed: the segment is finished.
        self._claims.pop(claim.stem, None)
        os.close(claim.fd)
        if claim.ack_fd >= 0:
            os.close(claim.ack_fd)
        lock_fd, claim.lock_fd = claim.lock_fd, -1
        _remove_segment(self.directory, claim.stem, claim.name, lock_fd)

    def _release(self, claim: _Claim) -> None:
        self._claims.pop(claim.stem, None)
        if claim.lock_fd >= 0:
            for fd in (claim.fd, claim.ack_fd, claim.lock_fd):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            claim.lock_fd = -1

    def after_fork_in_child(self) -> None:
        """In a forked child (see :mod:`mqlogging._fork`): the parent's claims stay the
        parent's; the child closes its copies of their descriptors and claims nothing."""
        for claim in self._claims.values():
            # Close our copies only: flock(LOCK_UN) would release the parent's claims.
            for fd in (claim.fd, claim.ack_fd, claim.lock_fd):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            claim.lock_fd = -1
        self._claims = {}
