"""Capped exponential backoff with equal jitter (used by backends, handler and collector)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(slots=True)
class Backoff:
    """Delays ``uniform(c / 2, c)`` with ``c = min(cap, base * factor**n)``: "equal jitter".

    The random half spreads hundreds of clients that lost the same broker, so they do not
    reconnect in lock-step; the fixed half keeps a floor that grows with every failure. Full
    jitter (``uniform(0, c)``) would now and then retry almost at once however long the
    broker has been down, each such retry a connection attempt (and a warning) for nothing.

    Not thread-safe: each loop owns its own instance.
    """

    base: float = 0.1
    factor: float = 2.0
    cap: float = 30.0
    attempt: int = field(default=0, init=False)

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * self.factor ** min(self.attempt, 64))
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0
