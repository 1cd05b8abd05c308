"""The spool on a full filesystem (issue 6, ``make faults`` scenario 9): replay must go on when
the replay progress (``.ack``) cannot be written, so that finished segments are deleted and the
space comes back. Needs root to mount a small tmpfs; skipped otherwise."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.helpers import small_filesystem
from mqlogging.errors import SpoolError
from mqlogging.spool import Spool


@pytest.fixture
def full_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (needs root; skipped otherwise)."""
    with small_filesystem(tmp_path / "fs", "256k") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        yield tmp_path / "fs"


def test_replay_on_a_full_filesystem_frees_the_space(full_fs: Path) -> None:
    """Fill the filesystem with spooled records (then with a filler file, so not one byte is
    left): every stored record is read exactly once although no progress can be written, the
    sealed segments are deleted, and the spool ends empty."""
    spool = Spool(str(full_fs / "spool"))
    stored = 0
    with contextlib.suppress(SpoolError):
        while True:
            n = spool.append(
                [b'{"seq":%d,"pad":"%s"}' % (stored + k, b"x" * 200) for k in range(50)]
            )
            stored += n
            if n < 50:
                break
    spool.seal()
    with contextlib.suppress(OSError), open(full_fs / "filler", "wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    assert stored > 500
    reader = spool.reader()
    seen: list[int] = []
    while True:
        records = reader.read(100)
        if not records:
            break
        seen += [int(r.body.split(b",")[0].split(b":")[1]) for r in records]
        reader.commit(records)
    reader.close()
    assert list(range(stored)) == seen
    assert spool.stats().records == 0
    assert not [p for p in os.listdir(full_fs / "spool") if p.endswith(".jsonl")]


def _fill(fs: Path) -> None:
    """Take every free byte of ``fs``."""
    with contextlib.suppress(OSError), open(fs / "filler", "wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()


def test_progress_that_cannot_be_written_is_not_lost_with_the_claim(full_fs: Path) -> None:
    """The writer's open segment is read and confirmed while the disk is full, so the progress
    exists only in memory (review 9, R1). The reader keeps its claim instead of releasing it
    when caught up: reading again returns nothing (not the whole segment again), another
    reader cannot take the segment from the stale progress on disk, and the writer does not
    report the confirmed records as still held (nor counts them in its stats). Once there is room, the progress is written
    and the claim released: a new reader finds nothing to send."""
    spool = Spool(str(full_fs / "spool"))
    assert spool.append([b'{"seq":%d}' % i for i in range(200)]) == 200
    _fill(full_fs)
    reader = spool.reader()
    records = reader.read(1000)
    assert len(records) == 200
    reader.commit(records)
    for _ in range(3):
        assert reader.read(1000) == []
    other = spool.reader()
    assert other.read(1000) == []  # the claim is still ours: no second copy
    other.close()
    assert not spool.holds_own_records()
    assert spool.stats().records == 0  # what our readers confirmed, not the stale .ack
    (full_fs / "filler").unlink()
    assert reader.read(1000) == []  # progress written now, the claim released
    assert spool.append([b'{"seq":200}']) == 1
    fresh = spool.reader()
    assert [r.body for r in fresh.read(1000)] == [b'{"seq":200}']
    fresh.close()
    reader.close()


def test_close_writes_progress_kept_in_memory(full_fs: Path) -> None:
    """A reader closed after the disk got room again writes the progress it could only keep
    in memory, so the next reader does not send those records again."""
    spool = Spool(str(full_fs / "spool"))
    assert spool.append([b'{"seq":%d}' % i for i in range(100)]) == 100
    _fill(full_fs)
    reader = spool.reader()
    reader.commit(reader.read(1000))
    (full_fs / "filler").unlink()
    reader.close()
    fresh = spool.reader()
    assert fresh.read(1000) == []
    fresh.close()
