"""Messages above the broker's message size limit: refused alone, never the whole lane.

A broker refuses a message above its size limit for good (RabbitMQ's ``max_message_size``:
``406 PRECONDITION_FAILED`` closing the AMQP channel, an ``ERROR`` frame closing the STOMP
connection). Sending it again can never succeed, and the refusal takes down every message
published after it on that channel: before this module, the producer reported the whole
batch as not confirmed, the handler retried it forever, the lane never moved again and the
records of the batch before the big one were delivered again on every retry (review 7, D3).

A producer of message bodies (AMQP, STOMP) keeps one :class:`SizeGuard`:

1. Before publishing, a message whose body is above the limit is taken out of the batch and
   refused alone (:class:`~mqlogging.errors.PartlyRefused`, reason
   :data:`TOO_LARGE`): the handler counts it as dropped and announces it with a drop marker,
   and the rest of the batch goes on. The limit is the endpoint's ``max_message_bytes``
   (default :data:`~mqlogging.backends.endpoints.DEFAULT_MAX_MESSAGE_BYTES`). No broker
   advertises its limit (RabbitMQ puts it neither in ``connection.tune``, whose ``frame_max``
   is a frame size, nor in its server properties or STOMP ``CONNECTED`` headers), so the
   option is the only way to know it before the first refusal.
2. A broker with a smaller limit says so in its refusal ("message size N is larger than
   configured max size M"): :meth:`SizeGuard.learn` lowers the limit to ``M`` for the
   producer's life (every later connection too: the nodes of a cluster share the setting),
   and the producer sends what the broker did not confirm again on a new channel, through
   step 1, so the big message is the one refused.

Identifying the offending message relies on the limit the broker states: every message
above it is refused, and a broker refuses exactly those. A broker that says the refusal is
about size without a number (ActiveMQ's STOMP ``maxFrameSize``: "The maximum frame size was
exceeded") still identifies it: the producer waits for the confirms before every message
larger than any the broker took (:meth:`SizeGuard.barriers`), so the refused one is the
first unconfirmed message, and the limit is below its size (a later, smaller one that is
still too large teaches the next bound the same way). A refusal that is not about size, or
that teaches nothing new, stays a :class:`~mqlogging.errors.NotConfirmed` of the batch,
retried as before: refusing the largest message on a guess could drop records a broker
refused for another reason (a deleted queue, a policy).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Final

from .._types import Message
from ..errors import BackendError, PartlyRefused
from ..packing import Pack, Packer
from .endpoints import Endpoint

__all__ = [
    "SAFE_BYTES",
    "SIZE_ROUNDS",
    "TOO_LARGE",
    "SizeGuard",
    "SizeRefusal",
    "publish_within_limit",
    "records_of",
    "stated_limit",
]

TOO_LARGE: Final = "too_large_for_broker"
"""The drop reason of a record refused for its size (handler ``dropped``, endpoint stats)."""

SAFE_BYTES: Final = 256 * 1024
"""Message bodies assumed below any broker's limit (RabbitMQ's ``max_message_size`` and
ActiveMQ's ``maxFrameSize`` are megabytes): the handler's default ``max_record_bytes`` and
the default ``pack_bytes``, so default configurations never wait (:meth:`SizeGuard.barriers`)."""

SIZE_ROUNDS: Final = 3
"""Publish rounds of one batch beyond one per record: each round after the first follows a
size refusal that strictly lowered the limit, and the message refused goes out of the next
round (refused alone, or packed smaller), so a batch of ``n`` records needs at most about
``n + 1`` rounds. Needing more means the broker keeps changing its mind. The bound is per
record, not fixed: a batch holding several big records of falling size (ActiveMQ, whose
refusal names no limit, teaches one bound per record) must not be sent again as a whole
(review 10, D1: the records confirmed in the earlier rounds arrived twice)."""

_UNLIMITED: Final = 2**62

_STATED = re.compile(r"larger than configured max size (\d+)")
_ABOUT_SIZE = re.compile(r"maximum frame size|message size|too large|larger than", re.IGNORECASE)


def stated_limit(text: str) -> int | None:
    """The size limit a broker states in a refusal (RabbitMQ, AMQP and STOMP), or ``None``."""
    found = _STATED.search(text)
    return int(found.group(1)) if found else None


class SizeGuard:
    """The message size limit one producer keeps to, and what it refused for it."""

    def __init__(self, endpoint: Endpoint) -> None:
        limit = endpoint.message_limit()
        self.limit = limit if limit is not None else _UNLIMITED
        self.refused = 0
        #: The largest body known to be safe: :data:`SAFE_BYTES`, then the largest the
        #: broker confirmed. A larger one may be refused for its size (:meth:`barriers`).
        self.proven = min(SAFE_BYTES, self.limit)
        #: The limit is a bound inferred from a refused size, not one the broker stated.
        self.inferred = False
        #: Ids of records the broker confirmed in a batch that then failed (a later round
        #: failed for another reason, or the rounds ran out): the handler sends the whole
        #: batch again, and these must not be (:meth:`undelivered`). Cleared by a batch that
        #: goes through.
        self.delivered: set[str] = set()

    def undelivered(self, messages: Sequence[Message]) -> Sequence[Message]:
        """``messages`` without the records already confirmed by an earlier, failed attempt
        at the batch (review 10: a batch failing after a size refusal round sent again the
        records the rounds before had delivered)."""
        if not self.delivered:
            return messages
        return [m for m in messages if m.id not in self.delivered]

    def remember(self, sent: Sequence[Message], exc: SizeRefusal) -> None:
        """The records of ``sent`` the round ending in ``exc`` delivered: neither
        unconfirmed nor refused up front."""
        out = {m.id for m in exc.unconfirmed}.union(m.id for m in exc.refused)
        self.delivered.update(m.id for m in sent if m.id not in out)

    def delivered_before_failure(self, records: Sequence[Message]) -> None:
        """A round failing for a reason other than size had ``records`` confirmed first:
        leave them out when the handler sends the batch again."""
        self.delivered.update(m.id for m in records)

    def learn(self, refusal: str, culprit: int | None = None) -> bool:
        """True if ``refusal`` tells a limit below the one applied so far (now applied):
        sending the unconfirmed messages again, through :meth:`split`, can make progress.

        A refusal that states no limit but says it is about size (ActiveMQ: "The maximum
        frame size was exceeded") tells one too when ``culprit``, the size of the first
        unconfirmed message, is above :attr:`proven`: thanks to :meth:`barriers` every
        message after it in its round is no larger than one the broker took, so that one is
        the message refused, and the limit is below its size.
        """
        stated = stated_limit(refusal)
        inferred = stated is None
        if inferred and culprit is not None and culprit > self.proven:
            stated = culprit - 1 if _ABOUT_SIZE.search(refusal) else None
        if stated is None or stated >= self.limit:
            return False
        self.inferred = inferred
        self.limit = stated
        self.proven = min(self.proven, stated)
        return True

    def confirmed(self, size: int) -> None:
        """The broker confirmed a message of ``size`` bytes: as large is safe from now on."""
        if size <= self.limit:
            self.proven = max(self.proven, size)

    def barriers(self, sizes: Sequence[int]) -> list[int]:
        """Where a producer waits for the confirms of the messages before: the indexes of
        the messages larger than any proven safe (not the first: nothing precedes it).

        A broker refusing a message for its size closes the channel or connection, and
        the acknowledgements of the messages before it that were still on their way are
        lost with it: waiting for them first means only the big one and those after it
        (which the broker discarded) are sent again, never a stored record twice. Messages
        up to :data:`SAFE_BYTES` (the handler's default ``max_record_bytes`` and packs of
        the default ``pack_bytes``) never wait.
        """
        proven = self.proven
        if not sizes or max(sizes) <= proven:  # the usual case, at C speed
            return []
        return [i for i in range(1, len(sizes)) if sizes[i] > proven]

    def alone(self, sizes: Sequence[int]) -> list[int]:
        """The ends of the segments to send one after the other, each message larger than
        any proven safe in a segment of its own (STOMP, one receipt per segment).

        Alone, because RabbitMQ's STOMP adapter may answer a frame that follows a refused
        one with a generic "Processing error" instead of the size refusal (the channel
        behind it is already closed): nothing must follow the big one until its receipt.
        """
        ends: list[int] = []
        for i, size in enumerate(sizes):
            if size > self.proven:
                if i and (not ends or ends[-1] != i):
                    ends.append(i)
                ends.append(i + 1)
        if not ends or ends[-1] != len(sizes):
            ends.append(len(sizes))
        return ends

    def pack(self, packer: Packer, messages: Sequence[Message]) -> tuple[list[Pack], list[Message]]:
        """``messages`` as packed messages within the limit, and the records refused (each
        alone in a pack above the limit, compressed or not)."""
        packs: list[Pack] = []
        refused: list[Message] = []
        for pack in packer.pack(messages, self.limit):
            if len(pack.body) > self.limit:
                refused.append(messages[pack.first])
            else:
                packs.append(pack)
        return packs, refused

    def split(self, messages: Sequence[Message]) -> tuple[list[Message], list[Message]]:
        """``messages`` that fit, and those whose body is above the limit (refused alone)."""
        limit = self.limit
        big = [m for m in messages if len(m.body) > limit]
        if not big:  # the usual case: one pass, no copy per message
            return list(messages), big
        return [m for m in messages if len(m.body) <= limit], big

    def refusal(self, refused: Sequence[Message], total: int, where: str) -> PartlyRefused:
        """The error naming the refused records (counted here); the rest of the batch is
        confirmed. The message says which limit and how to raise it."""
        self.refused += len(refused)
        largest = max(len(m.body) for m in refused)
        limit = f"below {self.limit + 1}" if self.inferred else f"of {self.limit}"
        msg = (
            f"{len(refused)} of {total} records above the broker's message size limit {limit} "
            f"bytes refused for good (largest {largest} bytes, first id {refused[0].id}); "
            "raise the broker's limit (RabbitMQ max_message_size, ActiveMQ maxFrameSize) and "
            "the URL option max_message_bytes, or lower the handler's max_record_bytes"
        )
        return PartlyRefused(
            msg, ids=frozenset(m.id for m in refused), endpoint=where, drop_reason=TOO_LARGE
        )

    def stats(self) -> dict[str, int]:
        """The producer's counter, shown under its endpoint in the handler's ``stats()``."""
        return {TOO_LARGE: self.refused} if self.refused else {}


class SizeRefusal(Exception):
    """A round's message was refused for its size, the broker stated a smaller limit (now
    applied): ``unconfirmed`` are the records to send again, on a new channel or connection;
    ``refused`` the records the round had refused up front (packed alone above the limit:
    they are in no pack, so not in ``unconfirmed``, and would vanish uncounted if dropped
    here, review 10 D4); ``failure`` is what to raise if the rounds run out."""

    def __init__(
        self,
        unconfirmed: list[Message],
        failure: BackendError,
        refused: Sequence[Message] = (),
    ) -> None:
        super().__init__(str(failure))
        self.unconfirmed = unconfirmed
        self.failure = failure
        self.refused = list(refused)


def publish_within_limit(
    guard: SizeGuard,
    messages: Sequence[Message],
    *,
    packed: bool,
    publish_round: Callable[[Sequence[Message]], list[Message]],
    where: str,
) -> None:
    """Publish ``messages`` with ``publish_round`` (which returns the records it refused up
    front, packed, and raises :class:`SizeRefusal`), refusing the records above the limit
    alone: :class:`PartlyRefused` names them once every other record is confirmed.

    Unpacked records above the limit are taken out here; packed ones by :meth:`SizeGuard.pack`
    in the round (compression decides a pack's size).

    A round after a size refusal may still fail for another reason (ActiveMQ sometimes
    answers a big frame with "The maximum command length was exceeded"): the batch fails and
    the handler sends it again, but the records the earlier rounds delivered are remembered
    (:attr:`SizeGuard.delivered`) and left out, so none arrives twice.
    """
    refused: list[Message] = []
    pending = guard.undelivered(messages)
    last: BackendError | None = None
    for _ in range(len(messages) + SIZE_ROUNDS):
        fit, big = (list(pending), []) if packed else guard.split(pending)
        refused += big
        try:
            refused += publish_round(fit)
        except SizeRefusal as exc:
            guard.remember(fit, exc)
            pending, last = exc.unconfirmed, exc.failure
            refused += exc.refused
            continue
        guard.delivered.clear()
        if refused:
            raise guard.refusal(refused, len(messages), where)
        return
    assert last is not None
    raise last


def records_of(messages: Sequence[Message], packs: Sequence[Pack] | None) -> list[Message]:
    """The records ``packs`` (cut from ``messages``) hold, or ``messages`` unpacked."""
    if packs is None:
        return list(messages)
    return [m for p in packs for m in messages[p.first : p.first + p.count]]
