"""The segment spool: real files, real processes, real locks and crashes (no mocks)."""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import shutil
import signal
from collections import Counter
from pathlib import Path

import pytest

from harness.helpers import wait_until
from mqlogging.errors import ConfigurationError, SpoolError, SpoolFull
from mqlogging.spool import (
    Access,
    SegmentChoice,
    Spool,
    SpoolFollower,
    SpoolReader,
    SpoolRecord,
    coerce_spool_options,
)
from mqlogging.spool import format as fmt

CTX = multiprocessing.get_context("fork")


def body(writer: int, seq: int, pad: int = 0) -> bytes:
    return json.dumps({"id": f"{writer}-{seq}", "w": writer, "n": seq, "pad": "x" * pad}).encode()


def drain(directory: Path | str, batch: int = 333) -> list[dict[str, object]]:
    """Replay everything with a fresh reader, committing each batch."""
    out: list[dict[str, object]] = []
    with SpoolReader(directory) as reader:
        while records := reader.read(batch):
            out.extend(json.loads(r.body) for r in records)
            reader.commit(records)
    return out


def segment_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith((".jsonl", ".open")))


# -- child processes ------------------------------------------------------------------------


def _writer(directory: str, writer: int, count: int, batch: int, segment_bytes: int) -> None:
    with Spool(directory, segment_bytes=segment_bytes) as spool:
        for start in range(0, count, batch):
            spool.append([body(writer, n) for n in range(start, min(count, start + batch))])


def _writer_forever(directory: str, confirmed: multiprocessing.sharedctypes.Synchronized) -> None:  # type: ignore[type-arg]
    spool = Spool(directory, segment_bytes=64 * 1024)
    n = 0
    while True:
        spool.append([body(0, n + i, pad=50) for i in range(7)])
        n += 7
        confirmed.value = n


def _writer_torn(directory: str, count: int) -> None:
    spool = Spool(directory)
    spool.append([body(0, n) for n in range(count)])
    assert spool._seg is not None
    os.write(spool._seg.fd, b'{"id": "0-torn", "w": 0, "n": ')  # a crash in mid-line...
    os.kill(os.getpid(), signal.SIGKILL)  # ...and the process dies holding its lock


def _reader_crash(directory: str, commit: int, extra: int) -> None:
    reader = SpoolReader(directory)
    records = reader.read(commit + extra)
    reader.commit(records[:commit])
    os.kill(os.getpid(), signal.SIGKILL)  # read `extra` more, never committed them


def _reader_all(directory: str, out: multiprocessing.queues.Queue, idle_polls: int) -> None:  # type: ignore[type-arg]
    reader = SpoolReader(directory)
    seen: list[str] = []
    idle = 0
    while idle < idle_polls:
        records = reader.read(50)
        if not records:
            idle += 1
            reader.wait(0.02)
            continue
        idle = 0
        seen.extend(json.loads(r.body)["id"] for r in records)
        reader.commit(records)
    reader.close()
    out.put(seen)


def _writer_fsize(directory: str, out: multiprocessing.queues.Queue) -> None:  # type: ignore[type-arg]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    spool = Spool(directory)
    accepted = failed = errors = 0
    n = 0
    messages = []
    while errors < 3:
        batch = [body(0, n + i, pad=200) for i in range(10)]
        n += 10
        try:
            accepted += spool.append(batch)
        except SpoolError as exc:
            errors += 1
            failed += len(batch)
            messages.append(str(exc))
    spool.close()
    out.put((n, accepted, failed, spool.stats().failed, messages))


def run(target, *args) -> multiprocessing.process.BaseProcess:  # type: ignore[no-untyped-def]
    proc = CTX.Process(target=target, args=args)
    proc.start()
    return proc


# -- tests ------------------------------------------------------------------------------------


class OwnThenSealed(SegmentChoice):
    """The handler's policy: its own segments (open too) as one writer, others only sealed."""

    def __init__(self, spool: Spool) -> None:
        self.wrote = spool.wrote

    def access(self, stem: str) -> Access:
        return "read" if self.wrote(stem) else "sealed"

    def writer(self, stem: str) -> str:
        return "" if self.wrote(stem) else super().writer(stem)


class TestFormat:
    def test_segments_are_plain_json_lines(self, tmp_path: Path) -> None:
        """A sealed segment is the bodies, one per line, and its name carries the count."""
        bodies = [body(0, n) for n in range(5)]
        with Spool(tmp_path) as spool:
            assert spool.append(bodies) == 5
        [name] = segment_files(tmp_path)
        assert name.endswith(".5.jsonl")
        assert b"".join(b + b"\n" for b in bodies) == (tmp_path / name).read_bytes()

    def test_newlines_inside_a_body_become_spaces(self, tmp_path: Path) -> None:
        """Pretty-printed JSON stays one record per line and still parses to the same value."""
        doc = {"id": "x", "nested": {"a": [1, 2]}}
        with Spool(tmp_path) as spool:
            spool.append([json.dumps(doc, indent=2).encode(), body(0, 1)])
        replayed = drain(tmp_path)
        assert [doc, json.loads(body(0, 1))] == replayed

    def test_options_from_strings(self) -> None:
        """URL-query strings are coerced (binary sizes, durations) and validated."""
        expected = {"segment_bytes": 1 << 20, "max_bytes": 2 << 30, "max_age": 7 * 86400.0,
                    "segment_age": 90.0, "fsync": "always", "overflow": "refuse"}  # fmt: skip
        actual = coerce_spool_options({"segment_bytes": "1M", "max_bytes": "2GiB",
                                       "max_age": "7d", "segment_age": "90s",
                                       "fsync": "ALWAYS", "overflow": "refuse"})  # fmt: skip
        assert expected == actual
        for bad in ({"max_bytes": "lots"}, {"fsync": "sometimes"}, {"colour": "red"},
                    {"segment_bytes": "2M", "max_bytes": "1M"}):  # fmt: skip
            with pytest.raises(ConfigurationError):
                coerce_spool_options(bad)


class TestConcurrency:
    def test_writer_processes_each_record_exactly_once_in_order(self, tmp_path: Path) -> None:
        """4 processes x 5000 records into one directory: every record replayed once, and
        each writer's records in the order it appended them (FIFO across its segments)."""
        procs = [run(_writer, str(tmp_path), w, 5000, 37, 32 * 1024) for w in range(4)]
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        assert len(segment_files(tmp_path)) > 4 * 2  # rotated by size
        replayed = drain(tmp_path)
        ids = Counter(str(r["id"]) for r in replayed)
        assert len(replayed) == 20000
        assert {f"{w}-{n}" for w in range(4) for n in range(5000)} == set(ids)
        for w in range(4):
            assert list(range(5000)) == [r["n"] for r in replayed if r["w"] == w]
        assert segment_files(tmp_path) == []  # all confirmed, all deleted

    def test_threads_share_one_spool(self, tmp_path: Path) -> None:
        """Appends from 8 threads to one Spool instance never interleave inside a line."""
        import threading

        spool = Spool(tmp_path, segment_bytes=16 * 1024)

        def work(w: int) -> None:
            for n in range(0, 1000, 2):
                spool.append([body(w, n), body(w, n + 1)])

        threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        spool.close()
        replayed = drain(tmp_path)
        assert len(replayed) == 8000
        for w in range(8):
            assert list(range(1000)) == [r["n"] for r in replayed if r["w"] == w]

    def test_reader_processes_share_the_work(self, tmp_path: Path) -> None:
        """Two reader processes draining while two writers write: union is exactly once."""
        out = CTX.Queue()
        writers = [run(_writer, str(tmp_path), w, 3000, 20, 8 * 1024) for w in range(2)]
        readers = [run(_reader_all, str(tmp_path), out, 50) for _ in range(2)]
        for p in writers:
            p.join(60)
        seen = out.get(timeout=60) + out.get(timeout=60)
        for p in readers:
            p.join(10)
        seen += [str(r["id"]) for r in drain(tmp_path)]  # whatever the readers left behind
        assert len(seen) == 6000
        assert {f"{w}-{n}" for w in range(2) for n in range(3000)} == set(seen)


class TestWriterOrder:
    def test_competing_readers_never_skip_past_a_claimed_segment(self, tmp_path: Path) -> None:
        """One writer leaves three sealed segments; reader A holds the first (read, not
        committed): reader B takes neither of the newer two and reports all three as
        deferred. Once A committed the first and let it go, B reads the other two in order;
        each record is read exactly once overall (issue #11, defect 3)."""
        with Spool(tmp_path) as spool:
            for k in range(3):
                spool.append([body(0, 10 * k + i) for i in range(10)])
                spool.seal()
        a, b = SpoolReader(tmp_path), SpoolReader(tmp_path)
        try:
            first = a.read(10)
            assert [json.loads(r.body)["n"] for r in first] == list(range(10))
            assert b.read(100) == []
            assert len(b.deferred) == 3
            a.commit(first)
            a.close()
            rest = b.read(100)
            assert [json.loads(r.body)["n"] for r in rest] == list(range(10, 30))
            assert frozenset() == b.deferred
        finally:
            a.close()
            b.close()

    def test_own_segments_are_a_writer_of_their_own(self, tmp_path: Path) -> None:
        """A reader whose choice reads its own writer's segments and only sealed others (the
        handler's policy) reads its writer's live open segment
        but not another live writer's, and that other writer's held segment does not hold
        back its own segments although both share a pid."""
        mine, other = Spool(tmp_path), Spool(tmp_path)
        try:
            other.append([body(1, 0)])  # older, live, open: not ours to read
            mine.append([body(0, 0), body(0, 1)])
            reader = SpoolReader(tmp_path, spool=mine, choice=OwnThenSealed(mine))
            records = reader.read(10)
            assert [json.loads(r.body)["id"] for r in records] == ["0-0", "0-1"]
            assert not any(mine.wrote(stem) for stem in reader.deferred)
            assert len(reader.deferred) == 1  # the other writer's open segment
            reader.close()
        finally:
            mine.close()
            other.close()


def _append_in_forked_child(spool: Spool) -> None:
    spool.append([body(1, n) for n in range(100)])
    spool.close()


class TestFork:
    def test_forked_child_writes_its_own_segment(self, tmp_path: Path) -> None:
        """A child forked while the parent has an open segment appends to a new segment of
        its own; the parent keeps its segment (and its lock) and both sets replay in order."""
        spool = Spool(tmp_path)
        spool.append([body(0, n) for n in range(100)])
        proc = run(_append_in_forked_child, spool)
        proc.join(30)
        assert proc.exitcode == 0
        spool.append([body(0, n) for n in range(100, 200)])
        opened = [n for n in segment_files(tmp_path) if n.endswith(".open")]
        assert len(opened) == 1  # the parent's, still open (its lock survived the child)
        spool.close()
        with SpoolReader(tmp_path) as reader:
            records = reader.read(1000)
            reader.commit(records)
        pids = {json.loads(r.body)["w"]: r.segment.split("-")[1] for r in records}
        assert pids == {0: str(os.getpid()), 1: str(proc.pid)}
        replayed = [json.loads(r.body) for r in records]
        assert [r["n"] for r in replayed if r["w"] == 0] == list(range(200))
        assert [r["n"] for r in replayed if r["w"] == 1] == list(range(100))


class TestCrashes:
    def test_kill_9_mid_line_skips_only_the_torn_line(self, tmp_path: Path) -> None:
        """A writer SIGKILLed in mid-line: its lock is gone, the reader seals the orphan,
        replays every complete record and counts the torn one."""
        proc = run(_writer_torn, str(tmp_path), 500)
        proc.join(30)
        assert proc.exitcode == -signal.SIGKILL
        [name] = segment_files(tmp_path)
        assert name.endswith(".open")
        replayed = drain(tmp_path)
        assert list(range(500)) == [r["n"] for r in replayed]
        stats = Spool(tmp_path).stats()
        assert dict(stats.dropped) == {"torn": 1}
        assert segment_files(tmp_path) == []

    def test_kill_9_at_a_random_moment_loses_nothing_confirmed(self, tmp_path: Path) -> None:
        """Killing a busy writer: every record whose append returned is replayed, in order,
        and the replay is a gap-free prefix (at most a torn line is lost)."""
        confirmed = CTX.Value("q", 0)
        proc = run(_writer_forever, str(tmp_path), confirmed)
        wait_until(lambda: confirmed.value > 30000, timeout=30)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        replayed = [r["n"] for r in drain(tmp_path)]
        assert len(replayed) >= confirmed.value
        assert list(range(len(replayed))) == replayed

    def test_corrupt_lines_are_counted_and_skipped(self, tmp_path: Path) -> None:
        """Invalid JSON and invalid UTF-8 in the middle of a segment never stop the replay."""
        with Spool(tmp_path) as spool:
            spool.append([body(0, n) for n in range(100)])
        [name] = segment_files(tmp_path)
        lines = (tmp_path / name).read_bytes().split(b"\n")
        lines[10] = b'{"id": "broken", '
        lines[50] = b'{"id": "\xff\xfe"}'
        (tmp_path / name).write_bytes(b"\n".join(lines))
        replayed = [r["n"] for r in drain(tmp_path)]
        assert [n for n in range(100) if n not in (10, 50)] == replayed
        assert Spool(tmp_path).stats().corrupt_lines == 2

    def test_interrupted_replay_resumes_after_last_commit(self, tmp_path: Path) -> None:
        """A reader process killed after committing 1200 of 1500 read records: the next reader
        starts exactly at record 1200; nothing lost, only the uncommitted part repeated."""
        with Spool(tmp_path, segment_bytes=16 * 1024) as spool:
            for start in range(0, 3000, 100):
                spool.append([body(0, n) for n in range(start, start + 100)])
        proc = run(_reader_crash, str(tmp_path), 1200, 300)
        proc.join(30)
        assert proc.exitcode == -signal.SIGKILL
        assert list(range(1200, 3000)) == [r["n"] for r in drain(tmp_path)]

    def test_out_of_order_commits_persist_the_contiguous_prefix(self, tmp_path: Path) -> None:
        """Committing records 5..9 before 0..4 only persists progress once 0..4 are in."""
        with Spool(tmp_path) as spool:
            spool.append([body(0, n) for n in range(10)])
        reader = SpoolReader(tmp_path)
        records = reader.read(10)
        reader.commit(records[5:])
        reader.close()  # "crash": 0..4 never confirmed
        assert list(range(10)) == [r["n"] for r in drain(tmp_path)]
        with Spool(tmp_path) as spool:
            spool.append([body(1, n) for n in range(10)])
        reader = SpoolReader(tmp_path)
        records = reader.read(10)
        reader.commit(records[5:])
        reader.commit(records[:5])
        reader.close()
        assert drain(tmp_path) == []
        assert segment_files(tmp_path) == []

    def test_rewind_gives_records_back(self, tmp_path: Path) -> None:
        """rewind() (a nack) makes the reader return the same records again, flagged."""
        with Spool(tmp_path) as spool:
            spool.append([body(0, n) for n in range(10)])
        with SpoolReader(tmp_path) as reader:
            first = reader.read(10)
            reader.commit(first[:3])
            reader.rewind(first[6:])
            again = reader.read(10)
            assert [json.loads(r.body)["n"] for r in again] == [6, 7, 8, 9]
            assert all(r.redelivered for r in again)
            reader.rewind()
            assert list(range(3, 10)) == [json.loads(r.body)["n"] for r in reader.read(10)]


class TestBounds:
    def test_drop_oldest_counts_every_dropped_record(self, tmp_path: Path) -> None:
        """max_bytes reached: the oldest segments go, and written == replayed + dropped."""
        spool = Spool(tmp_path, segment_bytes=4096, max_bytes=16384)
        for start in range(0, 3000, 10):
            assert spool.append([body(0, n, pad=40) for n in range(start, start + 10)]) == 10
        spool.close()
        dropped = spool.stats().dropped["max_bytes"]
        replayed = [r["n"] for r in drain(tmp_path)]
        assert len(replayed) + dropped == 3000
        assert list(range(dropped, 3000)) == replayed  # the dropped ones are the oldest
        assert dropped > 0

    def test_drop_newest_keeps_the_oldest(self, tmp_path: Path) -> None:
        """overflow=drop_newest: append returns 0 once full; the stored ones are the first."""
        spool = Spool(tmp_path, segment_bytes=4096, max_bytes=16384, overflow="drop_newest")
        stored = sum(spool.append([body(0, n, pad=40) for n in range(s, s + 10)])
                     for s in range(0, 3000, 10))  # fmt: skip
        spool.close()
        assert 3000 - stored == spool.stats().dropped["overflow"]
        assert list(range(stored)) == [r["n"] for r in drain(tmp_path)]

    def test_refuse_raises_spool_full(self, tmp_path: Path) -> None:
        """overflow=refuse: SpoolFull once the bound is reached; nothing of that batch stored."""
        spool = Spool(tmp_path, segment_bytes=4096, max_bytes=16384, overflow="refuse")
        stored = 0
        refused: SpoolFull | None = None
        for s in range(0, 3000, 10):
            try:
                stored += spool.append([body(0, n, pad=40) for n in range(s, s + 10)])
            except SpoolFull as exc:
                refused = exc
                break
        assert refused is not None
        assert "full" in str(refused)
        assert 0 < stored < 3000
        spool.close()
        assert spool.stats().failed == 10
        assert list(range(stored)) == [r["n"] for r in drain(tmp_path)]

    def test_max_age_drops_old_segments(self, tmp_path: Path) -> None:
        """Segments whose newest record is older than max_age are dropped, and counted."""
        with Spool(tmp_path, segment_bytes=4096) as spool:
            for s in range(0, 500, 10):
                spool.append([body(0, n, pad=40) for n in range(s, s + 10)])
        old = 2 * 86400
        for name in segment_files(tmp_path):
            st = (tmp_path / name).stat()
            os.utime(tmp_path / name, (st.st_atime - old, st.st_mtime - old))
        with Spool(tmp_path, max_age=86400) as spool:
            spool.append([body(1, 0)])  # the first append looks at the directory
            assert spool.stats().dropped["max_age"] == 500
        assert [{"w": r["w"], "n": r["n"]} for r in drain(tmp_path)] == [{"w": 1, "n": 0}]

    def test_disk_full_raises_spool_error_and_is_counted(self, tmp_path: Path) -> None:
        """RLIMIT_FSIZE (EFBIG, like ENOSPC): append raises a one-line SpoolError naming the
        file, the failed batch is rolled back and counted, the spool keeps working after."""
        out = CTX.Queue()
        proc = run(_writer_fsize, str(tmp_path), out)
        attempted, accepted, failed, counted, messages = out.get(timeout=60)
        proc.join(10)
        assert proc.exitcode == 0
        assert attempted == accepted + failed
        assert failed == counted == 30
        assert all("\n" not in m and str(tmp_path) in m for m in messages)
        replayed = [r["n"] for r in drain(tmp_path)]
        assert accepted == len(replayed)
        assert len(set(replayed)) == len(replayed)


class TestLiveAndPortable:
    def test_live_segment_is_readable_and_never_deleted(self, tmp_path: Path) -> None:
        """A reader sees a live writer's records at once, but the open file stays until sealed."""
        spool = Spool(tmp_path)
        spool.append([body(0, n) for n in range(3)])
        with SpoolReader(tmp_path) as reader:
            records = reader.read(10)
            reader.commit(records)
            assert len(records) == 3
            assert len([n for n in segment_files(tmp_path) if n.endswith(".open")]) == 1
            spool.append([body(0, 3)])
            records = reader.read(10)
            assert [json.loads(r.body)["n"] for r in records] == [3]
            reader.commit(records)
        spool.close()
        assert drain(tmp_path) == []  # progress was kept: nothing replayed twice
        assert segment_files(tmp_path) == []

    def test_write_ahead_reader_follows_its_spool(self, tmp_path: Path) -> None:
        """The WAL pattern: a reader of the same Spool returns appends in order, across
        rotations, and commits delete finished segments behind it."""
        spool = Spool(tmp_path, segment_bytes=2048)
        reader = spool.reader()
        got: list[int] = []
        for s in range(0, 400, 20):
            spool.append([body(0, n) for n in range(s, s + 20)])
            records = reader.read(1000)
            got.extend(int(json.loads(r.body)["n"]) for r in records)
            reader.commit(records)
        assert list(range(400)) == got
        assert len(segment_files(tmp_path)) == 1  # only the live one is left
        spool.close()
        assert reader.read(10) == []
        reader.close()
        assert segment_files(tmp_path) == []

    def test_copied_directory_replays_elsewhere(self, tmp_path: Path) -> None:
        """A spool copied after its writer died (open segment, foreign pid in the name that is
        alive here) replays completely: liveness is decided by locks, not pids."""
        src, dst = tmp_path / "src", tmp_path / "dst"
        proc = run(_writer_torn, str(src), 200)
        proc.join(30)
        _writer(str(src), 1, 300, 50, 4096)
        shutil.copytree(src, dst)
        for name in segment_files(dst):
            if name.endswith(".open"):  # pretend the writer's pid is one that is alive here
                stem_time, _, rest = name.partition("-")
                _, _, tail = rest.partition("-")
                os.rename(dst / name, dst / f"{stem_time}-{os.getpid()}-{tail}")
        replayed = drain(dst)
        assert len(replayed) == 500
        assert {f"0-{n}" for n in range(200)} | {f"1-{n}" for n in range(300)} == {
            str(r["id"]) for r in replayed
        }
        assert len(segment_files(src)) > 0  # the original is untouched

    def test_stats_describe_the_directory(self, tmp_path: Path) -> None:
        """stats(): segments, open ones, bytes, unconfirmed records and the oldest time."""
        spool = Spool(tmp_path, segment_bytes=4096)
        for s in range(0, 200, 10):
            spool.append([body(0, n, pad=40) for n in range(s, s + 10)])
        files = segment_files(tmp_path)
        stats = spool.stats()
        assert len(files) == stats.segments
        assert stats.open_segments == 1
        assert sum((tmp_path / f).stat().st_size for f in files) == stats.bytes
        assert stats.records == 200
        assert stats.oldest is not None
        # The writer counts its open segment from memory; another process reads the file.
        seen_from_outside = Spool(tmp_path).stats()
        assert (seen_from_outside.records, seen_from_outside.bytes) == (200, stats.bytes)
        reader = SpoolReader(tmp_path)
        reader.commit(reader.read(50))
        assert spool.stats().records == 150
        reader.close()
        spool.close()

    def test_records_carry_their_position(self, tmp_path: Path) -> None:
        """SpoolRecord identifies a record by segment, byte range and line number."""
        with Spool(tmp_path) as spool:
            spool.append([body(0, 0), body(0, 1)])
        with SpoolReader(tmp_path) as reader:
            a, b = reader.read(2)
        assert isinstance(a, SpoolRecord)
        assert (0, len(body(0, 0)) + 1, 0) == (a.offset, a.end, a.line)
        assert (a.end, 1, a.segment) == (b.offset, b.line, b.segment)

    def test_unvalidated_reader_skips_only_empty_lines(self, tmp_path: Path) -> None:
        """validate=False (write-ahead read-back) returns every non-empty line as is."""
        (tmp_path / "00000000000000000001-1-00000000.3.jsonl").write_bytes(
            b'{"a": 1}\n\nnot json\n'
        )
        with SpoolReader(tmp_path, validate=False) as reader:
            records = reader.read(10)
            assert [r.body for r in records] == [b'{"a": 1}', b"not json"]
            reader.commit(records)
        assert segment_files(tmp_path) == []


class SkipOdd(SegmentChoice):
    """A test policy: never take the segments a given writer wrote."""

    def __init__(self, spool: Spool) -> None:
        self.wrote = spool.wrote

    def access(self, stem: str) -> Access:
        return "skip" if self.wrote(stem) else "read"


class TestSeams:
    def test_format_names_are_the_only_parser(self, tmp_path: Path) -> None:
        """Names made by spool.format scan back to the same stem, count and open state, in
        creation order; other files in the directory are ignored."""
        first, ns = fmt.new_stem(0)
        second, _ = fmt.new_stem(ns)
        (tmp_path / fmt.open_name(second)).write_bytes(b"")
        (tmp_path / fmt.sealed_name(first, 7)).write_bytes(b"")
        (tmp_path / "DESTINATION").write_text("x\n")
        entries = fmt.scan(str(tmp_path))
        assert [first, second] == sorted(entries)
        assert (entries[first].count, entries[second].count) == (7, None)
        assert fmt.is_open(str(tmp_path), second)
        assert not fmt.is_open(str(tmp_path), first)

    def test_frame_keeps_one_record_per_line(self) -> None:
        """A body with newlines is framed on one line; the corrupt-line rule accepts JSON
        values (including null) and refuses the rest."""
        assert b'{"a":\n1}\n'.replace(b":\n", b": ") == fmt.frame([b'{"a":\n1}'])
        assert fmt.frame([b"1", b"2"]) == b"1\n2\n"
        assert [fmt.is_json_line(x) for x in (b'{"a":1}', b"null", b"{oops", b"")] == [
            True,
            True,
            False,
            False,
        ]

    def test_skipped_segments_are_never_taken_and_hold_nothing_back(self, tmp_path: Path) -> None:
        """A choice that skips a writer's segments leaves them untouched (no claim, no ack)
        while the reader reads every other writer's records."""
        skipped, other = Spool(tmp_path), Spool(tmp_path)
        try:
            skipped.append([body(0, 0)])
            other.append([body(1, 0), body(1, 1)])
            with SpoolReader(tmp_path, choice=SkipOdd(skipped)) as reader:
                records = reader.read(10)
                reader.commit(records)
                assert [json.loads(r.body)["id"] for r in records] == ["1-0", "1-1"]
                assert frozenset() == reader.deferred
            mine = next(stem for stem in fmt.scan(str(tmp_path)) if skipped.wrote(stem))
            assert [p.name for p in tmp_path.glob(f"{mine}.*")] == [fmt.open_name(mine)]
        finally:
            skipped.close()
            other.close()

    def test_follower_shows_only_complete_new_lines(self, tmp_path: Path) -> None:
        """SpoolFollower starts at the end, returns a line once its newline is written (a
        writer's partial line waits), follows a segment across its sealing, and writes no
        claim or progress file."""
        spool = Spool(tmp_path)
        try:
            spool.append([body(0, 0)])
            with SpoolFollower(tmp_path) as follower:
                assert follower.read() == []
                spool.append([body(0, 1)])
                path = next(tmp_path.glob("*.open"))
                with open(path, "ab") as f:  # a writer half-way through a line
                    f.write(b'{"id": "0-')
                    f.flush()
                    assert [body(0, 1)] == follower.read()
                    f.write(b'2"}\n')
                assert follower.read() == [b'{"id": "0-2"}']
                spool.close()  # sealed (renamed) under the follower
                with Spool(tmp_path) as later:
                    later.append([body(0, 3)])
                assert [body(0, 3)] == follower.read()
            assert list(tmp_path.glob("*.lock")) + list(tmp_path.glob("*.ack")) == []
        finally:
            spool.close()
