"""The spool's on-disk format: every file name, side file and line rule, in one place.

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
notices (:func:`seal_orphan`). No absolute path or host state is stored, so a directory copied
elsewhere replays there.

Every other module of the package (writer, reader, follower) and every tool above it (the
``mqlogging spool`` commands, ``mqlogging audit``, the ``local://`` tap) goes through the
functions here; none of them parses a file name or an ``.ack`` line itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from random import getrandbits

from ..errors import SpoolError
from ..wire import decode

__all__ = [
    "CHUNK",
    "Entry",
    "SegmentView",
    "bind_destination",
    "claim",
    "collect_garbage",
    "count_lines",
    "data_path",
    "frame",
    "fsync_dir",
    "is_json_line",
    "is_json_null",
    "is_open",
    "journal",
    "lane_spools",
    "new_stem",
    "open_name",
    "read_ack",
    "read_destination",
    "read_journal",
    "refuse_lane_root",
    "remove_segment",
    "resolve",
    "scan",
    "seal_orphan",
    "sealed_name",
    "segments",
    "stem_time",
    "stem_writer",
    "temp_name",
    "unconfirmed_lines",
    "unlink",
    "write_ack",
]

CHUNK = 1 << 20
"""Bytes read per ``pread`` when scanning or following a segment."""

_OPEN_SUFFIX = ".open"
_STEM = r"\d{20}-\d+-[0-9a-f]{8}"
_NAME_RE = re.compile(rf"^({_STEM})(?:\.open|\.(\d+)\.jsonl|\.(ack|lock))$")
_JOURNAL = "dropped.log"
_DESTINATION = "DESTINATION"
_ACK_COMPACT = 64 * 1024

#: Called as ``drops(reason, records, segment)`` to count records a function had to discard.
Drops = Callable[[str, int, str], None]


# -- names ----------------------------------------------------------------------------------


def new_stem(after_ns: int) -> tuple[str, int]:
    """A fresh segment stem of this process, later than ``after_ns``; and its time in ns.

    ``<time_ns>-<pid>-<random>``: names sort in creation order (the caller passes the time of
    its previous stem, so two segments of one writer never share a time).
    """
    ns = max(time.time_ns(), after_ns + 1)
    return f"{ns:020d}-{os.getpid()}-{getrandbits(32):08x}", ns


def open_name(stem: str) -> str:
    """File name of the open (still written) segment ``stem``."""
    return stem + _OPEN_SUFFIX


def sealed_name(stem: str, records: int) -> str:
    """File name of the segment ``stem`` once sealed with ``records`` lines."""
    return f"{stem}.{records}.jsonl"


def temp_name(stem: str) -> str:
    """Hidden name a segment is created under (locked) before it is renamed into view."""
    return f".{stem}.tmp"


def data_path(directory: str, entry: Entry) -> str:
    """Path of the data file (open or sealed) of ``entry``."""
    return os.path.join(directory, entry.name or "")


def stem_time(stem: str) -> float:
    """Creation time (Unix seconds) of the segment ``stem``."""
    return int(stem[:20]) / 1e9


def stem_writer(stem: str) -> str:
    """The pid field of ``stem``: the writer a segment belongs to, for ordering only."""
    return stem.split("-", 2)[1]


def is_open(directory: str, stem: str) -> bool:
    """True while ``stem`` is still an open segment (not sealed, not deleted)."""
    return os.path.exists(os.path.join(directory, stem + _OPEN_SUFFIX))


# -- framing --------------------------------------------------------------------------------


def frame(bodies: Sequence[bytes]) -> bytes:
    """``bodies`` as segment lines: one per body, each ending with a newline.

    A body containing a newline (JSON pretty-printed across lines) has its newlines replaced by
    spaces: for valid JSON that changes only insignificant whitespace, and it keeps one record
    per line.
    """
    data = b"\n".join(bodies) + b"\n"
    if data.count(b"\n") != len(bodies):
        data = b"\n".join(b.replace(b"\n", b" ") for b in bodies) + b"\n"
    return data


def is_json_line(line: bytes) -> bool:
    """True if ``line`` holds one JSON value: the spool's rule for a readable (not
    ``corrupt``) line, shared by every reader and tool."""
    return decode(line) is not None or is_json_null(line)


def is_json_null(line: bytes) -> bool:
    """True if ``line`` is the JSON value ``null``: the one readable line that
    :func:`mqlogging.wire.decode` also answers ``None`` for (hot loops call ``decode`` and
    ask this only when it said ``None``)."""
    return line.strip(b" \t\r\n") == b"null"  # JSON's whitespace only, as the decoder


def count_lines(fd: int) -> tuple[int, int, int]:
    """``(complete lines, offset after the last newline, file size)`` of an open file."""
    lines = 0
    last_nl = 0
    pos = 0
    while True:
        chunk = os.pread(fd, CHUNK, pos)
        if not chunk:
            break
        n = chunk.count(b"\n")
        if n:
            lines += n
            last_nl = pos + chunk.rindex(b"\n") + 1
        pos += len(chunk)
    return lines, last_nl, pos


# -- listing --------------------------------------------------------------------------------


@dataclass(slots=True)
class Entry:
    """One segment as listed: its stem, data file and side files."""

    stem: str
    name: str | None = None  # data file name
    count: int | None = None  # records of a sealed segment; None while open
    side: int = 0  # number of .ack/.lock files


def scan(directory: str, *, missing_ok: bool = True) -> dict[str, Entry]:
    """The segments of ``directory`` by stem (unordered); other files are ignored.

    Raises:
        SpoolError: the directory cannot be listed (or is missing, unless ``missing_ok``).
    """
    entries: dict[str, Entry] = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError as exc:
        if missing_ok:
            return entries
        msg = f"cannot list spool directory {directory!r}: {exc.strerror}"
        raise SpoolError(msg) from exc
    except OSError as exc:
        msg = f"cannot list spool directory {directory!r}: {exc.strerror}"
        raise SpoolError(msg) from exc
    for name in names:
        match = _NAME_RE.match(name)
        if not match:
            continue
        entry = entries.get(match[1])
        if entry is None:
            entry = entries[match[1]] = Entry(match[1])
        if match[3]:
            entry.side += 1
        else:
            entry.name = name
            entry.count = int(match[2]) if match[2] else None
    return entries


def resolve(directory: str, stem: str) -> Entry | None:
    """Find the current data file of ``stem`` (it may have been sealed since it was listed)."""
    if os.path.exists(os.path.join(directory, stem + _OPEN_SUFFIX)):
        return Entry(stem, stem + _OPEN_SUFFIX, None)
    entry = scan(directory).get(stem)
    if entry is None or entry.name is None:
        return None
    return entry


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
            confirmed=read_ack(directory, stem)[0],
        )
        for stem, entry in sorted(scan(directory).items())
        if entry.name is not None
    ]


def unconfirmed_lines(directory: str) -> Iterator[bytes | None]:
    """Every line not yet confirmed, oldest segment first, read-only (see :func:`segments`);
    ``None`` for a torn last line (a sealed segment ends mid-line only when a writer died).

    Raises:
        SpoolError: the directory or a segment cannot be read.
    """
    for segment in segments(directory):
        try:
            with open(segment.path, "rb") as f:
                f.seek(segment.confirmed)
                data = f.read()
        except FileNotFoundError:
            continue  # deleted by a replay meanwhile
        except OSError as exc:
            msg = f"cannot read spool segment {segment.path!r}: {exc.strerror}"
            raise SpoolError(msg) from exc
        *complete, tail = data.split(b"\n")
        yield from complete
        if tail and segment.sealed:
            yield None


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


# -- files ----------------------------------------------------------------------------------


def unlink(path: str) -> None:
    """Delete ``path``; already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def fsync_dir(directory: str) -> None:
    """Make renames and creations in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def claim(directory: str, stem: str) -> int | None:
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


def remove_segment(directory: str, stem: str, name: str | None, claim_fd: int) -> None:
    """Delete a segment and its side files; the caller holds the claim ``claim_fd``."""
    try:
        if name is not None:
            unlink(os.path.join(directory, name))
        unlink(os.path.join(directory, stem + ".ack"))
        unlink(os.path.join(directory, stem + ".lock"))
    except OSError as exc:
        msg = f"cannot delete spool segment {os.path.join(directory, stem)!r}: {exc.strerror}"
        raise SpoolError(msg) from exc
    finally:
        os.close(claim_fd)


def collect_garbage(directory: str, stem: str) -> None:
    """Remove ``.ack``/``.lock`` files left by a segment deleted by a crashed process."""
    fd = claim(directory, stem)
    if fd is None:
        return
    if resolve(directory, stem) is not None:
        os.close(fd)
        return
    remove_segment(directory, stem, None, fd)


def seal_orphan(directory: str, stem: str, fsync: bool, drops: Drops) -> Entry | None:
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
        lines, last_nl, size = count_lines(fd)
        if size > last_nl:
            os.ftruncate(fd, last_nl)
            drops("torn", 1, stem)
        if fsync:
            os.fsync(fd)
        name = sealed_name(stem, lines)
        os.rename(path, os.path.join(directory, name))
        return Entry(stem, name, lines)
    except OSError as exc:
        msg = f"cannot seal orphaned spool segment {path!r}: {exc.strerror}"
        raise SpoolError(msg) from exc
    finally:
        os.close(fd)


# -- progress (.ack) ------------------------------------------------------------------------


def read_ack(directory: str, stem: str) -> tuple[int, int]:
    """``(offset, records)`` confirmed in ``stem``: the last complete line of ``<stem>.ack``
    (``(0, 0)`` when there is none)."""
    try:
        with open(os.path.join(directory, stem + ".ack"), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return 0, 0
    except OSError:
        return 0, 0  # unreadable progress: replay the segment again (at-least-once)
    for raw in reversed(data.split(b"\n")[:-1]):  # a torn last line has no newline: ignored
        try:
            doc = decode(raw)
            return int(doc["offset"]), int(doc["records"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0, 0


def write_ack(directory: str, stem: str, fd: int, offset: int, records: int, *, fsync: bool) -> int:
    """Record progress: append one line to ``<stem>.ack`` (``fd``, ``-1`` to open it).

    Appending a ~30-byte line is atomic enough: a torn line has no newline and is ignored by
    :func:`read_ack`, which then uses the line before. No rename per commit (a rename costs
    milliseconds on loaded overlay filesystems); past 64 KiB the log is compacted by writing a
    one-line file and renaming it over. Returns the fd to reuse; on failure the fd is closed.
    """
    path = os.path.join(directory, stem + ".ack")
    line = b'{"offset":%d,"records":%d}\n' % (offset, records)
    try:
        if fd >= 0 and os.fstat(fd).st_size > _ACK_COMPACT:
            os.close(fd)
            fd = -1
            _replace_ack(directory, stem, line, fsync=fsync)
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


def _replace_ack(directory: str, stem: str, line: bytes, *, fsync: bool) -> None:
    """Compact ``<stem>.ack`` to the one ``line`` (a complete file renamed over the log)."""
    tmp = os.path.join(directory, f".{stem}.ack.tmp")
    tfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(tfd, line)
        if fsync:
            os.fsync(tfd)
    finally:
        os.close(tfd)
    os.replace(tmp, os.path.join(directory, stem + ".ack"))


# -- drop journal (dropped.log) -------------------------------------------------------------


def journal(directory: str, reason: str, records: int, segment: str = "") -> bool:
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


def read_journal(directory: str) -> dict[str, int]:
    """Records dropped from ``directory`` by reason, summed over ``dropped.log`` (read-only)."""
    totals: dict[str, int] = {}
    try:
        with open(os.path.join(directory, _JOURNAL), "rb") as f:
            for raw in f:
                try:
                    event = decode(raw)
                    totals[event["reason"]] = totals.get(event["reason"], 0) + int(event["records"])
                except (ValueError, KeyError, TypeError):
                    continue
    except OSError:
        pass
    return totals


# -- DESTINATION ----------------------------------------------------------------------------


def read_destination(directory: str) -> str | None:
    """The key ``directory`` is bound to (see :func:`bind_destination`), ``None`` if unbound or
    unreadable: a writer remembers it to bind the directory again if it is deleted under it."""
    try:
        with open(os.path.join(directory, _DESTINATION), encoding="utf-8") as f:
            return f.read().rstrip("\n") or None
    except OSError:
        return None


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
        unlink(tmp)
    return text.rstrip("\n")
