"""The delivery pipeline behind :class:`~mqlogging.handlers.MQHandler`: queue, lanes, sender thread.

Data flow (one :class:`Pipeline` per handler and per process)::

    offer() ──append──> deque (bounded) ──pop (sender thread)──> lane ──publish_batch──> broker
       │ overflow="spool": spill the deque     │ lane backlogged?  └─ failure ──> spool (the lane's)
       │ durability="spool": append ───────────┴──> spool ──replay FIFO (SpoolReader)──> broker

The handler calls :meth:`Pipeline.offer` once per record (as ``QueueHandler`` only enqueues);
the pipeline's life is one :class:`~._state.State`. A *lane* (:mod:`._lanes`) is one ordered
stream of records with its own spool directory (:mod:`._spooldir`): ``failover`` and
``roundrobin`` have one lane whose publishes go to one of the endpoints; ``all`` has one lane
per endpoint, so a down endpoint gets its copies later without holding up the others.

Ordering (per lane, hence per endpoint): a lane is either *direct* (its spool is empty, records
go from memory to the broker) or *backlogged* (anything newer goes to the spool behind what is
already there, and the sender replays the spool FIFO). Three rules keep emit order:

1. The sender pops from the deque and appends to a backlogged lane's spool under one lock
   (``order_lock``), the same lock a caller holds to spill the deque on overflow.
2. A spill writes, in this order: the batch the sender is publishing from memory (the lane's
   ``inflight``), then the deque, then the new record. If that publish later succeeds, the
   sender commits those records at the head of the spool instead of sending them twice.
3. A lane becomes direct again only when its reader finds the spool empty *under the lock*
   -- or when its spool fails a write: then it bypasses the spool for ``SPOOL_RETRY`` seconds
   (:mod:`._spools`) and sends from memory (delivering beats keeping order behind a broken
   disk); what the spool still holds is replayed once the spool works again and an endpoint
   is due: the direct lane asks its spool whether segments it wrote hold unconfirmed records,
   and turns backlogged again if so (review 7, D1). With the spool failing and no endpoint
   up, a batch no endpoint took goes back to the head of the queue (review 7, D4).

Adoption: several processes may share a spool directory (fork workers inherit the handler's).
Segments another process left there (it exited while its broker was unreachable, or crashed)
are nobody's backlog: a *direct* lane whose endpoint is healthy checks the directory every
``_ADOPT_INTERVAL`` seconds (one ``listdir``) and replays such segments, oldest first, with a
second reader that takes only sealed segments (or open ones of dead writers) it did not write,
one claim per segment, so no two processes ship the same segment and the lane's own records
(direct, or in its own segments) keep their order.

Delivery: a record counts as delivered only when ``publish_batch`` returned (broker confirm).
Spool segments are deleted by :meth:`~mqlogging.spool.SpoolReader.commit` only after that.
Threads: callers touch only the deque, the locks and (on the slow paths) the spools; producers
and readers belong to the sender thread.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .._types import Message
from ..backends import transport_for
from ..backends.endpoints import Endpoint
from ..errors import SpoolError
from ..spool import Spool, SpoolReader, SpoolRecord, record_id
from ..wire import DroppedRange
from ._complain import Complainer
from ._config import HandlerConfig
from ._lanes import EndpointState, Lane, Probe
from ._markers import DropLedger
from ._spooldir import bind_lane_spool, lane_directories
from ._spools import SPOOL_RETRY, LaneSpools, spool_reason
from ._state import State

__all__ = ["MakeMarker", "Pipeline"]

#: Builds the record announcing dropped ranges (the handler's: it owns formatter and seq).
MakeMarker = Callable[[Sequence[DroppedRange]], Message]

# The states offer()'s fast path compares with, as module globals: reading an Enum member as a
# class attribute costs a descriptor call on Python 3.11 (~100 ns, twice per record).
_MEMORY = State.MEMORY
_CLOSED = State.CLOSED

# spool=False: the share of close_timeout close() waits for delivery before it drops what is
# still queued and uses the rest (up to 0.9) to publish the marker announcing it (review 7, D6).
_UNSPOOLED_SHARE = 0.7
# Seconds between two checks for segments other processes left in a lane's spool directory.
_ADOPT_INTERVAL = 5.0
# While flush()/close() waits, a failed endpoint is tried again at least this often (issue #11,
# defect 2: the normal backoff, up to retry_max, would outlast the deadline).
_URGENT_RETRY = 0.5
# After close(), what later writes store is sealed (made adoptable) at most this often (review 9,
# R3): a thread still logging to a closed handler makes a few segments, not one per record.
_SEAL_INTERVAL = 1.0


def _close_at_multiprocessing_exit(pipe: Pipeline) -> None:
    """Close ``pipe`` when this ``multiprocessing`` child process ends.

    A fork/forkserver child of ``multiprocessing`` ends with ``os._exit()`` right after
    multiprocessing's own finalizers: ``atexit`` (hence :func:`logging.shutdown`) never runs
    there, and without this the records the child queued would vanish without a trace.
    Registered on the pipeline's first record (``Process._bootstrap`` clears the finalizer
    registry after the fork); harmless where ``atexit`` runs too (``close`` is idempotent).
    """
    mp = sys.modules.get("multiprocessing")
    if mp is None or mp.parent_process() is None:
        return
    from multiprocessing import util

    util.Finalize(None, pipe.close, args=(pipe.config.close_timeout,), exitpriority=0)


def _preload(endpoints: Sequence[Endpoint]) -> None:
    """Import what the sender thread needs now, on the thread that builds the handler.

    Why (``make faults`` scenario 10): the sender thread used to import pika on its first
    publish, while the application went on logging and forked ``multiprocessing`` workers. A
    ``fork()`` during that import copies ``sys.modules`` with ``pika``, ``decimal``, ``numbers``...
    half executed, and the thread executing them does not exist in the child: every import of
    pika in the child returns the partial module ("partially initialized module 'pika' has no
    attribute 'BlockingConnection'"), so the child's sender never connects and its records end
    in the spool at exit. Importing here (configuration time, normally before any fork) means the
    sender thread never runs an import, so no fork can catch one half done. A missing client
    library is left for the sender to report, as before.
    """
    names = ["encodings.idna"]  # the IDNA codec socket.getaddrinfo loads for a host name
    loggers: list[str] = []
    for ep in endpoints:
        transport = transport_for(ep)
        names.extend(transport.preload)  # the client library (pika: asyncio, decimal...)
        loggers.extend(transport.loggers)
    for name in dict.fromkeys(names):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    _lock_free_loggers(loggers)


def _lock_free_loggers(roots: Sequence[str]) -> None:
    """Give the existing loggers of the client libraries an ``isEnabledFor`` that never takes
    :mod:`logging`'s module lock.

    Why (issue #11, defect 17): :func:`logging.config.dictConfig` holds the module lock while it
    closes the old handlers, and our ``close()`` waits for the sender thread to confirm what is
    queued. The sender thread calls pika/stomp.py, which log (``LOGGER.debug``) on every
    connection; ``Logger.isEnabledFor`` takes the module lock whenever its level cache is empty
    -- and ``dictConfig``/``setLevel`` empty every logger's cache. So the sender waited for the
    lock held by the thread waiting for the sender: ``close()`` ran out its whole deadline and
    spooled a record that was then confirmed too. This version computes the same answer
    (``disabled``, ``manager.disable``, effective level) without the cache, hence without the
    lock; records still reach the handlers as before. The libraries create their loggers at
    import, which :func:`_preload` does on the configuring thread.

    stomp.py also keeps ``isEnabledFor = logger.isEnabledFor`` (the bound method of the class,
    taken at import) in its ``stomp.log`` module, and its receiver thread -- which our sender
    waits on for receipts -- calls that on every frame: such module-level copies are rebound
    to the lock-free version too.
    """
    manager = logging.Logger.manager
    for name, logger in list(manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger) or name.partition(".")[0] not in roots:
            continue
        if "isEnabledFor" not in vars(logger):
            logger.isEnabledFor = _is_enabled_for(logger)  # type: ignore[method-assign]
    for name, module in list(sys.modules.items()):
        if module is None or name.partition(".")[0] not in roots:
            continue
        for attr, value in list(vars(module).items()):
            if getattr(value, "__func__", None) is logging.Logger.isEnabledFor:
                setattr(module, attr, value.__self__.isEnabledFor)


def _is_enabled_for(logger: logging.Logger) -> Any:
    """``logger.isEnabledFor`` without the level cache (and so without the module lock)."""

    def is_enabled_for(level: int) -> bool:
        if logger.disabled or logger.manager.disable >= level:
            return False
        return level >= logger.getEffectiveLevel()

    return is_enabled_for


# -- the pipeline ---------------------------------------------------------------------------


class Pipeline:
    """Everything of one handler that belongs to one process: queue, locks, lanes, thread.

    Its interface is what the handler needs, as ``QueueHandler`` needs only its queue:
    :meth:`offer` (one call per record), :meth:`flush`, :meth:`close`, :meth:`reset_after_fork`,
    the process-end hooks :meth:`start_if_spooled`, :meth:`write_ahead_in_child` and
    :meth:`finish`, the recursion guard (:attr:`sender_ident`, :meth:`ignore`) and
    :meth:`stats`. Its life is one :class:`~._state.State` value, changed under
    ``order_lock``; everything else here is the pipeline's own.

    After ``fork()`` the child uses :meth:`reset_after_fork`'s new pipeline; this one stays
    referenced and untouched (its producers share sockets with the parent).
    """

    def __init__(
        self,
        config: HandlerConfig,
        complain: Complainer,
        make_marker: MakeMarker | None,
        *,
        inherited: Pipeline | None = None,
    ) -> None:
        self.config = config
        self.complain = complain
        self.make_marker = make_marker
        #: The parent's pipeline, in a forked child: kept referenced, never touched.
        self.inherited = inherited
        closed = inherited is not None and inherited.state is State.CLOSED
        self.state: State = State.CLOSED if closed else State.IDLE
        self.queue: deque[Message] = deque()
        self._queue_size = config.queue_size
        self._batch_size = config.batch_size
        self.order_lock = threading.Lock()
        self.space = threading.Condition(self.order_lock)  # overflow="block" waits here
        self.wake = threading.Event()
        self.progress = threading.Condition(threading.Lock())  # flush() waits here
        self._stop = threading.Event()  # close() tells the sender thread to end
        self.thread: threading.Thread | None = None
        #: The sender thread's id: records it emits are refused (the handler's recursion guard).
        self.sender_ident: int | None = None
        self._start_lock = threading.Lock()
        self._ignored_lock = threading.Lock()  # never held with another lock: see ignore()
        # counters (order_lock for those callers touch, the sender for the rest)
        self.popped = 0
        self.handled = 0
        self.replayed = 0
        self.ignored = 0
        self.blocked = 0
        self.flush_waiters = 0
        # Bumped by each flush(); the sender then retries backed-off endpoints at once.
        self.flush_epoch = 0
        self._hurried_epoch = 0
        self.last_flush_failed = False
        self.degraded = False  # durability="spool" fell back to memory mode (stats)
        self.wa_pending = 0
        self.endpoints = [EndpointState(ep, config.retry_max) for ep in config.endpoints]
        # Drop markers (see _markers): make_marker is the handler's; the ledger is thread-safe.
        self.drops = DropLedger()
        # Writes to the lanes' spools and counts what they do not take (order_lock held).
        self.spools = LaneSpools(self.drops, complain)
        self.announced = 0  # the ledger generation whose marker went out (published or spooled)
        # A marker no lane took, and its generation: it goes out later as it is (review 9, R2).
        self.held_marker: tuple[Message, int] | None = None
        # After close: when the spools may be sealed again, and the timer that will (R3).
        self._next_seal = 0.0
        self._seal_timer: threading.Timer | None = None
        self.flush_generation = 0  # the ledger generation a flush() waits to see announced
        self.lanes = self._build_lanes()
        for lane in self.lanes:
            if lane.spool is not None:
                lane.spool.drop_hook = self.spools.spool_dropped
        if config.durability == "spool" and not closed:
            self.state = State.IDLE_WRITE_AHEAD
        _preload(config.endpoints)
        for ep in self.endpoints:
            ep.prepare()

    def _build_lanes(self) -> list[Lane]:
        cfg = self.config
        mode = "roundrobin" if cfg.strategy == "roundrobin" else "failover"
        groups = [[ep] for ep in self.endpoints] if cfg.strategy == "all" else [self.endpoints]
        dirs: list[str | None] = (
            list(lane_directories(cfg.spool_dir, cfg.endpoints, cfg.strategy))
            if cfg.spool_dir is not None
            else [None] * len(groups)
        )
        lanes = []
        for group, directory in zip(groups, dirs, strict=False):
            spool = Spool(directory, **cfg.spool_options) if directory is not None else None
            if directory is not None:
                bind_lane_spool(directory, [ep.endpoint for ep in group], self.complain)
            lanes.append(Lane(group, mode, spool, cfg.batch_size))
        return lanes

    # -- the caller's path ----------------------------------------------------------------------

    def offer(self, message: Message) -> None:
        """Take ``message`` for delivery: a deque append in the normal path (memory mode).

        Lock-free there: ``deque.append`` is atomic, and a :meth:`close` that drained the
        deque between the state check and the append is caught by the second check.
        Everything else (first record, overflow, write-ahead, closed) is :meth:`_offer_slow`.
        """
        if self.state is _MEMORY:
            q = self.queue
            if len(q) < self._queue_size:
                q.append(message)
                if len(q) >= self._batch_size and not self.wake.is_set():
                    self.wake.set()
                # close() may have drained the queue meanwhile
                if self.state is _CLOSED:
                    self._rescue()
                return
        self._offer_slow(message)

    def ignore(self) -> None:
        """Count a record the handler's recursion guard refused.

        Its own lock: the sender thread may emit such a record while it holds ``order_lock``.
        """
        with self._ignored_lock:
            self.ignored += 1

    def drop_unmade(self, run: DroppedRange) -> None:
        """Records the handler numbered but could not make into a message (not even the
        formatter's fallback): counted under ``run.reason`` and announced by the next marker,
        so their seqs are explained gaps, not losses."""
        with self.order_lock:
            self.spools.count_run(run)

    def reset_after_fork(self) -> Pipeline:
        """The pipeline a forked child uses instead of this one: same config, empty queue, new
        locks and connections, sender started on the child's first record (closed if this one
        is: then the child's records go straight to the spool). This one is kept referenced
        by the new one and never touched (see :mod:`._fork`)."""
        return Pipeline(self.config, Complainer(), self.make_marker, inherited=self)

    def _start(self) -> None:
        """Start the sender thread (idempotent; called on the first record)."""
        with self._start_lock:
            if self.thread is not None or not self.state.idle:
                return
            thread = threading.Thread(target=self._run, name="mqlogging-sender", daemon=True)
            self.thread = thread
            thread.start()
            with self.order_lock:
                self.state = self.state.started()
            _close_at_multiprocessing_exit(self)

    def write_ahead_in_child(self) -> None:
        """Switch to write-ahead (``durability="spool"``) in a ``multiprocessing``/billiard child.

        Such a child ends with ``os._exit()`` (billiard's pool workers always do, recycled
        after ``maxtasksperchild`` or not) or is terminated by SIGTERM (``Pool.terminate()``,
        ``with Pool() as p:``), and no finalizer runs: the records in memory died with it
        (issue #11, defects 4 and 16). With every record in the spool before ``emit()``
        returns, the child's open segment outlives it and any process sharing the spool
        ships the rest (adoption of dead writers' segments). Costs one ``write(2)`` per
        record in those children only. Without a spool (``spool=False``) nothing changes.
        Only before the sender started (the child's first record).
        """
        with self._start_lock:
            if all(lane.spool is not None for lane in self.lanes):
                with self.order_lock:
                    self.state = self.state.to_write_ahead()

    def start_if_spooled(self) -> None:
        """Start the sender now if a spool already holds records (one ``listdir`` per lane).

        A restarted application must ship what its predecessor left (killed, or exited while
        its brokers were down) even if it never logs again: a lazy start on the first record
        would leave that spool in place for as long as the process stays quiet.
        """
        for lane in self.lanes:
            try:
                found = lane.spool is not None and lane.spool.foreign_segments()
            except SpoolError as exc:
                self.complain("spool_read", f"cannot read the spool: {exc}")
                continue
            if found:
                self._start()
                return

    def _rescue(self) -> None:
        """A record was appended while close() drained the deque: spool it too."""
        with self.order_lock:
            if self.state is State.CLOSED:
                self._spill_locked([], "closed")

    def _marker_due(self) -> bool:
        """A marker is due: flush() waits for it, or the interval passed and it has a way out.

        A marker alone (no record to ride with) is not written to a spool that every lane is
        backlogged on: with the spool full, making room for it would drop records, whose marker
        would drop more, one segment a second while the broker is down. It then rides with the
        next records, goes once a lane is direct again, or is spooled at close().
        """
        if self.make_marker is None or not (self.drops or self.held_marker):
            return False
        if self.flush_waiters > 0 and self.announced < self.flush_generation:
            return True
        if time.monotonic() < self.drops.next_due:
            return False
        return bool(self.queue) or not all(lane.backlogged for lane in self.lanes)

    def _take_marker(self) -> tuple[Message | None, int]:
        """The marker announcing the pending drops if one is due, and the ledger generation
        it covers (sender thread)."""
        if self.make_marker is None or not self._marker_due():
            return None, 0
        with self.order_lock:
            return self._next_marker_locked()

    def _next_marker_locked(self) -> tuple[Message | None, int]:
        """The held marker if there is one (same seq, same ranges: a marker is not re-made,
        so an undelivered one leaves no gap), else one for the pending ranges."""
        if self.held_marker is not None:
            held, self.held_marker = self.held_marker, None
            return held
        assert self.make_marker is not None
        ranges, generation = self.drops.take() if self.drops else ([], 0)
        return (self.make_marker(ranges) if ranges else None), generation

    def _settle_marker_locked(self, marker: Message, generation: int, out: bool) -> None:
        """``marker`` was published or spooled (``out``): its drops are announced. Otherwise
        it is held for the next attempt, one interval later: never dropped, never counted as
        a dropped record nor as sent (review 9, R2)."""
        if out:
            self.announced = max(self.announced, generation)
            self.drops.count_sent()
        else:
            self.held_marker = (marker, generation)
            self.drops.postpone()

    def _offer_slow(self, message: Message) -> None:
        """Everything but the plain append: first record, overflow, write-ahead, closed."""
        if self.state.idle:
            self._start()
        state = self.state
        if state.write_ahead or state is State.CLOSED:
            self._write_through(message)
            return
        q = self.queue
        if len(q) < self._queue_size:
            q.append(message)
            if len(q) >= self._batch_size:
                self.wake.set()
            if self.state is State.CLOSED:  # close() may have drained the queue meanwhile
                self._rescue()
            return
        self._overflow(message)

    def _overflow(self, message: Message) -> None:
        """The queue is full: block a while, spill it to the spool, or drop ``message``."""
        policy = self.config.overflow
        if policy == "block":
            self._enqueue_blocking(message)
        elif policy == "spool":
            with self.order_lock:
                if len(self.queue) < self._queue_size:  # the sender made room meanwhile
                    self.queue.append(message)
                    return
                self._spill_locked([message], "overflow")
            self.wake.set()
        else:
            with self.order_lock:
                self.spools.count_drop("overflow", [message])

    def _enqueue_blocking(self, message: Message) -> None:
        deadline = time.monotonic() + self.config.block_timeout
        q = self.queue
        with self.space:
            while len(q) >= self._queue_size and self.state is not State.CLOSED:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.spools.count_drop("overflow", [message])
                    return
                self.wake.set()
                self.blocked += 1
                try:
                    self.space.wait(remaining)
                finally:
                    self.blocked -= 1
            if self.state is State.CLOSED:
                self._spill_locked([message], "closed")
                return
            q.append(message)

    def _write_through(self, message: Message) -> None:
        """Write-ahead (and after close): the record is in the spool when this returns.

        If no lane's spool takes it while the pipeline runs in write-ahead mode, the pipeline
        degrades to memory mode for good (said once on stderr, shown in :meth:`stats`) and
        the record goes to the queue: a failing disk must not stop delivery to a healthy
        broker (issue #11, defect 5).
        """
        with self.order_lock:
            stored = [self.spools.write(lane, [message]) for lane in self.lanes]
            failing = not any(stored) and not any(map(self.spools.is_open, self.lanes))
            if self.state.write_ahead and failing:
                self._degrade_locked()
                self.queue.append(message)
                wake = True
            else:
                for lane, ok in zip(self.lanes, stored, strict=True):
                    if not ok:
                        self.spools.count_unstored(lane, [message], "closed")
                wake = False
                if any(stored) and self.state is not State.CLOSED:
                    self.wa_pending += 1
                    wake = self.wa_pending >= self.config.batch_size
            self._seal_if_closed_locked()
        if wake:
            self.wake.set()

    def _seal_if_closed_locked(self) -> None:
        """After close(), leave no segment open for long: seal what writes stored.

        close() seals once; a record emitted later (a thread still holding the old handler,
        a reconfiguration) would otherwise sit in an open segment whose lock this closed
        pipeline holds until the process exits, so no other handler of the process (nor
        ``mqlogging spool replay``) could ship it (review 7, D5). Sealing after every write
        made one segment per record (~1 ms per emit, and as many files to adopt: review 9,
        R3), so a write seals at most every ``_SEAL_INTERVAL`` seconds; a write inside the
        interval arms a timer that seals at its end. The timer thread is not a daemon: at
        process exit the interpreter waits for it (at most the interval), so nothing written
        after close is left in an open segment.
        """
        if self.state is not State.CLOSED:
            return
        now = time.monotonic()
        if now >= self._next_seal:
            self._seal_locked(now)
        elif self._seal_timer is None:
            timer = threading.Timer(self._next_seal - now, self._seal_late)
            timer.name = "mqlogging-seal"
            self._seal_timer = timer
            timer.start()

    def _seal_late(self) -> None:
        """The timer armed by :meth:`_seal_if_closed_locked`: seal what came since."""
        with self.order_lock:
            self._seal_timer = None
            self._seal_locked(time.monotonic())

    def _seal_locked(self, now: float) -> None:
        """Seal every lane's open segment (``order_lock`` held): adoptable by others."""
        self._next_seal = now + _SEAL_INTERVAL
        for lane in self.lanes:
            if lane.spool is not None:
                with contextlib.suppress(SpoolError):
                    lane.spool.seal()

    def _degrade_locked(self) -> None:
        """durability='spool' with a spool that fails: go on in memory mode (order_lock)."""
        self.state = self.state.degraded()
        self.degraded = True
        self.complain(
            "degraded",
            f"the spool fails ({self.spools.failure}); durability='spool' degraded to memory "
            "mode: records go to the broker from memory",
        )

    def _spill_locked(self, extra: list[Message], why: str) -> None:
        """Move memory to the spools keeping order: in-flight batch, deque, ``extra``.

        Called with ``order_lock`` held, by a caller on overflow or by close(). On overflow,
        when no spool can take anything (it fails, or was failing less than ``SPOOL_RETRY``
        seconds ago), the queue and the in-flight batch stay in memory for the sender and only
        ``extra`` is dropped and counted: a broken disk must not throw away what a healthy
        broker would take (issue #11, defect 5).
        """
        if why == "overflow" and not any(map(self.spools.is_open, self.lanes)):
            self.spools.count_drop("spool_error", extra)
            return
        drained = self._drain_queue_locked()
        records = drained + extra
        results = [self._spill_lane_locked(lane, records) for lane in self.lanes]
        if why == "overflow" and not any(ok for _, _, _, ok in results):
            self.queue.extendleft(reversed(drained))  # stored nowhere: keep it for the sender
            for lane in self.lanes:
                self.spools.count_unstored(lane, extra, why)
            return
        for lane, batch, with_inflight, ok in results:
            if ok and with_inflight:
                lane.inflight_spilled = True
            elif not ok and why == "overflow":  # not the in-flight batch: the sender has it
                self.spools.count_unstored(lane, records, why)
            elif not ok:  # close(): count the in-flight batch too; un-counted if confirmed
                reason = self.spools.unstored_reason(lane, why)
                self.spools.count_drop(reason, batch)
                if with_inflight:
                    lane.inflight_spilled = True
                    lane.inflight_dropped = (reason, len(batch) - len(records))
        self.popped += len(drained)
        self.handled += len(drained)  # not ``extra``: it never was in the queue
        if self.blocked:
            self.space.notify_all()
        self._seal_if_closed_locked()

    def _drain_queue_locked(self) -> list[Message]:
        """Empty the deque (``order_lock`` held) with ``popleft``, not ``list()`` + ``clear()``:
        callers on the fast path append without the lock."""
        q = self.queue
        drained = []
        with contextlib.suppress(IndexError):
            while True:
                drained.append(q.popleft())
        return drained

    def _spill_lane_locked(
        self, lane: Lane, records: list[Message]
    ) -> tuple[Lane, list[Message], bool, bool]:
        """Store ``records`` in ``lane``'s spool, behind its in-flight batch if not spilled yet:
        ``(lane, what was stored, whether the in-flight batch was in it, stored?)``."""
        with_inflight = (
            lane.spool is not None and lane.inflight is not None and not lane.inflight_spilled
        )
        batch = lane.inflight + records if with_inflight and lane.inflight else records
        return lane, batch, with_inflight, self.spools.write(lane, batch)

    # -- flush / close ------------------------------------------------------------------------

    def _flush_done(self, target: int) -> bool:
        """Everything popped before ``target`` was handled and no lane holds a backlog: all
        of it was confirmed (or dropped and counted). A direct lane whose spool still holds
        records (stored before the spool failed) is not done either: the spool is asked."""
        return self.handled >= target and not any(
            lane.backlogged or lane.holds_own_records() for lane in self.lanes
        )

    def _announced(self, generation: int) -> bool:
        """True once the marker of the drops up to ``generation`` went out, or cannot."""
        if self.make_marker is None or self.announced >= generation:
            return True
        now = time.monotonic()
        return all(lane.down(now) for lane in self.lanes)

    def flush(self, timeout: float) -> bool:
        """Wait until what was emitted before the call is confirmed by a broker; False if
        ``timeout`` expired first (the records stay queued or spooled, nothing is lost).

        The whole ``timeout`` is used: an endpoint in retry backoff is tried again at once and
        then every ``_URGENT_RETRY`` seconds while a flush waits, so an outage that ends before
        the deadline still gets everything delivered (issue #11, defect 2).
        """
        return self._wait_delivered(timeout, give_up_when_dead=False)

    def _wait_delivered(self, timeout: float, *, give_up_when_dead: bool) -> bool:
        """:meth:`flush`; with ``give_up_when_dead``, return False as soon as a fresh attempt
        showed that no broker is taking records (see :meth:`close`)."""
        thread = self.thread
        if (
            self.state is State.CLOSED
            or thread is None
            or not thread.is_alive()
            or self._stop.is_set()
        ):
            # Closed (or never started): nothing will be sent from memory any more. Returning at
            # once keeps logging.shutdown() after close() from waiting again (defect 9).
            return not self.queue
        with self.order_lock:
            target = self.popped + len(self.queue)
        needed = -1  # the drops of the records up to target: known once they are handled
        now = time.monotonic()
        deadline = now + timeout
        probe = Probe(self.endpoints, now) if give_up_when_dead else None
        with self.progress:
            self.flush_waiters += 1
            self.flush_epoch += 1
            try:
                self.wake.set()
                while True:
                    if self._flush_done(target):
                        if needed < 0:
                            needed = self.drops.generation
                            self.flush_generation = max(self.flush_generation, needed)
                            self.wake.set()
                        if self._announced(needed):
                            break
                    now = time.monotonic()
                    if now >= deadline or not thread.is_alive():
                        self.last_flush_failed = True
                        return False
                    if probe is not None and probe.hopeless(self._busy_endpoints(target), now):
                        self.last_flush_failed = True
                        return False
                    self.progress.wait(min(deadline - now, 0.1))
            finally:
                self.flush_waiters -= 1
        self.last_flush_failed = False
        return True

    def finish(self, timeout: float) -> None:
        """Deliver within ``timeout`` before the process dies (SIGTERM in a pool child).

        Closes the pipeline if nobody did; if a close is under way (the signal may have
        interrupted the very thread running it, at exit), waits for the sender to deliver
        instead, as that close cannot go on until the signal handler returns. What is not
        delivered in time is in the spool (write-ahead) for another process to ship.
        """
        if not self.state.closing:
            self.close(timeout)
        else:
            self.flush(timeout)

    def _busy_endpoints(self, target: int) -> list[EndpointState]:
        """The endpoints that still have records of this flush to deliver."""
        if self.handled < target:
            return self.endpoints
        return [ep for lane in self.lanes if lane.backlogged for ep in lane.endpoints]

    def close(self, timeout: float) -> None:
        """Flush within ``timeout``, then stop the sender and spool what is left. Idempotent.

        Returns as soon as everything is confirmed. Otherwise it keeps retrying until the
        deadline -- except right after a :meth:`flush` that ran out of time
        (:func:`logging.shutdown` calls ``flush()`` then ``close()``): then one fresh attempt per
        endpoint decides, within ``PROBE_WINDOW``: a broker that confirms something gets the
        rest of the deadline, brokers that still fail (or do not answer) do not make the
        application wait a second full deadline.
        """
        with self._start_lock:
            if self.state.closing:
                return
            with self.order_lock:
                self.state = self.state.closing_began()
        deadline = time.monotonic() + timeout
        thread = self.thread
        if thread is not None and thread.is_alive():
            unspooled = self._unspooled_drops_need_marker()
            share = _UNSPOOLED_SHARE if unspooled else 0.9
            budget = max(0.0, (deadline - time.monotonic()) * share)
            delivered = self._wait_delivered(budget, give_up_when_dead=self.last_flush_failed)
            if unspooled and not delivered:
                self._announce_unspooled(deadline - 0.1 * timeout)
            self._stop.set()
            self.wake.set()
            grace = deadline - time.monotonic() if delivered else 0.2
            thread.join(max(0.0, min(grace, deadline - time.monotonic())))
            if thread.is_alive():
                self.complain("close", self._ran_out_message())
        with self.order_lock:
            # CLOSED before the drain: a caller's append that misses the drain then sees it
            # (offer's second check) and spools its record.
            self.state = self.state.closed()
            self._spill_locked([], "closed")
            self._spill_markers_locked()
            self.space.notify_all()
            self._seal_locked(time.monotonic())

    def _ran_out_message(self) -> str:
        """What close() says when its time ran out: what happens to what is left."""
        ran_out = (
            f"close_timeout ({self.config.close_timeout:g}s) ran out before the broker "
            "confirmed everything; "
        )
        if all(lane.spool is None for lane in self.lanes):
            return ran_out + (
                "without a spool what is left is dropped, counted as 'closed' in stats() "
                "(announced by a marker only if a broker took it)"
            )
        return ran_out + (
            "spooling what is left (the next run ships it; a batch confirmed meanwhile "
            "may arrive twice, same record ids)"
        )

    def _unspooled_drops_need_marker(self) -> bool:
        """No spool at all: what close() drops cannot be announced by a spooled marker."""
        return self.make_marker is not None and all(lane.spool is None for lane in self.lanes)

    def _announce_unspooled(self, until: float) -> None:
        """``spool=False``, and close() ran out of the first part of its time: drop (count) what
        is still queued now and let the running sender publish the marker of those drops (and
        of any pending) before ``until`` (review 7, D6). Without this, nothing would announce
        them, and ``mqlogging audit`` would report their seqs as lost. Only while an endpoint
        is healthy: with no broker taking records, the marker could not go either. Records
        emitted after this (during close) are counted as ``closed`` and not announced.
        """
        if not any(ep.healthy for ep in self.endpoints):
            return
        with self.order_lock:
            self._spill_locked([], "closed")  # no spool: counts the queue as dropped (closed)
        self._wait_delivered(max(0.0, until - time.monotonic()), give_up_when_dead=False)

    def _spill_markers_locked(self) -> None:
        """At close: spool the marker of drops the sender could not announce any more.

        A spilled marker may make the spool drop more (its bounds): announced by one more
        marker, a few times at most. Without a spool the pending ranges stay unannounced (they
        are counted in :meth:`stats` all the same).
        """
        if self.make_marker is None or all(lane.spool is None for lane in self.lanes):
            return
        for _ in range(3):
            marker, generation = self._next_marker_locked()
            if marker is None:
                return
            stored = [self.spools.write(lane, [marker]) for lane in self.lanes]
            self._settle_marker_locked(marker, generation, any(stored))
            if not any(stored):
                return  # no spool takes it: its ranges stay pending (stats), nothing dropped

    # -- sender thread ------------------------------------------------------------------------

    def _run(self) -> None:
        self.sender_ident = threading.get_ident()
        try:
            while not self._stop.is_set():
                try:
                    worked = self._cycle()
                except Exception as exc:  # a bug or an unexpected error: report, slow down
                    self.complain("sender", f"sender error: {type(exc).__name__}: {exc}")
                    worked = False
                    self.wake.wait(1.0)
                self._notify_progress()
                if not worked and not self._stop.is_set():
                    self._wait()
        finally:
            for lane in self.lanes:
                lane.close_reader()
            for ep in self.endpoints:
                ep.close()
            self._notify_progress()

    def _notify_progress(self) -> None:
        if self.flush_waiters:
            with self.progress:
                self.progress.notify_all()

    def _wait(self) -> None:
        if self.flush_waiters:
            self.wake.wait(0.05)
            self.wake.clear()
            return
        timeout = self.config.flush_interval
        now = time.monotonic()
        if (self.drops or self.held_marker) and self.drops.next_due > now:
            timeout = min(timeout, self.drops.next_due - now)
        for lane in self.lanes:
            if lane.backlogged and lane.next_attempt > now:
                timeout = min(timeout, lane.next_attempt - now)
        self.wake.wait(max(timeout, 0.001))
        self.wake.clear()

    def _hurry(self) -> None:
        """While a flush/close waits: retry the endpoints of a lane that has none healthy now
        (once per new waiter), then at least every ``_URGENT_RETRY`` seconds, so the deadline
        is used to deliver (defect 2). A lane with a healthy endpoint keeps its normal backoff
        for the others: it is delivering, and a slow dead primary would only hold it up."""
        now = time.monotonic()
        epoch = self.flush_epoch
        limit = now if epoch != self._hurried_epoch else now + _URGENT_RETRY
        self._hurried_epoch = epoch
        for lane in self.lanes:
            if any(ep.healthy for ep in lane.endpoints):
                continue
            for ep in lane.endpoints:
                ep.next_try = min(ep.next_try, limit)
            lane.next_attempt = min(lane.next_attempt, limit)

    def _cycle(self) -> bool:
        """One round: memory to lanes, then one replay batch per backlogged lane."""
        if self.flush_waiters:
            self._hurry()
        worked = False
        while (self.queue or self._marker_due()) and not self._stop.is_set():
            if self._memory_waits(time.monotonic()) or not self._take_and_send():
                break  # no lane can send or spool now: the queue holds the records
            worked = True
        now = time.monotonic()
        for lane in self.lanes:
            if self._stop.is_set():
                break
            if lane.spool is not None:
                worked = self._spool_cycle(lane, now) or worked
        return worked

    def _spool_cycle(self, lane: Lane, now: float) -> bool:
        """The spool side of one round for ``lane``: one replay batch if it is backlogged
        (again, if its spool still holds records of its own), else adoption."""
        if not lane.backlogged and self._own_backlog(lane, now):
            with self.order_lock:
                lane.backlogged = True  # new records queue up behind the spooled ones
        if lane.backlogged:
            # Its reader takes every segment in order; hand adopted claims back to it.
            lane.close_foreign_reader()
            return now >= lane.next_attempt and self._replay(lane)
        if lane.adopting or now >= lane.next_scan:
            return self._adopt(lane, now)
        return False

    def _memory_waits(self, now: float) -> bool:
        """True while no lane can take a batch: each is down (no endpoint due) and its spool
        fails. Popping would only put the batch back (review 7, D4); the queue holds it."""
        return all(
            lane.spool is not None and lane.down(now) and not self.spools.is_open(lane)
            for lane in self.lanes
        )

    def _own_backlog(self, lane: Lane, now: float) -> bool:
        """A direct lane whose spool still holds records it stored before a spool failure
        made it go direct (review 7, D1): True once the spool works again and an endpoint is
        due, so the lane turns backlogged and replays them, oldest first.

        The spool is asked (one ``listdir``), at most every ``SPOOL_RETRY`` seconds, or each
        cycle while a flush waits: the lane keeps no count of its own."""
        if now < lane.next_own_check or lane.down(now) or not self.spools.is_open(lane):
            return False
        lane.next_own_check = now + (0.0 if self.flush_waiters else SPOOL_RETRY)
        return lane.holds_own_records()

    def _take_and_send(self) -> bool:
        """Move one batch from memory to the lanes: into a backlogged lane's spool (behind its
        backlog), or published from memory by a direct lane (spooled if that fails, put back
        in the queue if the spool fails too). False if the batch went back to the queue."""
        marker, generation = self._take_marker()  # rides at the end of the batch
        with self.order_lock:
            q = self.queue
            n = min(len(q), self.config.batch_size)
            batch = [q.popleft() for _ in range(n)]
            self.popped += n
            if marker is not None:
                batch.append(marker)
            if not batch:
                return False  # nothing to move
            direct, out = self._route_locked(batch, n)
            if self.blocked:
                self.space.notify_all()
        held = 0
        for lane in direct:
            held, sent = self._send_direct(lane, batch, n)
            out = out or sent
        with self.order_lock:
            self.handled += n - held
            if marker is not None:
                self._settle_marker_locked(marker, generation, out)
        return not held

    def _route_locked(self, batch: list[Message], records: int) -> tuple[list[Lane], bool]:
        """Append ``batch`` (``records`` records, then maybe a marker) to each backlogged
        lane's spool; return the lanes that publish it from memory (direct ones, and those
        whose spool just failed), and whether a spool took it."""
        direct = []
        stored = False
        for lane in self.lanes:
            if lane.backlogged and self.spools.write(lane, batch):
                stored = True
                continue
            if lane.backlogged:  # spool full: the records are dropped, counted; not a marker
                self.spools.count_drop("spool_full", batch[:records])
            else:  # direct, or the spool just failed: send from memory
                lane.inflight = batch
                lane.inflight_spilled = False
                direct.append(lane)
        return direct, stored

    def _send_direct(self, lane: Lane, batch: list[Message], records: int) -> tuple[int, bool]:
        """Publish ``lane``'s in-flight ``batch`` (``records`` records, then maybe a marker);
        spool it if no endpoint confirmed it, and settle with a close() that spilled (or
        counted) it meanwhile. Returns how many of the records went back to the queue, and
        whether the batch went out (published, or spooled, by this or by close())."""
        ok = lane.publish(batch, self.complain, self._refused)
        held = 0
        out = True
        with self.order_lock:
            spilled, dropped = lane.inflight_spilled, lane.inflight_dropped
            lane.inflight = None
            lane.inflight_spilled = False
            lane.inflight_dropped = None
            if not ok and not spilled and not self.spools.write(lane, batch):
                held = self._hold_locked(lane, batch[:records])  # the marker is not a record
                out = False
            if ok and dropped:  # close() counted it as dropped, but it arrived
                self.spools.uncount_drop(*dropped)
        if ok and spilled and not dropped:
            self._skip_confirmed(lane, batch)
        return held, out

    def _hold_locked(self, lane: Lane, batch: list[Message]) -> int:
        """A batch no endpoint confirmed and the spool did not take: back to the head of the
        queue, order kept, as far as the queue has room (review 7, D4: the handler's promise
        is that only what can be neither sent nor held is dropped). What does not fit is
        dropped and counted as before. Only a lane that is the pipeline's only one, with a
        spool that fails: the queue feeds every lane, and without a spool an undeliverable
        batch is dropped as ``unsent`` (documented). ``batch`` holds records only: a marker
        riding with them is held apart (:meth:`_settle_marker_locked`), so it never takes the
        room of a record nor is dropped for want of room (review 9, R2). Returns the records
        put back."""
        if lane.spool is None or len(self.lanes) > 1 or self.state is _CLOSED:
            self.spools.count_unstored(lane, batch, "unsent")
            return 0
        room = max(0, self._queue_size - len(self.queue))
        kept = batch[:room]
        self.spools.count_unstored(lane, batch[room:], "unsent")
        self.queue.extendleft(reversed(kept))
        self.popped -= len(kept)
        return len(kept)

    def _refused(self, messages: Sequence[Message], reason: str) -> None:
        """Records a destination refused for good and could not keep: dropped, counted and
        announced by the next marker under ``reason`` (``rejected_unsaved``,
        ``too_large_for_broker``), so ``mqlogging audit`` explains the gap."""
        with self.order_lock:
            self.spools.count_drop(reason, messages)

    def _skip_confirmed(self, lane: Lane, batch: list[Message]) -> None:
        """A spill copied ``batch`` to the spool while it was being confirmed: commit those
        copies at the head of the spool instead of sending them twice."""
        try:
            reader = lane.reader()
            records = reader.read(len(batch))
            same = 0
            for record, message in zip(records, batch, strict=False):
                if record.body != message.body:
                    break
                same += 1
            if same:
                reader.commit(records[:same])
            if same < len(records):
                reader.rewind(records[same:])
        except SpoolError as exc:
            self.complain("spool_error", f"cannot skip confirmed records: {exc}")

    def _replay(self, lane: Lane) -> bool:
        """Publish the oldest spooled batch of ``lane``; True if it was confirmed."""
        try:
            reader = lane.reader()
            records = reader.read(lane.batch_size)
            if not records:
                with self.order_lock:
                    records = reader.read(lane.batch_size)
                    # "Nothing readable" is "caught up" only if no segment of ours is being
                    # shipped by another reader (issue #11, defect 3): going direct then would
                    # send new records ahead of older ones.
                    if not records and not lane.own_deferred():
                        lane.backlogged = False
                        self.wa_pending = 0
                if not records:
                    return False
        except SpoolError as exc:
            self.complain("spool_read", f"cannot read the spool: {exc}")
            lane.next_attempt = time.monotonic() + 1.0
            return False
        if self._ship(lane, reader, records):
            return True
        # Release the claims while our endpoints are down: another process whose broker
        # answers may ship those segments meanwhile (never out of order: see SpoolReader).
        lane.close_reader()
        return False

    def _adopt(self, lane: Lane, now: float) -> bool:
        """Replay one batch of the segments other processes left in ``lane``'s directory.

        Only while the lane is direct and an endpoint is up: a backlogged lane's own reader
        reads those segments anyway, and a down lane would only spool them again. The check
        for work is one ``listdir`` every ``_ADOPT_INTERVAL`` seconds; once there is some, a
        batch per cycle (after the memory queue, so the lane's own records are not delayed
        behind a large adopted backlog). True if a batch was confirmed.
        """
        spool = lane.spool
        assert spool is not None
        if lane.down(now) or not any(ep.healthy for ep in lane.endpoints):
            return False  # adopt only through a healthy endpoint; looked at again when it is
        if not lane.adopting and not self._found_foreign(lane, spool, now):
            return False
        lane.adopting = True
        try:
            reader = lane.foreign_reader()
            records = reader.read(lane.batch_size)
        except SpoolError as exc:
            self.complain("spool_read", f"cannot read the spool: {exc}")
            lane.close_foreign_reader()
            return False
        if not records:
            lane.adopting = False  # nothing left to adopt (or all held by other readers)
            return False
        if self._ship(lane, reader, records):
            return True
        lane.close_foreign_reader()  # do not hold other writers' segments while down
        return False

    def _found_foreign(self, lane: Lane, spool: Spool, now: float) -> bool:
        """The scan for segments other processes left (one ``listdir``), at most once per
        ``_ADOPT_INTERVAL`` seconds per lane."""
        lane.next_scan = now + _ADOPT_INTERVAL
        try:
            return bool(spool.foreign_segments())
        except SpoolError as exc:
            self.complain("spool_read", f"cannot read the spool: {exc}")
            return False

    def _ship(self, lane: Lane, reader: SpoolReader, records: list[SpoolRecord]) -> bool:
        """Publish spooled ``records``: committed once confirmed, given back to ``reader``
        otherwise. True if the broker confirmed them."""
        messages = [Message(record_id(r), r.body) for r in records]
        if not lane.publish(messages, self.complain, self._refused):
            reader.rewind()
            return False
        try:
            reader.commit(records)
        except SpoolError as exc:  # the records were delivered; they may come again
            self.complain("spool_commit", f"cannot record replay progress: {exc}")
        self.replayed += len(records)
        return True

    # -- observability --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self.order_lock:
            dropped = dict(self.spools.dropped)
            queued = len(self.queue)
        spools = [lane.stats() for lane in self.lanes if lane.spool is not None]
        spool: dict[str, Any] = {
            "bytes": sum(s.get("bytes", 0) for s in spools),
            "records": sum(s.get("records", 0) for s in spools),
            "directories": [s["directory"] for s in spools],
            # the last spool write error, and whether durability="spool" fell back to memory
            "error": self.spools.failure,
            "degraded": self.config.durability == "spool" and self.degraded,
        }
        for s in spools:
            for reason, n in s.get("dropped", {}).items():
                key = spool_reason(reason)
                dropped[key] = dropped.get(key, 0) + n
        return {
            "queued": queued,
            "sent": sum(ep.sent for ep in self.endpoints),
            "confirmed": sum(ep.confirmed for ep in self.endpoints),
            "spooled": self.spools.spooled,
            "replayed": self.replayed,
            "dropped": dropped,
            "markers": {
                "sent": self.drops.markers,
                "unattributed": self.drops.unattributed,
                "unannounced": self.drops.unannounced,
            },
            "ignored": self.ignored,
            "endpoints": {ep.name: ep.stats() for ep in self.endpoints},
            "spool": spool,
        }
