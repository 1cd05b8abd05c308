"""Time-ordered unique record ids (UUIDv7 layout, RFC 9562).

48 bits of Unix milliseconds, then 12 bits of sub-millisecond time (so ids of one process
sort in creation order to ~250 ns), then 62 random bits. Nothing is kept between calls, so the
generator is thread-safe and needs no reset after ``fork()``: the random bits come from
:mod:`random`, which CPython reseeds in every forked child (``os.register_at_fork``).
"""

from __future__ import annotations

import time
from random import getrandbits

__all__ = ["new_id"]

_VERSION = 0x7 << 76
_VARIANT = 0b10 << 62


def new_id() -> str:
    """Return a new record id as a canonical lower-case UUID string."""
    ns = time.time_ns()
    ms, sub = divmod(ns, 1_000_000)
    rand_a = sub * 4096 // 1_000_000  # 12 bits of sub-millisecond precision
    value = (ms << 80) | _VERSION | (rand_a << 64) | _VARIANT | getrandbits(62)
    h = format(value, "032x")
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
