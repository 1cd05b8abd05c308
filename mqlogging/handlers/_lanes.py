"""Lanes: per-endpoint sending and the strategy between endpoints.

A *lane* is one ordered stream of records with its own spool directory: ``failover`` and
``roundrobin`` have one lane whose publishes go to one of its endpoints; ``all`` has one lane
per endpoint, so a down endpoint gets its copies later without holding up the others. An
:class:`EndpointState` is one endpoint as the sender sees it: producer, health, backoff,
counters. Both belong to the pipeline's sender thread, except the fields the
:class:`Lane` docstring names as guarded by the pipeline's ``order_lock``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from .._backoff import Backoff
from .._types import Message
from ..backends import Producer, open_producer
from ..backends.endpoints import Endpoint
from ..errors import PartlyRefused, SpoolError
from ..spool import Access, SegmentChoice, Spool, SpoolReader
from ._complain import Complainer

__all__ = ["PROBE_WINDOW", "EndpointState", "Lane", "Probe"]

# close() after a flush() that ran out of time: how long a fresh attempt may take to show a
# broker is back before close() stops waiting (see Pipeline.close).
PROBE_WINDOW = 1.0


class EndpointState:
    """One endpoint as seen by the sender: its producer, health and counters."""

    def __init__(self, endpoint: Endpoint, retry_max: float) -> None:
        self.endpoint = endpoint
        self.name = endpoint.redacted()
        self.producer: Producer | None = None
        self.healthy = True
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.next_try = 0.0
        self.backoff = Backoff(base=0.2, cap=retry_max)
        self.sent = 0
        self.confirmed = 0
        self.failures = 0

    def get_producer(self) -> Producer:
        if self.producer is None:
            self.producer = open_producer(self.endpoint)
        return self.producer

    def prepare(self) -> None:
        """Build the (unconnected) producer now, on the configuring thread, so the sender
        thread never runs a client library's first-use set-up (stomp.py's calls
        ``logging.getLogger``, which takes logging's lock). A failure is left for the sender
        to meet and report."""
        with contextlib.suppress(Exception):
            self.get_producer()

    def due(self, now: float) -> bool:
        return self.healthy or now >= self.next_try

    def succeeded(self, n: int) -> None:
        self.confirmed += n
        self.healthy = True
        self.backoff.reset()

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.healthy = False
        self.last_error = str(exc) or type(exc).__name__
        self.last_error_at = time.time()
        self.next_try = time.monotonic() + self.backoff.next_delay()

    def close(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.close()

    def stats(self) -> dict[str, Any]:
        own = self.producer.stats() if self.producer is not None else {}
        return {
            **own,
            "healthy": self.healthy,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "sent": self.sent,
            "confirmed": self.confirmed,
            "failures": self.failures,
        }


class _OwnThenSealed(SegmentChoice):
    """A lane's backlog: its own segments (even open, for write-ahead) as a writer of their
    own, and segments other writers sealed or left; never another live writer's open segment
    (that writer's own reader replays it, and a handler must not compete with it)."""

    def __init__(self, spool: Spool) -> None:
        self._wrote = spool.wrote

    def access(self, stem: str) -> Access:
        return "read" if self._wrote(stem) else "sealed"

    def writer(self, stem: str) -> str:
        return "" if self._wrote(stem) else super().writer(stem)  # no pid field is empty


class _OthersSealed(SegmentChoice):
    """Adoption: what other processes sealed or left (dead writers' segments get sealed),
    never this lane's own segments, never a live writer's open segment."""

    def __init__(self, spool: Spool) -> None:
        self._wrote = spool.wrote

    def access(self, stem: str) -> Access:
        return "skip" if self._wrote(stem) else "sealed"


class Lane:
    """One ordered stream of records: its endpoints (one, or the failover/roundrobin set) and
    its spool. ``backlogged``, ``inflight`` and ``inflight_spilled`` are guarded by the
    pipeline's ``order_lock``; the reader belongs to the sender thread.
    """

    def __init__(
        self,
        endpoints: list[EndpointState],
        mode: str,
        spool: Spool | None,
        batch_size: int,
    ) -> None:
        self.endpoints = endpoints
        self.mode = mode
        self.spool = spool
        self.batch_size = batch_size
        self._reader: SpoolReader | None = None
        # Adoption of other processes' segments (sender thread only; see the module docstring).
        self._foreign: SpoolReader | None = None
        self.adopting = False
        self.next_scan = 0.0
        # Start backlogged: records left by an earlier run are replayed before new ones.
        self.backlogged = spool is not None
        self.inflight: list[Message] | None = None
        self.inflight_spilled = False
        # close() could not spool the in-flight batch: counted as dropped (reason, records)
        # and un-counted if the sender gets it confirmed after all
        self.inflight_dropped: tuple[str, int] | None = None
        self.next_attempt = 0.0
        # The spool is bypassed until then after a failed write (order_lock; _spools.SPOOL_RETRY).
        self.spool_retry_at = 0.0
        # A direct lane asks its spool whether it still holds records of its own (stored
        # before a spool failure made it direct) at most this often (sender thread).
        self.next_own_check = 0.0
        self._rr = 0

    # -- spool side ---------------------------------------------------------------------------

    def reader(self) -> SpoolReader:
        """The lane's backlog reader: its own segments (open ones too, for write-ahead) and
        the sealed ones other writers left, each writer's in order; never another live
        writer's open segment (that writer's own reader replays it)."""
        if self._reader is None:
            spool = self.spool
            assert spool is not None
            self._reader = SpoolReader(spool.directory, spool=spool, choice=_OwnThenSealed(spool))
        return self._reader

    def own_deferred(self) -> bool:
        """True if the last read left one of this lane's own segments to another reader:
        records of this lane are still being shipped elsewhere, so it is not caught up."""
        reader, spool = self._reader, self.spool
        if reader is None or spool is None:
            return False
        return any(spool.wrote(stem) for stem in reader.deferred)

    def holds_own_records(self) -> bool:
        """True if the lane's spool still holds records this lane stored and no broker
        confirmed (the spool's answer). A spool that cannot be listed (its directory replaced
        or gone) answers False: nothing there can be shipped, and waiting for it would only
        make every flush() time out; its failure is reported (``stats()["spool"]["error"]``).
        """
        if self.spool is None:
            return False
        try:
            return self.spool.holds_own_records()
        except SpoolError:
            return False

    def close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.close()
        self.close_foreign_reader()

    def foreign_reader(self) -> SpoolReader:
        """The reader of segments other processes left: sealed (or of dead writers), never
        one of this lane's spool, never a live writer's open segment."""
        if self._foreign is None:
            assert self.spool is not None
            self._foreign = SpoolReader(
                self.spool.directory, validate=False, choice=_OthersSealed(self.spool)
            )
        return self._foreign

    def close_foreign_reader(self) -> None:
        """Release the adopted segments' claims (uncommitted records go to the next reader)."""
        reader, self._foreign = self._foreign, None
        self.adopting = False
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.close()

    # -- publishing ---------------------------------------------------------------------------

    def down(self, now: float) -> bool:
        """True while every endpoint failed its last attempt and none is due for a retry."""
        return not any(ep.due(now) for ep in self.endpoints)

    def publish(
        self,
        messages: Sequence[Message],
        complain: Complainer,
        refused: Callable[[Sequence[Message], str], None],
    ) -> bool:
        """Publish to one endpoint (strategy order); True once a broker confirmed the batch.

        A batch the destination confirmed except for records it refused for good and could
        not keep (:class:`~mqlogging.errors.PartlyRefused`) is confirmed too: those records
        go to ``refused`` with its reason (counted as dropped, announced), so they never hold
        up the lane."""
        now = time.monotonic()
        order = self.endpoints
        if self.mode == "roundrobin" and len(order) > 1:
            start = self._rr % len(order)
            self._rr += 1
            order = order[start:] + order[:start]
        for ep in order:
            if not ep.due(now):
                continue
            ep.sent += len(messages)
            confirmed = len(messages)
            try:
                ep.get_producer().publish_batch(messages)
            except PartlyRefused as exc:
                complain(f"refused:{ep.name}", f"{ep.name} refused records for good: {exc}")
                gone = [m for m in messages if m.id in exc.ids]
                refused(gone, exc.drop_reason)
                confirmed -= len(gone)  # counted as dropped, not confirmed as well
            except Exception as exc:  # BackendError, or a backend bug: never kill the sender
                was_healthy = ep.healthy
                ep.failed(exc)
                if was_healthy:
                    complain(f"endpoint:{ep.name}", f"cannot deliver to {ep.name}: {exc}")
                continue
            ep.succeeded(confirmed)
            return True
        self.next_attempt = min(ep.next_try for ep in self.endpoints)
        return False

    def stats(self) -> dict[str, Any]:
        if self.spool is None:
            return {}
        try:
            st = self.spool.stats()
        except SpoolError:
            return {"directory": self.spool.directory}
        return {
            "directory": self.spool.directory,
            "bytes": st.bytes,
            "records": st.records,
            "segments": st.segments,
            "dropped": dict(st.dropped),
            "oldest": st.oldest,
        }


class Probe:
    """Decides, for close() after a failed flush, when waiting longer cannot help.

    Hopeless: no endpoint confirmed anything since the probe began, and either every endpoint
    that still has records failed a fresh attempt, or ``PROBE_WINDOW`` passed (a broker that
    accepts connections and never answers). Any confirmation means a broker is back: keep going.
    """

    def __init__(self, endpoints: Sequence[EndpointState], now: float) -> None:
        self.began = now
        self.failures = {id(ep): ep.failures for ep in endpoints}
        self.confirmed = sum(ep.confirmed for ep in endpoints)
        self.endpoints = endpoints

    def hopeless(self, busy: Sequence[EndpointState], now: float) -> bool:
        if sum(ep.confirmed for ep in self.endpoints) > self.confirmed:
            return False
        if now - self.began >= PROBE_WINDOW:
            return True
        return all(ep.failures > self.failures[id(ep)] for ep in busy)
