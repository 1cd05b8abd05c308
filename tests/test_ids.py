"""Record ids: unique, time-ordered, UUIDv7 layout, fresh in forked children."""

from __future__ import annotations

import os
import time
import uuid

from mqlogging._ids import new_id


def test_ids_are_uuid7_and_time_ordered() -> None:
    """Ids parse as RFC 9562 version-7 UUIDs and sort in creation order within a process."""
    ids = [new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert sorted(ids) == ids
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def test_id_embeds_the_current_millisecond() -> None:
    """The first 48 bits are the Unix time in milliseconds."""
    before = time.time_ns() // 1_000_000
    ms = uuid.UUID(new_id()).int >> 80
    after = time.time_ns() // 1_000_000
    assert before <= ms <= after


def test_forked_child_does_not_repeat_parent_ids() -> None:
    """A forked child draws different random bits than its parent (no shared generator state)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.write(w, "\n".join(new_id() for _ in range(1000)).encode())
        os._exit(0)
    os.close(w)
    parent = {new_id() for _ in range(1000)}
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.waitpid(pid, 0)
    child = set(b"".join(chunks).decode().split("\n"))
    assert len(child) == 1000
    assert not parent & child


def test_ids_are_canonical_across_milliseconds() -> None:
    """Ids made over several milliseconds (the per-millisecond prefix is cached) are canonical
    lower-case UUIDs whose 48-bit time is the millisecond they were made in."""
    deadline = time.monotonic() + 0.02
    while time.monotonic() < deadline:
        before = time.time_ns() // 1_000_000
        rid = new_id()
        after = time.time_ns() // 1_000_000
        parsed = uuid.UUID(rid)
        assert str(parsed) == rid
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert before <= parsed.int >> 80 <= after
