"""Dead letters: a confirmed copy of a poison message, with the reason, before it is acked.

A dead letter is a JSON object::

    {"reason": "...", "stage": "decode" | "sink" | "retries", "source": "<redacted url>",
     "record_id": "...", "dead_lettered_at": "2024-...Z", "collector": "host",
     "message": "<original body as text>"}      # or "message_base64" when it is not UTF-8

built by :func:`mqlogging.deadletters.envelope` (the one owner of the format, which also reads
it back for ``mqlogging audit --dead-letters``), published through the ordinary transport
layer (:func:`mqlogging.backends.open_producer`): to
a broker queue (AMQP publisher confirms / STOMP receipt) or to a ``local://`` spool directory.
``publish_batch`` returns only once the copy is confirmed, and only then is the original acked —
so a crash in between yields a duplicate dead letter, never a lost one.

Thread-safety: one writer per source thread (producers are single-thread-owned).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from ..._ids import new_id
from ..._types import Delivery, Message
from ...backends import Producer, open_producer
from ...backends.endpoints import Endpoint
from ...deadletters import envelope
from .._table import FromTable, check_fields
from .base import dumps

__all__ = [
    "DEAD_LETTER_SPOOL",
    "DeadLetter",
    "DeadLetterConfig",
    "DeadLetterWriter",
    "dead_letter_body",
]


DEAD_LETTER_SPOOL: Final[Mapping[str, str]] = {
    "overflow": "refuse",
    "fsync": "always",
    "max_age": "3650d",
}
"""Spool options of a ``local://`` dead-letter target that its URL does not set."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetterConfig(FromTable):
    """Where poison messages go: a broker queue (published with confirms) or a ``local://``
    spool directory. Without a ``[dead_letter]`` table they go to
    :func:`~mqlogging.collector.config.default_dead_letter` (a spool directory under
    ``[collector] state_dir``): a poison message is never discarded and never blocks the queue.
    Replay one with ``mqlogging spool replay DIR --to URL``.

    A ``local://`` target keeps dead letters for a human: unless the URL says otherwise, its
    spool refuses rather than drops when full (a refused dead letter keeps its message in the
    broker, counted as a dead-letter failure), syncs every batch, and keeps its segments for
    ten years instead of the spool's default week (:data:`DEAD_LETTER_SPOOL`)."""

    url: Endpoint

    def __post_init__(self) -> None:
        check_fields(self)
        object.__setattr__(self, "url", self.url.with_spool_defaults(DEAD_LETTER_SPOOL))

    @classmethod
    def in_directory(cls, path: Path) -> DeadLetterConfig:
        """A ``local://`` spool directory at ``path`` as the target."""
        return cls(url=Endpoint.from_url(f"local://{quote(str(path))}"))


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message to dead-letter, with why."""

    delivery: Delivery
    reason: str
    stage: str
    record_id: str = ""


def dead_letter_body(letter: DeadLetter, *, source: str, collector: str) -> dict[str, Any]:
    """The JSON document stored for ``letter`` (see the module docstring): the envelope of
    :func:`mqlogging.deadletters.envelope`, which ``mqlogging audit --dead-letters`` reads."""
    extra: dict[str, Any] = {"collector": collector}
    headers = _plain_headers(letter.delivery.headers)
    if headers:
        extra["headers"] = headers
    return envelope(
        letter.delivery.body,
        reason=letter.reason,
        stage=letter.stage,
        source=source,
        record_id=letter.record_id or letter.delivery.id,
        extra=extra,
    )


def _plain_headers(headers: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in headers.items():
        if "pass" in str(key).lower() or "auth" in str(key).lower():
            continue
        out[str(key)] = value if isinstance(value, str) else repr(value)
    return out


class DeadLetterWriter:
    """Publishes dead letters to one endpoint; connects lazily, reconnects after failures."""

    def __init__(self, endpoint: Endpoint, *, source: str, collector: str) -> None:
        self.endpoint = endpoint
        self.source = source
        self.collector = collector
        self._producer: Producer | None = None

    def write(self, letters: Sequence[DeadLetter]) -> None:
        """Publish ``letters`` and return once confirmed.

        Raises:
            BackendError: not confirmed; the caller keeps the originals and retries later.
        """
        if not letters:
            return
        messages = [
            Message(
                new_id(), dumps(dead_letter_body(x, source=self.source, collector=self.collector))
            )
            for x in letters
        ]
        if self._producer is None:
            self._producer = open_producer(self.endpoint)
        try:
            self._producer.publish_batch(messages)
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            producer.close()
