"""A consumer that hands out single records from packed messages (issue #13).

:class:`UnpackingConsumer` wraps any :class:`~mqlogging.backends.base.Consumer`: a packed
delivery (:mod:`mqlogging.packing`) becomes one delivery per record, every other delivery
passes through untouched. The collector and the DIRAC-style consumer API read through it, so
their callers only ever see single records.

Settling, per record: the packed message is acknowledged once *every* one of its records was
acked (done, or dead-lettered by the caller); if any was nacked with requeue, the whole message
is requeued once all its records are settled. When it comes back to this reader, only the
records that were requeued are handed out again (so a record that keeps failing loops alone);
another reader gets them all (duplicates, which the record ids make harmless). If the rest
are done and some were rejected (``requeue=False``), the message is rejected. So a poison
line is the caller's business alone and never takes its siblings with it.

A packed message that cannot be unpacked (corrupt, unknown encoding, or larger than
``max_unpacked`` bytes once decompressed: a zip bomb costs at most that) is handed out whole,
with the reason in the :data:`~mqlogging.packing.UNPACK_ERROR_HEADER` header, for the caller
to dead-letter. That header is this reader's word alone: one a message arrived with (a
producer set it) is removed from every record handed out, packed or not, so it cannot make
the caller dead-letter records that unpacked fine.

Memory: the records of the last fetched messages wait here until handed out; a fetch asks the
wrapped consumer for as many *messages* as the caller asked *records*, divided by the recent
records per message (one message on the first fetch, before anything is known, and the
wrapped consumer's window is one message until then too), so what waits here is about one
request's worth. The wrapped consumer's window follows in messages:
:meth:`set_window` takes a window in records and the wrapper keeps the wrapped consumer's
window at that many records' worth of messages as the records per message change, so packed
messages do not multiply what the broker pushes.

Cheaper, for a reader that makes its own object per record (the collector, issue #13):
:meth:`UnpackingConsumer.fetch_unpacked` hands out the same records without a
:class:`~mqlogging._types.Delivery` each: a message that is not packed as its delivery, the
records of a packed one as an :class:`Unpacked` (bodies, shared headers, ids on demand), to
settle with :meth:`~UnpackingConsumer.ack_records` / :meth:`~UnpackingConsumer.nack_records`
under the same rules.

Thread-safety: that of the wrapped consumer (one owner thread).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from .._types import Delivery, new_delivery
from ..errors import UnpackError
from ..packing import (
    CONTENT_TYPE,
    COUNT_HEADER,
    DEFAULT_MAX_UNPACKED,
    ENCODING_HEADER,
    FIRST_HEADER,
    LAST_HEADER,
    TYPE_HEADER,
    UNPACK_ERROR_HEADER,
    is_packed,
    unpack,
)
from .base import Consumer

__all__ = ["RecordRef", "Unpacked", "UnpackingConsumer"]

# Headers that describe the packed message, not one of its records (its id header is its
# first record's id, and content-length its packed size), and the refusal header, which only
# this reader may set (_refused).
_PACK_HEADERS = frozenset({
    COUNT_HEADER, FIRST_HEADER, LAST_HEADER, ENCODING_HEADER, "mqlogging-id", "amqp-message-id",
    "content-length", UNPACK_ERROR_HEADER,
})  # fmt: skip


_ACKED, _REQUEUED, _REJECTED = 1, 2, 3  # a record's outcome (0: not settled yet)

_REMEMBERED = 10_000
"""Requeued packed messages whose outcomes a reader remembers (the oldest forgotten)."""


class _Packed:
    """Settling state of one packed delivery: which of its records are settled, and how
    (``settled[i]``: 0, or one of ``_ACKED``, ``_REQUEUED``, ``_REJECTED``)."""

    __slots__ = ("delivery", "key", "left", "rejected", "requeue", "settled")

    def __init__(self, delivery: Delivery, count: int, key: tuple[str, ...] | None) -> None:
        self.delivery = delivery
        self.key = key
        self.left = count
        self.settled = bytearray(count)
        self.requeue = False
        self.rejected = False

    def settle(self, index: int, outcome: int) -> bool:
        """Record the outcome of record ``index``; True once every record is settled."""
        self.settled[index] = outcome
        self.left -= 1
        if outcome == _REQUEUED:
            self.requeue = True
        elif outcome == _REJECTED:
            self.rejected = True
        return self.left == 0


_PartTag = tuple[_Packed, int]
"""The tag of one record of a packed delivery: its message's settling state and its index.
A plain tuple, built per record at a fraction of a class instance's cost (issue #13); no
wrapped consumer's tag can be one, as only this module makes :class:`_Packed` objects."""


class Unpacked:
    """Records of one packed message, handed out together by
    :meth:`UnpackingConsumer.fetch_unpacked`: what :meth:`~UnpackingConsumer.fetch` hands out
    as one :class:`Delivery` each, without building them (issue #13: a third of a packed
    record's cost in the collector went into its Delivery).

    ``bodies[k]`` is a record's body, ``headers`` every record's headers (read-only), and
    :meth:`record_id` / :meth:`delivery` give record ``k``'s id and the very delivery
    :meth:`~UnpackingConsumer.fetch` would have handed out for it, when needed.
    """

    __slots__ = ("_indexes", "_packed", "bodies", "headers")

    def __init__(
        self, packed: _Packed, headers: Mapping[str, Any], bodies: list[bytes], indexes: list[int]
    ) -> None:
        self._packed = packed
        self.headers = headers
        self.bodies = bodies
        self._indexes = indexes  # each body's index in its packed message

    @property
    def message(self) -> Delivery:
        """The packed message as it was received."""
        return self._packed.delivery

    def __len__(self) -> int:
        return len(self.bodies)

    def record_id(self, k: int) -> str:
        """Record ``k``'s id: the message's for its first record, ``<id>#<i>`` for record i."""
        index = self._indexes[k]
        mid = self._packed.delivery.id
        return f"{mid}#{index}" if index else mid

    def delivery(self, k: int) -> Delivery:
        """Record ``k`` as the :class:`Delivery` that :meth:`UnpackingConsumer.fetch` hands out."""
        packed = self._packed
        return new_delivery(
            self.record_id(k),
            self.bodies[k],
            (packed, self._indexes[k]),
            self.headers,
            packed.delivery.redelivered,
        )

    def split(self, n: int) -> Unpacked:
        """The first ``n`` records, removed from this one (a fetch that wants fewer)."""
        head = Unpacked(self._packed, self.headers, self.bodies[:n], self._indexes[:n])
        del self.bodies[:n], self._indexes[:n]
        return head


class RecordRef(Protocol):
    """One record handed out by :meth:`UnpackingConsumer.fetch_unpacked`, to settle:
    ``source`` as handed out (a :class:`Delivery`, or an :class:`Unpacked`) and ``index``,
    the record's position in an :class:`Unpacked` (ignored for a delivery)."""

    source: Delivery | Unpacked
    index: int


class UnpackingConsumer(Consumer):
    """``inner``, with packed deliveries split into one delivery per record."""

    def __init__(self, inner: Consumer, *, max_unpacked: int = DEFAULT_MAX_UNPACKED) -> None:
        self.endpoint = inner.endpoint
        self.inner = inner
        self._max_unpacked = max_unpacked
        self._ready: deque[Delivery | Unpacked] = deque()
        self._ready_records = 0  # the records in _ready
        # Records per delivery: the largest average of the last few fetches (so a stream
        # of packed messages is never taken for single records), 1 before the first.
        self._recent: deque[float] = deque(maxlen=4)
        self._per_message = 1.0
        # The window asked for, in records, and the wrapped consumer's, in messages: one
        # message until the first delivery shows how many records a message holds (a window
        # of ``prefetch`` packed messages would push ``prefetch`` times that many records).
        self._records_window = inner.endpoint.prefetch
        self._inner_window = inner.set_window(1)
        # The outcomes of requeued packed messages, by _message_key: when one comes back to
        # this reader, the records settled for good last time are not handed out again.
        self._outcomes: OrderedDict[tuple[str, ...], bytes] = OrderedDict()

    # -- fetching -----------------------------------------------------------------------------

    def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:
        """Up to ``max_messages`` records (see :meth:`Consumer.fetch`)."""
        out: list[Delivery] = []
        for entry in self.fetch_unpacked(max_messages, timeout):
            if isinstance(entry, Unpacked):
                out.extend(entry.delivery(k) for k in range(len(entry)))
            else:
                out.append(entry)
        return out

    def fetch_unpacked(self, max_records: int, timeout: float) -> list[Delivery | Unpacked]:
        """Up to ``max_records`` records, as :meth:`fetch` hands them out, in the same order,
        but a packed message's records as one :class:`Unpacked` (or several, cut where a
        fetch's count ends): settle them with :meth:`ack_records` / :meth:`nack_records`."""
        if not self._ready or max_records == 0:
            self._refill(max_records, timeout)
        ready = self._ready
        left = min(max_records, self._ready_records)
        if self._ready_records == len(ready):  # one record each (messages not packed)
            self._ready_records -= left
            return [ready.popleft() for _ in range(left)]
        out: list[Delivery | Unpacked] = []
        self._ready_records -= left
        while left > 0:
            entry = ready[0]
            if not isinstance(entry, Unpacked):
                out.append(ready.popleft())
                left -= 1
                continue
            count = len(entry)
            if count <= left:
                out.append(ready.popleft())
            else:
                out.append(entry.split(left))
                count = left
            left -= count
        return out

    def _refill(self, max_records: int, timeout: float) -> None:
        """Fetch about ``max_records`` records' worth of messages from the wrapped consumer."""
        want = 0 if max_records == 0 else max(1, int(max_records / self._per_message))
        if not self._recent:
            want = min(want, 1)  # nothing known yet: one message shows what they hold
        deliveries = self.inner.fetch(want, timeout)
        if not deliveries:
            return
        before = self._ready_records
        for delivery in deliveries:
            self._add(delivery)
        self._recent.append((self._ready_records - before) / len(deliveries))
        self._per_message = max(1.0, *self._recent)
        self._follow_window()

    def _follow_window(self) -> None:
        """Keep the wrapped consumer's window (in messages) at the window asked for in records,
        as the records per message change: packed messages of 500 records under a window of
        1,000 *messages* would let the broker push half a million records. Changes only by a
        factor of two or more (each change costs an AMQP consumer a resubscribe)."""
        target = max(1, math.ceil(self._records_window / max(self._per_message, 1.0)))
        current = self._inner_window
        if target >= 2 * current or 2 * target <= current:
            self._inner_window = self.inner.set_window(target)

    def _add(self, delivery: Delivery) -> None:
        """Queue the records of ``delivery`` to hand out (itself, if it is not packed)."""
        headers = delivery.headers
        if is_packed(headers):
            entry = self._unpacked(delivery)
            if entry is None:
                return
            self._ready.append(entry)
            self._ready_records += len(entry) if isinstance(entry, Unpacked) else 1
            return
        if UNPACK_ERROR_HEADER in headers:  # a producer's, not ours: not a refusal
            delivery = _without_refusal(delivery)
        self._ready.append(delivery)
        self._ready_records += 1

    def _unpacked(self, delivery: Delivery) -> Unpacked | Delivery | None:
        """The records of packed ``delivery`` still to hand out; itself marked refused if it
        cannot be unpacked; ``None`` if none is left (it is settled then)."""
        try:
            lines = unpack(delivery.body, delivery.headers, self._max_unpacked)
        except UnpackError as exc:
            return _refused(delivery, str(exc))
        if not lines:  # nothing to hand out: settle it now (a packed message of no records)
            self.inner.ack([delivery])
            return None
        key = _message_key(delivery, len(lines))
        packed = _Packed(delivery, len(lines), key)
        before = self._outcomes.pop(key, None) if key is not None else None
        indexes = list(range(len(lines)))
        if before is not None:
            for index, outcome in enumerate(before):
                if outcome in (_ACKED, _REJECTED):
                    packed.settle(index, outcome)
            indexes = [i for i in indexes if not packed.settled[i]]
            lines = [lines[i] for i in indexes]
        if not lines:  # every record was settled for good last time (a lost ack)
            self._finish([packed])
            return None
        return Unpacked(packed, _part_headers(delivery.headers), lines, indexes)

    def set_window(self, max_messages: int) -> int:
        """Ask the wrapped consumer for a window of about ``max_messages`` records; returns the
        window in force, in records."""
        self._records_window = max(1, max_messages)
        if not self._recent:  # records per message unknown: stay at one message till then
            return max(1, min(max_messages, self.inner.endpoint.prefetch))
        per = max(self._per_message, 1.0)
        self._inner_window = self.inner.set_window(max(1, math.ceil(max_messages / per)))
        return max(1, int(self._inner_window * per))

    # -- settling -----------------------------------------------------------------------------

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge records; a packed message once all its records are settled."""
        self._settle(deliveries, requeue=None)

    def nack(self, deliveries: Sequence[Delivery], *, requeue: bool = True) -> None:
        """Requeue or reject records; a packed message once all its records are settled."""
        self._settle(deliveries, requeue=requeue)

    def _settle(self, deliveries: Sequence[Delivery], requeue: bool | None) -> None:
        """``requeue``: ``None`` to ack, else nack with that flag."""
        whole: list[Delivery] = []
        finished: list[_Packed] = []
        outcome = _ACKED if requeue is None else _REQUEUED if requeue else _REJECTED
        for delivery in deliveries:
            tag = delivery.tag
            if tag.__class__ is not tuple or len(tag) != 2 or tag[0].__class__ is not _Packed:
                whole.append(delivery)  # the wrapped consumer's own (see _PartTag)
                continue
            packed, index = tag
            if packed.settled[index]:
                continue  # settled twice: the first one counts
            if packed.settle(index, outcome):
                finished.append(packed)
        self._conclude(whole, finished, requeue)

    def ack_records(self, records: Iterable[RecordRef]) -> None:
        """:meth:`ack` for records handed out by :meth:`fetch_unpacked`."""
        self._settle_records(records, requeue=None)

    def nack_records(self, records: Iterable[RecordRef], *, requeue: bool = True) -> None:
        """:meth:`nack` for records handed out by :meth:`fetch_unpacked`."""
        self._settle_records(records, requeue=requeue)

    def _settle_records(self, records: Iterable[RecordRef], requeue: bool | None) -> None:
        whole: list[Delivery] = []
        finished: list[_Packed] = []
        outcome = _ACKED if requeue is None else _REQUEUED if requeue else _REJECTED
        last: Unpacked | None = None  # the records of one Unpacked come in a row, mostly
        for record in records:
            source = record.source
            if source is not last:
                if not isinstance(source, Unpacked):
                    whole.append(source)
                    continue
                last, packed, indexes = source, source._packed, source._indexes
            index = indexes[record.index]
            settled = packed.settled
            if settled[index]:
                continue  # settled twice: the first one counts
            if outcome == _ACKED:  # _Packed.settle's common case, inline (once per record)
                settled[index] = _ACKED
                packed.left -= 1
                if not packed.left:
                    finished.append(packed)
            elif packed.settle(index, outcome):
                finished.append(packed)
        self._conclude(whole, finished, requeue)

    def _conclude(
        self, whole: list[Delivery], finished: list[_Packed], requeue: bool | None
    ) -> None:
        """Settle the wrapped consumer's own deliveries ``whole`` and the packed messages
        whose records are all settled now."""
        if whole:
            if requeue is None:
                self.inner.ack(whole)
            else:
                self.inner.nack(whole, requeue=requeue)
        self._finish(finished)

    def _finish(self, finished: Sequence[_Packed]) -> None:
        acked = [p.delivery for p in finished if not p.requeue and not p.rejected]
        requeued = [p.delivery for p in finished if p.requeue]
        rejected = [p.delivery for p in finished if p.rejected and not p.requeue]
        if acked:
            self.inner.ack(acked)
        if requeued:
            self._remember([p for p in finished if p.requeue])
            self.inner.nack(requeued, requeue=True)
        if rejected:
            self.inner.nack(rejected, requeue=False)

    def _remember(self, requeued: Sequence[_Packed]) -> None:
        """Keep the outcomes of requeued packed messages, so that when one comes back here
        only its records that were requeued are handed out again: the others were done (or
        dead-lettered) already, and a record that keeps failing must not drag its siblings
        round with it each time (a reader elsewhere still gets them all: duplicates the
        record ids make harmless)."""
        outcomes = self._outcomes
        for packed in requeued:
            if packed.key is not None:
                outcomes[packed.key] = bytes(packed.settled)
        while len(outcomes) > _REMEMBERED:
            outcomes.popitem(last=False)

    def close(self) -> None:
        """Close the wrapped consumer; records not handed out go back with their messages."""
        self._ready.clear()
        self._ready_records = 0
        self.inner.close()


def _message_key(delivery: Delivery, count: int) -> tuple[str, ...] | None:
    """What identifies a packed message across redeliveries (also ActiveMQ's requeued copy,
    a new message): its id, first and last record ids and record count; ``None`` for one
    without the id headers (another producer's), which is then always read whole."""
    first = delivery.headers.get(FIRST_HEADER)
    last = delivery.headers.get(LAST_HEADER)
    if not delivery.id or first is None or last is None:
        return None
    return (delivery.id, str(first), str(last), str(count))


def _part_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """A record's headers: its message's, without what described the packing."""
    out = {k: v for k, v in headers.items() if k not in _PACK_HEADERS}
    if str(out.get(TYPE_HEADER, "")).startswith(CONTENT_TYPE):
        out[TYPE_HEADER] = "application/json"
    return out


def _without_refusal(delivery: Delivery) -> Delivery:
    """``delivery`` without the :data:`UNPACK_ERROR_HEADER` its producer set."""
    return _with_headers(
        delivery, {k: v for k, v in delivery.headers.items() if k != UNPACK_ERROR_HEADER}
    )


def _refused(delivery: Delivery, reason: str) -> Delivery:
    """``delivery`` as it is, marked with why it cannot be unpacked (for the dead letters)."""
    return _with_headers(delivery, {**delivery.headers, UNPACK_ERROR_HEADER: reason})


def _with_headers(delivery: Delivery, headers: dict[str, Any]) -> Delivery:
    return Delivery(
        id=delivery.id,
        body=delivery.body,
        tag=delivery.tag,
        headers=headers,
        redelivered=delivery.redelivered,
    )
