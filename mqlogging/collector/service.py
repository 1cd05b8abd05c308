"""The collector service: consume, decode, batch, write to every sink, then ack.

Shape. One worker thread per source owns that source's consumer (consumers are
single-thread-owned, so fetch, ack and nack all happen on it). A worker fetches up to the
source's prefetch, decodes, and cuts batches by count, bytes or time; each batch is written to
every sink, and a message is acked only when every sink answered ``DONE`` for its record, or
when a dead-letter copy of it is confirmed. Sinks are shared by all workers.

Retries. Items a sink answered ``RETRY`` for are written again — only those items, only to the
sinks that still lack them — after a capped, jittered backoff. While it waits, a worker keeps
fetching (up to the prefetch bound), which also keeps the broker connection's heartbeats alive;
so a sink outage stops the flow after ``prefetch`` messages and the rest stays in the broker.
Every retry round is counted (``retried``) and logged; nothing is retried invisibly, and
``max_attempts`` can turn "retry until it works" into "dead-letter after N attempts".

Guarantees. At least once into every sink; exactly once in Elasticsearch because the record id
is the document ``_id`` written with ``op_type=create``. Nothing is dropped: poison messages go
to the dead letters — the configured ``[dead_letter]`` target, else a spool directory under the
collector's ``state_dir`` — and are acked only once their copy is confirmed; a message is never
rejected to the broker. Order is not preserved across retries (a retried item lands after later
ones).

Memory. A worker takes messages from its consumer only while it holds less than
``max_inflight_bytes`` of them, and only as many as fit by the size of recent messages (one is
always allowed, so a single large message cannot deadlock). The broker's window shrinks the
same way: the worker asks its consumer (:meth:`Consumer.set_window`) for a prefetch of what
fits in ``max_inflight_bytes`` at the recent message size, within ``1 .. prefetch`` — it starts
at the size of ``max_message_bytes`` and follows the sizes seen, changing only when the fit
moves by a factor of two (or reaches the configured prefetch). So the rest waits in the broker,
not raw in the client's receive buffer. Transports that fix the prefetch at subscribe time
(STOMP) keep ``prefetch``: there the client may buffer up to ``prefetch`` messages.

Shutdown. :meth:`CollectorService.stop` (SIGTERM/SIGINT): workers stop fetching, keep flushing
what they hold until ``shutdown_timeout``, ack what succeeded and nack (requeue) the rest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from types import FrameType
from typing import Any

from .._backoff import Backoff
from .._ids import new_id
from .._json import DECODE_ERRORS, loads
from .._types import DONE, Delivery
from ..backends import Consumer, UnpackingConsumer
from ..backends.local import LocalEndpoint
from ..backends.unpacking import Unpacked
from ..errors import MQLoggingError
from ..packing import UNPACK_ERROR_HEADER
from ..wire import read_id
from .config import CollectorConfig, SourceAny
from .metrics import CollectorMetrics, HttpServer
from .sinks import Outcome, Record, Result, Sink, build_sink
from .sinks.deadletter import DeadLetter, DeadLetterWriter
from .sources import open_source

__all__ = ["CollectorService", "Decoder", "decode"]

log = logging.getLogger("mqlogging.collector")


# -- decoding ---------------------------------------------------------------------------------


class _Item(Record):
    """One delivery on its way through the pipeline: the record the sinks get, and what the
    pipeline needs to settle its message.

    One object per record, not a :class:`Record` plus a pipeline object (issue #13: building
    and freeing per-record objects was a third of the collector's cost on packed input). The
    sinks see it as the :class:`Record` it is. A poison delivery is an item with no document
    (``doc`` empty, ``id`` ``""``) and ``dead`` set; it never reaches a sink. What only retries
    need (attempt count, Retry-After) is kept per batch by :meth:`_Worker._process`.

    Where it came from: ``source``, as the consumer handed it out — a :class:`Delivery`, or
    the :class:`~mqlogging.backends.unpacking.Unpacked` records of a packed message, of which
    it is the ``index``-th (no Delivery built per packed record: issue #13).
    """

    __slots__ = ("dead", "index", "last_error", "source", "stage", "todo")

    source: Delivery | Unpacked
    index: int
    todo: int  # bit i set: sink i does not have the record yet (an int, not a set per record)
    dead: str | None  # dead-letter reason, once decided
    stage: str
    last_error: str

    def delivery(self) -> Delivery:
        """The record as a :class:`Delivery` (for the dead letters, and a consumer that
        settles deliveries): built only when asked for."""
        source = self.source
        return source.delivery(self.index) if isinstance(source, Unpacked) else source


_bare = object.__new__


def _new_item(  # noqa: PLR0917 - one call per record: positional is the cheapest
    rid: str, doc: dict[str, Any], size: int, source: Delivery | Unpacked, index: int, todo: int
) -> _Item:
    """A new :class:`_Item`. A function filling a bare object rather than ``_Item(...)``
    with an ``__init__`` (issue #13): a class call runs ``__init__`` through the C type
    machinery and a nested interpreter loop, a plain call does not. Record's fields are set
    here too, not through its ``__init__``."""
    item: _Item = _bare(_Item)
    item.id = rid
    item.doc = doc
    item.size = size
    item._encoded = None
    item.source = source
    item.index = index
    item.todo = todo
    item.dead = None
    item.stage = ""
    item.last_error = ""
    return item


def _poison(reason: str, size: int, source: Delivery | Unpacked, index: int, todo: int) -> _Item:
    """An item for a record that did not decode (``reason``: why), for the dead letters."""
    item = _new_item("", {}, size, source, index, todo)
    item.dead, item.stage = reason, "decode"
    return item


def _utcnow_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _shape_problem(doc: Any, max_depth: int, max_fields: int) -> str:
    """Why ``doc`` is too deep or has too many fields (counted over every nested object), or ''.

    Iterative, so a hostile document cannot exhaust the interpreter's stack.
    """
    fields = 0
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            return f"nested too deeply: more than {max_depth} levels"
        if isinstance(value, dict):
            fields += len(value)
            if fields > max_fields:
                return f"too many fields: more than max_fields {max_fields}"
            stack.extend((v, depth + 1) for v in value.values() if isinstance(v, dict | list))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value if isinstance(v, dict | list))
    return ""


_ABSENT: Any = object()
"""What ``dict.get`` answers for a key the record does not have (``None`` is JSON's null)."""

_Enrichment = list[tuple[tuple[str, ...], str, Any]]
"""(parent keys, leaf key, value) per field to set: dotted paths split once, not per record."""


def _split_paths(pairs: Sequence[tuple[str, Any]]) -> _Enrichment:
    out: _Enrichment = []
    for path, value in pairs:
        *parents, leaf = path.split(".")
        out.append((tuple(parents), leaf, value))
    return out


def _enrich(doc: dict[str, Any], fields: _Enrichment) -> None:
    """Set each field of ``fields`` on ``doc`` where it is absent (a parent the record has,
    ``null`` included, is never replaced)."""
    for parents, leaf, value in fields:
        target = doc
        for part in parents:
            child = target.get(part, _ABSENT)
            if child is _ABSENT:
                child = target[part] = {}
            elif not isinstance(child, dict):
                break  # the record uses this name for something else: leave it alone
            target = child
        else:
            target.setdefault(leaf, value)


class Decoder:
    """Decodes messages into :class:`Record` objects under fixed limits (see :func:`decode`).

    Everything that does not depend on the record is prepared once, here: the collector calls
    it for every record it consumes (issue #13). :meth:`enrich` replaces the fields to set
    (a worker refreshes the received-at time once per fetch, not per record).
    """

    __slots__ = ("_colons_from", "_fields", "_max_bytes", "_max_depth", "_max_fields")

    def __init__(
        self,
        *,
        max_bytes: int,
        max_depth: int,
        max_fields: int = 1000,
        enrich: Sequence[tuple[str, Any]] = (),
    ) -> None:
        # Read-only (see the properties): the checks below are prepared from them once.
        self._max_bytes = max_bytes
        self._max_depth = max_depth
        self._max_fields = max_fields
        # Each key takes 3 bytes at least (``"":``), so a body of at most 3 * max_fields bytes
        # cannot hold more than max_fields keys: its colons need not be counted.
        self._colons_from = 3 * max_fields
        self._fields = _split_paths(enrich)

    @property
    def max_bytes(self) -> int:
        """Largest message body accepted, in bytes."""
        return self._max_bytes

    @property
    def max_depth(self) -> int:
        """Deepest nesting of objects and arrays accepted."""
        return self._max_depth

    @property
    def max_fields(self) -> int:
        """Most keys accepted in a record, counted over every nested object."""
        return self._max_fields

    def enrich(self, pairs: Sequence[tuple[str, Any]]) -> None:
        """From now on, set these (dotted path, value) pairs on records where absent."""
        self._fields = _split_paths(pairs)

    def __call__(self, delivery: Delivery) -> tuple[Record | None, str]:
        """The record of ``delivery``, or ``(None, reason)`` for a poison one."""
        doc, rid = self.parse(delivery)
        if doc is None:
            return None, rid
        return Record(rid, doc, len(delivery.body)), ""

    def parse(self, delivery: Delivery) -> tuple[dict[str, Any] | None, str]:
        """``(document, record id)`` of ``delivery``, the document checked and enriched, or
        ``(None, reason)`` for a poison one: what :meth:`__call__` makes a :class:`Record`
        of (the collector makes its own pipeline item of it instead, one object per record).

        The record id, the Elasticsearch ``_id``: the record's own (never a user field that
        looks like it), else the transport's message id, else a new one (never a content hash:
        two identical records are two records).
        """
        doc, reason = self.check(delivery.body, delivery.headers)
        if doc is None:
            return None, reason
        return doc, read_id(doc) or delivery.id or new_id()

    def check(self, body: bytes, headers: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """``(document, "")`` of a message with this body and these headers, the document
        checked and enriched, or ``(None, reason)`` for a poison one (:meth:`parse` without
        the record id, for a reader that has no :class:`Delivery` per record)."""
        refused = headers.get(UNPACK_ERROR_HEADER)
        if refused is not None:
            return None, f"packed message refused: {refused}"
        size = len(body)
        if size > self._max_bytes:
            return None, f"oversize: {size} bytes > max_message_bytes {self._max_bytes}"
        try:
            doc = loads(body)
        except DECODE_ERRORS as exc:
            return None, _undecodable(body, exc, self._max_depth)
        if doc.__class__ is not dict:
            return None, f"not a JSON object: got {type(doc).__name__}"
        # Cheap pre-checks (C speed): fewer brackets than the limit cannot nest deeper than it,
        # and every key is followed by a colon, so fewer colons than the limit means fewer keys.
        # (``find`` is a memchr: most records have no array, and counting is a slower loop.)
        brackets = body.count(b"{")
        if body.find(b"[") >= 0:
            brackets += body.count(b"[")
        if brackets > self._max_depth or (
            size > self._colons_from and body.count(b":") > self._max_fields
        ):
            problem = _shape_problem(doc, self._max_depth, self._max_fields)
            if problem:
                return None, problem
        if self._fields:
            _enrich(doc, self._fields)
        return doc, ""


def decode(
    delivery: Delivery,
    *,
    max_bytes: int,
    max_depth: int,
    max_fields: int = 1000,
    enrich: Sequence[tuple[str, Any]] = (),
) -> tuple[Record | None, str]:
    """Decode one message into a :class:`Record`, or return ``(None, reason)`` for a poison one.

    Poison: larger than ``max_bytes``, not UTF-8, not JSON, not a JSON object, nested deeper
    than ``max_depth``, or with more than ``max_fields`` keys in all (a field explosion would
    otherwise hit Elasticsearch's mapping limit, or blow it up). ``enrich`` is a list of
    (dotted path, value) set when absent. (Many messages: a :class:`Decoder`.)
    """
    return Decoder(max_bytes=max_bytes, max_depth=max_depth, max_fields=max_fields, enrich=enrich)(
        delivery
    )


def _undecodable(body: bytes, exc: Exception, max_depth: int) -> str:
    """Why ``body`` did not decode (``exc``: the JSON library's error), in dead-letter words."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as uexc:
        return f"invalid UTF-8: {uexc}"
    if isinstance(exc, RecursionError) or "recursion" in str(exc).lower():
        return f"nested too deeply: more than {max_depth} levels"
    return f"invalid JSON: {exc}"


def _reason_class(reason: str) -> str:
    """A small, bounded label for the metrics (the full reason goes into the dead letter)."""
    head = reason.split(":", 1)[0].strip()
    for known in (
        "oversize",
        "invalid UTF-8",
        "invalid JSON",
        "not a JSON object",
        "nested too deeply",
        "too many fields",
        "gave up",
    ):
        if reason.startswith(known):
            return known.replace(" ", "_").lower()
    return "sink_rejected" if head else "other"


# -- the per-source worker --------------------------------------------------------------------


class _Worker(threading.Thread):
    """Owns one source's consumer: fetch, decode, batch, write, ack — all on this thread."""

    def __init__(self, service: CollectorService, source: SourceAny) -> None:
        super().__init__(name=f"mqlogging-collector[{source.label}]", daemon=True)
        self.service = service
        self.source = source
        self.label = source.label
        self.connected = False
        self.failed: BaseException | None = None
        self._consumer: Consumer | None = None
        self._pending: list[_Item] = []
        self._pending_bytes = 0
        self._first_at = 0.0
        self._held = 0  # items fetched and not settled (pending + the batch being written)
        self._held_bytes = 0  # their message bytes (bounded by max_inflight_bytes)
        self._conn_backoff = Backoff(base=0.2, cap=service.config.pipeline.retry_max)
        cfg = service.config
        self.prefetch = source.max_in_flight
        self._window = self.prefetch  # the broker's prefetch in force (see _adapt_window)
        self._recent_largest: deque[int] = deque(maxlen=4)  # largest message of recent fetches
        self._decoder = Decoder(
            max_bytes=cfg.pipeline.max_message_bytes,
            max_depth=cfg.pipeline.max_depth,
            max_fields=cfg.pipeline.max_fields,
        )
        self._dead = DeadLetterWriter(
            cfg.dead_letter_target.url, source=self.label, collector=service.host_name
        )
        # AMQP: the broker enforces prefetch, so fetching at the bound only services heartbeats.
        self._fetch_when_full = source.fetch_when_full
        m = service.metrics
        self._m_consumed = m.consumed.labels(self.label)
        self._m_acked = m.acked.labels(self.label)
        self._m_requeued = m.requeued.labels(self.label)
        self._m_in_flight = m.in_flight.labels(self.label)
        self._m_in_flight_bytes = m.in_flight_bytes.labels(self.label)
        self._m_connected = m.connected.labels(self.label)
        self._m_batch = m.batch_seconds.labels(self.label)
        self._m_reconnects = m.reconnects.labels(self.label)

    # -- main loop ----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._consumer = open_source(self.source, self._answered)
            self._adapt_window()
            self._loop()
            self._drain()
        except BaseException as exc:  # a bug: log it, give everything back, let readyz say so
            self.failed = exc
            log.exception("source %s: worker failed", self.label)
            self._nack(self._pending)
            self._pending = []
        finally:
            if self._consumer is not None:
                with contextlib.suppress(Exception):
                    self._consumer.close()
            with contextlib.suppress(Exception):
                self._dead.close()
            self.connected = False
            self._m_connected.set(0)

    def _loop(self) -> None:
        p = self.service.config.pipeline
        stop = self.service.stopping
        while not stop.is_set():
            # A batch larger than the broker's window could only fill up by timing out.
            target = min(p.batch_max_count, self._window)
            if self._pending:
                wait = max(0.0, self._first_at + p.batch_max_wait - time.monotonic())
            else:
                wait = min(p.batch_max_wait, 0.5)
            room = min(target - len(self._pending), self._room())
            if room > 0 and self._pending_bytes < p.batch_max_bytes:
                self._fetch(room, wait)
            elif wait > 0 and not self._ready(target):
                stop.wait(min(wait, 0.05))
            if self._ready(target):
                self._process(self._take_batch(), deadline=None)

    def _answered(self, status: int) -> None:
        """Count one answer of an HTTPS ingest source (called on its server thread)."""
        self.service.metrics.ingest_requests.labels(self.label, str(status)).inc()

    def _room(self) -> int:
        """How many more messages this worker may take: what the prefetch allows, limited to
        what fits in the free ``max_inflight_bytes`` at the recent message size; never 0
        while it holds nothing, so one oversized message still gets through."""
        size = self._message_size()
        if not self._held:
            free = self.service.config.pipeline.max_inflight_bytes
            return min(self.prefetch, max(1, free // size))
        free = self.service.config.pipeline.max_inflight_bytes - self._held_bytes
        return min(self.prefetch - self._held, max(0, free // size))

    def _message_size(self) -> int:
        """The message size that turns bytes into a count: the largest of the last few
        fetches, ``max_message_bytes`` before the first (so it cannot overshoot the bound)."""
        default = self.service.config.pipeline.max_message_bytes
        return max(1, max(self._recent_largest, default=default))

    def _ready(self, target: int) -> bool:
        if not self._pending:
            return False
        p = self.service.config.pipeline
        return (
            len(self._pending) >= target
            or self._pending_bytes >= p.batch_max_bytes
            or time.monotonic() - self._first_at >= p.batch_max_wait
        )

    def _drain(self) -> None:
        """After stop: flush what we hold until the deadline, then give the rest back."""
        deadline = self.service.deadline
        while self._pending and time.monotonic() < deadline:
            self._process(self._take_batch(), deadline=deadline)
        if self._pending:
            self._nack(self._pending)
            self._pending = []

    def _take_batch(self) -> list[_Item]:
        p = self.service.config.pipeline
        if len(self._pending) <= p.batch_max_count and self._pending_bytes <= p.batch_max_bytes:
            batch, self._pending = self._pending, []  # all of it: no need to walk it
            self._pending_bytes = 0
            self._first_at = time.monotonic()
            return batch
        count, size = 0, 0
        for item in self._pending:
            if count and (count >= p.batch_max_count or size + item.size > p.batch_max_bytes):
                break
            count += 1
            size += item.size
        batch, self._pending = self._pending[:count], self._pending[count:]
        self._pending_bytes -= size
        self._first_at = time.monotonic()
        return batch

    # -- fetching -----------------------------------------------------------------------------

    def _fetch(self, max_messages: int, timeout: float) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            # An unpacking consumer's records come without a Delivery each (issue #13).
            entries: Sequence[Delivery | Unpacked] = (
                consumer.fetch_unpacked(max_messages, timeout)
                if isinstance(consumer, UnpackingConsumer)
                else consumer.fetch(max_messages, timeout)
            )
        except Exception as exc:
            if self.connected or self._conn_backoff.attempt == 0:
                log.warning("source %s: %s; reconnecting", self.label, exc)
            self.connected = False
            self._m_connected.set(0)
            self._m_reconnects.inc()
            self.service.stopping.wait(self._conn_backoff.next_delay())
            return
        if not self.connected:
            if self._conn_backoff.attempt:
                log.info("source %s: connected", self.label)
            self.connected = True
            self._m_connected.set(1)
            self._conn_backoff.reset()
        if entries:
            self._accept(entries)

    def _accept(self, entries: Sequence[Delivery | Unpacked]) -> None:
        """Decode the records of ``entries`` into pending items (per record: only what each
        one needs; a delivery is one record, taken without a loop: issue #13)."""
        service = self.service
        decoder = self._decoder
        decoder.enrich(service.enrichment())
        check, all_sinks = decoder.check, service.all_sinks
        pending = self._pending
        if not pending:
            self._first_at = time.monotonic()
        before = len(pending)
        for entry in entries:
            if isinstance(entry, Unpacked):
                self._accept_unpacked(entry)
                continue
            body = entry.body
            doc, why = check(body, entry.headers)
            if doc is None:
                pending.append(_poison(why, len(body), entry, 0, all_sinks))
            else:
                rid = read_id(doc) or entry.id or new_id()
                pending.append(_new_item(rid, doc, len(body), entry, 0, all_sinks))
        sizes = [it.size for it in pending[before:]]
        self._took(len(sizes), sum(sizes), max(sizes))

    def _accept_unpacked(self, records: Unpacked) -> None:
        """:meth:`_accept` for the records of a packed message."""
        check, all_sinks = self._decoder.check, self.service.all_sinks
        pending = self._pending
        headers, record_id = records.headers, records.record_id
        for index, body in enumerate(records.bodies):
            doc, why = check(body, headers)
            if doc is None:
                pending.append(_poison(why, len(body), records, index, all_sinks))
            else:
                rid = read_id(doc) or record_id(index) or new_id()
                pending.append(_new_item(rid, doc, len(body), records, index, all_sinks))

    def _took(self, count: int, size: int, largest: int) -> None:
        """Count ``count`` records of ``size`` bytes just taken (``largest``: the largest)."""
        self._pending_bytes += size
        self._recent_largest.append(largest)
        self._held += count
        self._held_bytes += size
        self._m_consumed.inc(count)
        self._m_in_flight.set(self._held)
        self._m_in_flight_bytes.set(self._held_bytes)
        self._adapt_window()

    def _adapt_window(self) -> None:
        """Keep the broker's prefetch to what fits in ``max_inflight_bytes`` at the recent
        message size, so the client library does not buffer more than that either.

        The size is the largest message of the last few fetches (``max_message_bytes``
        before the first), so one large message narrows the window at once and it widens
        again in one step a few fetches later. Hysteresis: the window changes only when the
        fit is at least twice or at most half the window in force, or reaches the configured
        prefetch (each change costs the consumer a resubscribe on AMQP).
        """
        assert self._consumer is not None
        p = self.service.config.pipeline
        fit = p.max_inflight_bytes // self._message_size()
        target = max(1, min(self.prefetch, fit))
        window = self._window
        if target == window:
            return
        if target >= 2 * window or 2 * target <= window or target == self.prefetch:
            self._window = self._consumer.set_window(target)

    def _idle(self, delay: float, deadline: float | None) -> None:
        """Wait ``delay`` seconds, fetching into the pending list while there is room."""
        end = time.monotonic() + delay
        if deadline is not None:
            end = min(end, deadline)
        stop = self.service.stopping
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            if stop.is_set():
                # Shutting down: no new messages; wake up at the shutdown deadline at the
                # latest, even when the stop came during a longer wait (a sink's Retry-After).
                until_deadline = self.service.deadline - time.monotonic()
                self.service.finished.wait(max(0.0, min(remaining, until_deadline)))
                return
            room = self._room()
            if room > 0 or self._fetch_when_full:
                # fetch(0): an AMQP consumer only services its connection (heartbeats).
                # At most 1 s at a time, so a stop during a long wait is seen promptly.
                self._fetch(max(room, 0), min(remaining, 1.0))
            elif stop.wait(remaining):
                continue

    # -- writing ------------------------------------------------------------------------------

    def _process(self, batch: list[_Item], deadline: float | None) -> None:
        """Write ``batch`` to every sink until each item is settled (or the deadline passed)."""
        service = self.service
        p = service.config.pipeline
        backoff = Backoff(base=p.retry_initial, cap=p.retry_max)
        started = time.monotonic()
        last_log = 0.0
        open_items = batch
        # Every open item of the batch was tried in every round (one that was not is settled
        # or dead), so the rounds count the attempts of each: kept here, not per record.
        attempts = 0
        while open_items:
            waits = self._attempt(open_items)
            attempts += 1
            open_items = self._settle(open_items)
            if not open_items:
                break
            now = time.monotonic()
            stopping = service.stopping.is_set()
            if self._out_of_time(deadline):
                self._nack(open_items)
                break
            if p.max_attempts and attempts >= p.max_attempts:
                for item in open_items:
                    if item.dead is None:
                        item.dead = f"gave up after {attempts} attempts: {item.last_error}"
                        item.stage = "retries"
            # A store's Retry-After is honoured: never try again sooner than it asked.
            delay = max(backoff.next_delay(), _retry_after(waits, open_items))
            retry_sinks = Counter(
                sink.name
                for item in open_items
                if item.dead is None
                for i, sink in enumerate(service.sinks)
                if item.todo >> i & 1
            )
            for name, n in retry_sinks.items():
                service.metrics.retried.labels(name).inc(n)
            if now - last_log >= 10.0:
                last_log = now
                sample = next(
                    (i.last_error for i in open_items if i.last_error), "dead letter failed"
                )
                log.warning(
                    "source %s: %d of %d records not settled (%s); retrying in %.1fs (attempt %d)",
                    self.label,
                    len(open_items),
                    len(batch),
                    sample,
                    delay,
                    backoff.attempt,
                )
            self._idle(delay, service.deadline if stopping else None)
            if self._out_of_time(deadline):  # stopped during the wait: no attempt after it
                self._nack(open_items)
                break
        self._m_batch.observe(time.monotonic() - started)

    def _out_of_time(self, deadline: float | None) -> bool:
        """Stopping, and the flush deadline (``deadline``, else the service's) has passed."""
        service = self.service
        if not service.stopping.is_set():
            return False
        return time.monotonic() >= (deadline if deadline is not None else service.deadline)

    def _attempt(self, items: list[_Item]) -> list[tuple[_Item, float]]:
        """Write ``items`` to every sink that lacks them; returns the Retry-After waits the
        sinks asked for, with their items (rare: kept aside, not reset per record)."""
        waits: list[tuple[_Item, float]] = []
        for index, sink in enumerate(self.service.sinks):
            bit = 1 << index
            todo = [it for it in items if it.dead is None and it.todo & bit]
            if todo:
                self._take_results(sink, bit, todo, _safe_write(sink, todo), waits)
        return waits

    def _take_results(
        self,
        sink: Sink,
        bit: int,
        todo: list[_Item],
        results: list[Result],
        waits: list[tuple[_Item, float]],
    ) -> None:
        """Apply ``sink``'s answers (``bit``: its bit in ``_Item.todo``) to ``todo``, adding
        the Retry-After waits asked for to ``waits``; the status metrics are counted per batch."""
        keep = ~bit
        if results and results[0] is DONE and results.count(DONE) == len(results):
            for item in todo:  # all taken (the common answer): nothing to decide per record
                item.todo &= keep
            self.service.metrics.sink_items.labels(sink.name, DONE.status).inc(len(results))
            return
        statuses = Counter([r.status or r.outcome.value for r in results])
        for item, result in zip(todo, results, strict=True):
            outcome = result.outcome
            if outcome is Outcome.DONE:
                item.todo &= keep
            elif outcome is Outcome.REJECT:
                item.dead, item.stage = f"{sink.name}: {result.reason}", "sink"
            else:
                item.last_error = f"{sink.name}: {result.reason}"
                if result.retry_after:
                    waits.append((item, result.retry_after))
        for status, n in statuses.items():
            self.service.metrics.sink_items.labels(sink.name, status).inc(n)

    def _settle(self, items: list[_Item]) -> list[_Item]:
        """Ack finished items, dead-letter rejected ones; return those still open."""
        done: list[_Item] = []
        dead: list[_Item] = []
        rest: list[_Item] = []
        for it in items:
            if it.dead is not None:
                dead.append(it)
            elif it.todo:
                rest.append(it)
            else:
                done.append(it)
        if dead:
            rest += self._dead_letter(dead, done)
        if done:
            self._ack(done)
        return rest

    def _dead_letter(self, dead: list[_Item], done: list[_Item]) -> list[_Item]:
        """Dead-letter ``dead``: confirmed ones join ``done``; returns the ones to retry."""
        m = self.service.metrics
        letters = [DeadLetter(it.delivery(), it.dead or "", it.stage, it.id) for it in dead]
        try:
            self._dead.write(letters)
        except (MQLoggingError, OSError) as exc:
            log.warning("source %s: dead letter write failed (%s); retrying", self.label, exc)
            m.dead_letter_failures.labels(self.label).inc(len(dead))
            for item in dead:
                item.last_error = f"dead letter: {exc}"
            return dead
        for item in dead:
            log.warning(
                "source %s: dead-lettered message %s: %s", self.label, item.delivery().id, item.dead
            )
            m.dead_lettered.labels(self.label, _reason_class(item.dead or "")).inc()
        done.extend(dead)
        return []

    # -- settling with the broker (owner thread only) ------------------------------------------

    def _ack(self, items: Sequence[_Item]) -> None:
        assert self._consumer is not None
        try:
            self._tell(self._consumer, items, requeue=None)
        except Exception as exc:  # connection lost: the broker redelivers; _id makes it harmless
            log.warning(
                "source %s: ack of %d messages failed (%s); the broker will redeliver "
                "them and the sinks will dedupe",
                self.label,
                len(items),
                exc,
            )
        else:
            self._m_acked.inc(len(items))
        self._release(items)

    @staticmethod
    def _tell(consumer: Consumer, items: Sequence[_Item], requeue: bool | None) -> None:
        """Ack (``requeue`` None) or nack ``items`` through ``consumer``, by record for an
        unpacking one (no Delivery built), else by delivery."""
        if isinstance(consumer, UnpackingConsumer):
            if requeue is None:
                consumer.ack_records(items)
            else:
                consumer.nack_records(items, requeue=requeue)
        elif requeue is None:
            consumer.ack([it.delivery() for it in items])
        else:
            consumer.nack([it.delivery() for it in items], requeue=requeue)

    def _release(self, items: Sequence[_Item]) -> None:
        """Forget settled ``items`` in the in-flight count and bytes."""
        self._held -= len(items)
        self._held_bytes -= sum([it.size for it in items])
        self._m_in_flight.set(self._held)
        self._m_in_flight_bytes.set(self._held_bytes)

    def _nack(self, items: Sequence[_Item], *, requeue: bool = True) -> None:
        if not items:
            return
        if self._consumer is not None:
            try:
                self._tell(self._consumer, items, requeue)
            except Exception as exc:
                log.warning(
                    "source %s: nack of %d messages failed (%s); the broker requeues "
                    "them when the connection closes",
                    self.label,
                    len(items),
                    exc,
                )
        if requeue:
            self._m_requeued.inc(len(items))
        self._release(items)


def _retry_after(waits: list[tuple[_Item, float]], open_items: list[_Item]) -> float:
    """The longest Retry-After a sink asked for a record still open (0: none asked)."""
    if not waits:
        return 0.0
    still = {id(item) for item in open_items}
    return max((wait for item, wait in waits if id(item) in still), default=0.0)


def _safe_write(sink: Sink, records: Sequence[Record]) -> list[Result]:
    try:
        results = sink.write(records)
    except Exception as exc:  # a sink bug or an unexpected library error: retry, visibly
        log.exception("sink %s: write failed", sink.name)
        return [Result(Outcome.RETRY, "error", f"{type(exc).__name__}: {exc}")] * len(records)
    if len(results) != len(records):
        reason = f"sink answered {len(results)} results for {len(records)} records"
        log.error("sink %s: %s", sink.name, reason)
        return [Result(Outcome.RETRY, "error", reason)] * len(records)
    return results


# -- the service ------------------------------------------------------------------------------


class CollectorService:
    """Runs the workers, the sinks and the HTTP endpoint for one configuration.

    Lifecycle: :meth:`start` (non-blocking), :meth:`stop` (idempotent, thread- and
    signal-safe), :meth:`wait` (blocks until every worker finished). :meth:`run` does all three
    with signal handlers (SIGTERM/SIGINT stop, SIGHUP reopens file sinks) and returns 0.
    """

    def __init__(self, config: CollectorConfig) -> None:
        self.config = config
        self.metrics = CollectorMetrics()
        self.host_name = config.collector.host_name or socket.gethostname()
        self.sinks: list[Sink] = [build_sink(s, self.metrics) for s in config.sinks]
        self.all_sinks = (1 << len(self.sinks)) - 1  # a bit per sink (see _Item.todo)
        self.stopping = threading.Event()
        self.finished = threading.Event()
        self.deadline = float("inf")
        self.workers = [_Worker(self, s) for s in config.sources]
        self.http: HttpServer | None = None
        self._enrich_cache: tuple[float, list[tuple[str, Any]]] = (0.0, [])
        self._started = False

    def enrichment(self) -> list[tuple[str, Any]]:
        """(path, value) pairs to set on records; the timestamp is refreshed every 1 ms."""
        p = self.config.pipeline
        if not p.enrich:
            return []
        now = time.monotonic()
        stamp, pairs = self._enrich_cache
        if now - stamp < 0.001 and pairs:
            return pairs
        pairs = []
        if p.received_at_field:
            pairs.append((p.received_at_field, _utcnow_iso()))
        if p.host_field:
            pairs.append((p.host_field, self.host_name))
        self._enrich_cache = (now, pairs)
        return pairs

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for sink in self.sinks:
            sink.start()
        address = self.config.http.address
        if address is not None:
            self.http = HttpServer(address, self.metrics, self.readiness)
            self.http.start()
            log.info("serving /metrics /healthz /readyz on %s:%d", *self.http.address)
        self._announce_dead_letters()
        for worker in self.workers:
            worker.start()
        log.info(
            "collector started: %d source(s) -> %s",
            len(self.workers),
            ", ".join(s.name for s in self.sinks),
        )

    def _announce_dead_letters(self) -> None:
        """Say in one line where dead letters go; warn now if the default spool directory
        cannot be created (poison messages would then wait in the broker, counted as
        ``dead_letter_failures``, until it can)."""
        target = self.config.dead_letter_target.url
        if self.config.dead_letter is not None:
            log.info("dead letters -> %s", target.redacted())
            return
        log.info("dead letters -> %s (default; set [dead_letter] url to change)", target.redacted())
        directory = LocalEndpoint.from_url(target).path  # the default is a local:// spool
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            log.error(
                "dead-letter directory %s cannot be created (%s): poison messages stay in the "
                "broker until it can; set [collector] state_dir or [dead_letter] url",
                directory,
                exc,
            )

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        sources = {w.label: w.connected and w.is_alive() for w in self.workers}
        sinks = {s.name: s.check() for s in self.sinks}
        ready = all(sources.values()) and all(sinks.values()) and not self.stopping.is_set()
        return ready, {"sources": sources, "sinks": sinks}

    def stop(self) -> None:
        """Ask every worker to stop fetching and flush until ``shutdown_timeout``."""
        if not self.stopping.is_set():
            self.deadline = time.monotonic() + self.config.collector.shutdown_timeout
            self.stopping.set()

    def reopen(self) -> None:
        for sink in self.sinks:
            try:
                sink.reopen()
            except Exception:
                log.exception("sink %s: reopen failed", sink.name)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the workers (after :meth:`stop`); True if all finished."""
        end = None if timeout is None else time.monotonic() + timeout
        for worker in self.workers:
            worker.join(None if end is None else max(0.0, end - time.monotonic()))
        alive = [w for w in self.workers if w.is_alive()]
        if not alive:
            self.finished.set()
        return not alive

    def close(self) -> None:
        self.stop()
        self.wait(self.config.collector.shutdown_timeout + 5.0)
        self.finished.set()
        for sink in self.sinks:
            sink.close()
        if self.http is not None:
            self.http.close()

    def run(self) -> int:
        """Start, block until SIGTERM/SIGINT (or :meth:`stop`), drain, close; return 0."""
        installed: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():

            def _stop(signum: int, frame: FrameType | None) -> None:
                log.info("received %s: stopping", signal.Signals(signum).name)
                self.stop()

            def _hup(signum: int, frame: FrameType | None) -> None:
                log.info("received SIGHUP: reopening file sinks")
                self.reopen()

            for sig, handler in (
                (signal.SIGTERM, _stop),
                (signal.SIGINT, _stop),
                (signal.SIGHUP, _hup),
            ):
                installed[sig] = signal.signal(sig, handler)
        try:
            self.start()
            while not self.stopping.wait(0.5):
                if all(not w.is_alive() for w in self.workers):
                    log.error("every source worker has stopped; exiting")
                    self.stop()
            clean = self.wait(self.config.collector.shutdown_timeout + 5.0)
            if not clean:
                log.error(
                    "workers did not finish within the shutdown deadline; unacked "
                    "messages return to the broker when the process exits"
                )
        finally:
            self.close()
            for sig, previous in installed.items():
                signal.signal(sig, previous)
        failed = [w for w in self.workers if w.failed is not None]
        log.info(
            "collector stopped: acked %d, requeued %d, dead-lettered %d",
            self.metrics.value("acked"),
            self.metrics.value("requeued"),
            self.metrics.value("dead_lettered"),
        )
        return 1 if failed else 0
