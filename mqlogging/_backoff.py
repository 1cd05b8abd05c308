"""Capped exponential backoff with full jitter (used by backends, handler and collector)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(slots=True)
class Backoff:
    """Delays ``random(0, min(cap, base * factor**n))`` — full jitter, so that hundreds of
    clients that lost the same broker do not reconnect in lock-step.

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
