"""``Backoff``: capped exponential delays with equal jitter, as its docstring says."""

from __future__ import annotations

from mqlogging._backoff import Backoff


def test_delays_keep_a_floor_of_half_the_ceiling_up_to_the_cap() -> None:
    """Attempt n waits between c/2 and c with c = min(cap, base * factor**n): never less than
    half (the floor equal jitter keeps), never more than the cap; reset starts over."""
    backoff = Backoff(base=0.1, factor=2.0, cap=1.0)
    for _ in range(50):  # random: many draws per attempt
        backoff.reset()
        for n in range(8):
            ceiling = min(1.0, 0.1 * 2.0**n)
            assert ceiling / 2 <= backoff.next_delay() <= ceiling
    backoff.reset()
    assert backoff.next_delay() <= 0.1
