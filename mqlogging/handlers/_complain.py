"""``Complainer``: the handler's own troubles, said on stderr without flooding it."""

from __future__ import annotations

import contextlib
import sys
import threading
import time

__all__ = ["COMPLAINT_INTERVAL", "Complainer"]

#: Seconds between two messages of the same kind (the ones in between are counted).
COMPLAINT_INTERVAL = 30.0


class Complainer:
    """Reports the handler's own troubles on stderr, at most once per ``interval`` per kind.

    stderr, not logging: a logging call from here could re-enter the handler. Thread-safe.
    """

    def __init__(self, interval: float = COMPLAINT_INTERVAL) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, kind: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            self._last[kind] = now
            hidden = self._suppressed.pop(kind, 0)
        more = f" ({hidden} similar messages suppressed)" if hidden else ""
        with contextlib.suppress(Exception):
            print(f"mqlogging: {message}{more}", file=sys.stderr, flush=True)
