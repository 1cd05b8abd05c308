"""The spool on a full filesystem (issue 6, ``make faults`` scenario 9): replay must go on when
the replay progress (``.ack``) cannot be written, so that finished segments are deleted and the
space comes back. Needs root to mount a small tmpfs; skipped otherwise."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqlogging.errors import SpoolError
from mqlogging.spool import Spool


@pytest.fixture
def full_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "fs"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


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
