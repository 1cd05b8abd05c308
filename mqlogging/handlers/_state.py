"""The pipeline's one state: where it is in its life, and where an offered record goes.

Before, four flags (``state``, ``fast``, ``write_ahead`` and the handler's ``_closed``) had to
agree; their combinations that can occur are the seven values of :class:`State`, and each
event that changes them is one method returning the next value::

               started()              closing_began()              closed()
     IDLE ─────────────────> MEMORY ─────────────────> CLOSING ─────────────> CLOSED
      │ to_write_ahead()        ^ degraded()              ^ degraded()           ^
      v      started()          │     closing_began()     │        closed()      │
     IDLE_WRITE_AHEAD ──> WRITE_AHEAD ─────────────> CLOSING_WRITE_AHEAD ────────┘

(``closing_began()`` of the two idle states leads to the closing state of the same mode.) An event
that does not apply to a state leaves it as it is, so callers need no guard of their own.
The pipeline changes its state under its ``order_lock``; the caller's fast path reads it
without the lock and checks again after its append (see ``Pipeline.offer``).
"""

from __future__ import annotations

import enum

__all__ = ["State"]


class State(enum.Enum):
    """One value per reachable combination of lifecycle and durability mode."""

    #: No sender thread yet: the first record starts it.
    IDLE = "idle"
    #: No sender thread yet, and records are written to the spool first (pool child).
    IDLE_WRITE_AHEAD = "idle, write-ahead"
    #: Sender running; a record is appended to the in-memory queue (the fast path).
    MEMORY = "memory"
    #: Sender running; a record is in the spool before ``offer()`` returns.
    WRITE_AHEAD = "write-ahead"
    #: ``close()`` waits for the sender to deliver; records are still queued.
    CLOSING = "closing"
    #: ``close()`` waits for the sender to deliver; records are still written ahead.
    CLOSING_WRITE_AHEAD = "closing, write-ahead"
    #: Closed: a record goes straight to the spool (or is dropped and counted without one).
    CLOSED = "closed"

    @property
    def write_ahead(self) -> bool:
        """Records go to the spool before ``offer()`` returns (``durability="spool"``)."""
        return self in _WRITE_AHEAD_STATES

    @property
    def idle(self) -> bool:
        """No sender thread was started yet."""
        return self in (State.IDLE, State.IDLE_WRITE_AHEAD)

    @property
    def closing(self) -> bool:
        """``close()`` began (or ended): the sender may not start any more."""
        return self in (State.CLOSING, State.CLOSING_WRITE_AHEAD, State.CLOSED)

    def started(self) -> State:
        """The sender thread started."""
        return _STARTED.get(self, self)

    def to_write_ahead(self) -> State:
        """Write ahead from now on (only before the sender starts: a pool child's first step)."""
        return State.IDLE_WRITE_AHEAD if self is State.IDLE else self

    def degraded(self) -> State:
        """The spool fails: write-ahead falls back to memory mode."""
        return _DEGRADED.get(self, self)

    def closing_began(self) -> State:
        """``close()`` began."""
        return _CLOSING.get(self, self)

    def closed(self) -> State:
        """``close()`` spooled what was left."""
        return State.CLOSED


_WRITE_AHEAD_STATES = frozenset(
    {State.IDLE_WRITE_AHEAD, State.WRITE_AHEAD, State.CLOSING_WRITE_AHEAD}
)
_STARTED = {State.IDLE: State.MEMORY, State.IDLE_WRITE_AHEAD: State.WRITE_AHEAD}
_DEGRADED = {
    State.IDLE_WRITE_AHEAD: State.IDLE,
    State.WRITE_AHEAD: State.MEMORY,
    State.CLOSING_WRITE_AHEAD: State.CLOSING,
}
_CLOSING = {
    State.IDLE: State.CLOSING,
    State.MEMORY: State.CLOSING,
    State.IDLE_WRITE_AHEAD: State.CLOSING_WRITE_AHEAD,
    State.WRITE_AHEAD: State.CLOSING_WRITE_AHEAD,
}
