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

_VARIANT = 0x8000  # the top two bits of the fourth group: 0b10 (RFC 9562)
_LOW_48 = (1 << 48) - 1

# The first 15 characters of every id made in one millisecond ("tttttttt-tttt-7"), computed
# once per millisecond: ids are made on the caller's thread for every record (issue #13). One
# tuple, replaced atomically, so threads never see a prefix of another millisecond.
_prefix: tuple[int, str] = (-1, "")


def new_id() -> str:
    """Return a new record id as a canonical lower-case UUID string."""
    global _prefix
    ms, sub = divmod(time.time_ns(), 1_000_000)
    cached = _prefix
    if cached[0] != ms:
        cached = _prefix = (ms, "%08x-%04x-7" % (ms >> 16, ms & 0xFFFF))  # noqa: UP031
    rand = getrandbits(62)
    # 12 bits of sub-millisecond time, then the variant and 62 random bits.
    return "%s%03x-%04x-%012x" % (  # noqa: UP031 - %-formatting: the fastest here
        cached[1],
        sub * 4096 // 1_000_000,
        _VARIANT | (rand >> 48),
        rand & _LOW_48,
    )
