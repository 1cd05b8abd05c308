"""``LaneSpools``: the pipeline's writes to its lanes' spools, and the account of every record
they do not take.

A record leaves memory for a lane's spool when the lane is backlogged, on overflow, at close,
in write-ahead mode, or when no endpoint confirmed it. A spool may refuse (full), fail (disk
error: the lane then bypasses it for :data:`SPOOL_RETRY` seconds) or be absent; whatever is
not stored is counted by reason and noted in the :class:`~._markers.DropLedger`, so no record is
dropped without a counter and a marker. Every method runs with the pipeline's ``order_lock``
held, except :meth:`LaneSpools.spool_dropped` (the spools' own hook; the ledger is thread-safe).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from .._types import Message
from ..errors import SpoolError, SpoolFull
from ..wire import DroppedRange
from ._complain import Complainer
from ._lanes import Lane
from ._markers import DropLedger

__all__ = ["SPOOL_RETRY", "LaneSpools", "spool_reason"]

# After a spool write failed, the lane bypasses its spool this long before trying it again, so a
# broken disk costs one failed write per second, not one per record (issue #11, defect 5).
SPOOL_RETRY = 1.0

# The spool's drop reasons (``dropped.log``) under the names of ``Pipeline.stats()``.
_SPOOL_REASONS = {
    "max_bytes": "spool_full",
    "overflow": "spool_full",
    "max_age": "spool_expired",
    "torn": "spool_corrupt",
    "corrupt": "spool_corrupt",
}


def spool_reason(reason: str) -> str:
    """A spool's drop reason under the name the handler's stats use (``spool_full``...)."""
    return _SPOOL_REASONS.get(reason, f"spool_{reason}")


class LaneSpools:
    """Writes to the lanes' spools; counts (``dropped``, ``spooled``) and notes what they drop."""

    def __init__(self, drops: DropLedger, complain: Complainer) -> None:
        self.drops = drops
        self.complain = complain
        self.spooled = 0
        self.dropped: dict[str, int] = {}
        self.failure: str | None = None  # the last spool write error (stats)

    def is_open(self, lane: Lane) -> bool:
        """``lane`` has a spool that is not in its ``SPOOL_RETRY`` pause after a failure."""
        return lane.spool is not None and time.monotonic() >= lane.spool_retry_at

    def write(self, lane: Lane, messages: list[Message]) -> bool:
        """Append ``messages`` to ``lane``'s spool. True if the spool took them (what its bounds
        dropped is counted); False if it took none (no spool, it failed, or it refuses when
        full): the caller decides what that means.

        A failure makes the lane bypass its spool for ``SPOOL_RETRY`` seconds and go direct
        (``backlogged`` off): what the spool holds waits until it works again (the pipeline
        then asks the spool and replays it), what is new goes to the broker from memory.
        """
        if not messages:
            return True
        if not self.is_open(lane):
            return False
        assert lane.spool is not None
        try:
            n = lane.spool.append([m.body for m in messages])
        except SpoolFull as exc:
            self.complain("spool_full", str(exc))
            return False
        except SpoolError as exc:
            self.failure = str(exc)
            lane.spool_retry_at = time.monotonic() + SPOOL_RETRY
            lane.backlogged = False
            self.complain("spool_error", f"cannot spool {len(messages)} records: {exc}")
            return False
        if n < len(messages):
            # Refused by the spool's bounds: counted in its journal (``overflow``, which stats()
            # reports as spool_full); counting here too would count them twice.
            self.drops.note([m.body for m in messages[n:]], "spool_full")
        self.spooled += n
        if n:
            lane.backlogged = True
        return True

    def write_or_count(self, lane: Lane, messages: list[Message], why: str) -> bool:
        """Append to ``lane``'s spool; count what could not be stored."""
        if self.write(lane, messages):
            return True
        self.count_unstored(lane, messages, why)
        return False

    def unstored_reason(self, lane: Lane, why: str) -> str:
        """Why ``lane``'s spool did not take records: none (``why``), failing, or full."""
        if lane.spool is None:
            return why
        return "spool_error" if not self.is_open(lane) else "spool_full"

    def count_unstored(self, lane: Lane, messages: Sequence[Message], why: str) -> None:
        """Count ``messages`` ``lane``'s spool did not take, by the reason it did not."""
        self.count_drop(self.unstored_reason(lane, why), messages)

    def count_drop(self, reason: str, messages: Sequence[Message]) -> None:
        """Count dropped records and note them for the next marker."""
        if messages:
            self.dropped[reason] = self.dropped.get(reason, 0) + len(messages)
            self.drops.note([m.body for m in messages], reason)

    def count_run(self, run: DroppedRange) -> None:
        """Count the records of ``run`` (dropped before they had a body) and note them for
        the next marker."""
        self.dropped[run.reason] = self.dropped.get(run.reason, 0) + run.last - run.first + 1
        self.drops.note_runs([run])

    def uncount_drop(self, reason: str, n: int) -> None:
        """Take back ``n`` drops: close() counted an in-flight batch it could not spool, and
        the sender got it confirmed after all. The marker may still name them; the audit
        counts a named record that arrived as delivered, not dropped."""
        total = self.dropped.get(reason, 0) - n
        if total > 0:
            self.dropped[reason] = total
        else:
            self.dropped.pop(reason, None)

    def spool_dropped(self, lines: list[bytes], reason: str) -> None:
        """A lane's spool deleted a segment's unconfirmed ``lines`` (bounds): announce them
        under the names the stats use (the spools' ``drop_hook``)."""
        self.drops.note(lines, spool_reason(reason))
