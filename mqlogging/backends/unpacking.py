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

Thread-safety: that of the wrapped consumer (one owner thread).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

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

__all__ = ["UnpackingConsumer"]

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


class UnpackingConsumer(Consumer):
    """``inner``, with packed deliveries split into one delivery per record."""

    def __init__(self, inner: Consumer, *, max_unpacked: int = DEFAULT_MAX_UNPACKED) -> None:
        self.endpoint = inner.endpoint
        self.inner = inner
        self._max_unpacked = max_unpacked
        self._ready: deque[Delivery] = deque()
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
        if not self._ready or max_messages == 0:
            want = 0 if max_messages == 0 else max(1, int(max_messages / self._per_message))
            if not self._recent:
                want = min(want, 1)  # nothing known yet: one message shows what they hold
            deliveries = self.inner.fetch(want, timeout)
            if deliveries:
                before = len(self._ready)
                for delivery in deliveries:
                    self._ready.extend(self._split(delivery))
                self._recent.append((len(self._ready) - before) / len(deliveries))
                self._per_message = max(1.0, *self._recent)
                self._follow_window()
        ready = self._ready
        return [ready.popleft() for _ in range(min(max_messages, len(ready)))]

    def _follow_window(self) -> None:
        """Keep the wrapped consumer's window (in messages) at the window asked for in records,
        as the records per message change: packed messages of 500 records under a window of
        1,000 *messages* would let the broker push half a million records. Changes only by a
        factor of two or more (each change costs an AMQP consumer a resubscribe)."""
        target = max(1, math.ceil(self._records_window / max(self._per_message, 1.0)))
        current = self._inner_window
        if target >= 2 * current or 2 * target <= current:
            self._inner_window = self.inner.set_window(target)

    def _split(self, delivery: Delivery) -> Iterable[Delivery]:
        headers = delivery.headers
        if not is_packed(headers):
            if UNPACK_ERROR_HEADER in headers:  # a producer's, not ours: not a refusal
                return (_without_refusal(delivery),)
            return (delivery,)
        try:
            lines = unpack(delivery.body, headers, self._max_unpacked)
        except UnpackError as exc:
            return (_refused(delivery, str(exc)),)
        if not lines:  # nothing to hand out: settle it now (a packed message of no records)
            self.inner.ack([delivery])
            return ()
        key = _message_key(delivery, len(lines))
        packed = _Packed(delivery, len(lines), key)
        before = self._outcomes.pop(key, None) if key is not None else None
        if before is not None:
            for index, outcome in enumerate(before):
                if outcome in (_ACKED, _REJECTED):
                    packed.settle(index, outcome)
        parts = _parts(packed, lines)
        if not parts:  # every record was settled for good last time (a lost ack)
            self._finish([packed])
        return parts

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


def _parts(packed: _Packed, lines: list[bytes]) -> list[Delivery]:
    """One delivery per record of ``packed`` not settled yet (all of them, unless it came
    back after a requeue). The first record has the message's id, record ``i`` the id
    ``<id>#<i>``; all share one headers mapping (read-only for the caller)."""
    message = packed.delivery
    headers = _part_headers(message.headers)
    mid, redelivered = message.id, message.redelivered
    settled = packed.settled
    everything = packed.left == len(lines)  # nothing settled yet (the common case)
    return [
        new_delivery(f"{mid}#{i}" if i else mid, line, (packed, i), headers, redelivered)
        for i, line in enumerate(lines)
        if everything or not settled[i]
    ]


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
