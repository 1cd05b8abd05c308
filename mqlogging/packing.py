"""Packed messages: many records in one broker message, as JSON lines (issue #13).

The one owner of the packed format; every producer that publishes message bodies packs with
:class:`Packer`, and every reader (the consumer wrapper under the collector and the generic
consumer API, ``mqlogging tail``) unpacks with :func:`unpack`.

The format (design.md "Wire format")::

    content-type:      application/x-ndjson
    content-encoding:  gzip | zstd                  (absent: not compressed)
    mqlogging-count:   N                            (records in the message)
    mqlogging-first-id / mqlogging-last-id          (ids of the first and last record)
    body:              record 1 \\n record 2 \\n ... record N      (each a JSON object)

A record body never contains a raw newline (JSON escapes it), so a line is a record. The
message's own id (AMQP ``message_id``, STOMP ``mqlogging-id``) is its first record's id. On
AMQP the count and ids are application headers and the type and encoding are the standard
properties; readers see them all as ``Delivery.headers`` under the names above.

Why packing happens at publish time, per batch: confirms, spooling, replay, failover and
order stay per record (the spool never sees a packed message); a packed message that is not
confirmed means all its records are not confirmed.

Reading is bounded in bytes: :func:`unpack` refuses a message whose records would exceed
``max_bytes`` once decompressed (a zip bomb costs at most that much memory), raising
:class:`~mqlogging.errors.UnpackError` (the message then goes to the dead letters whole).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from ._types import Message
from .errors import MissingDependencyError, UnpackError

__all__ = [
    "CONTENT_TYPE",
    "COUNT_HEADER",
    "DEFAULT_MAX_UNPACKED",
    "DEFAULT_PACK_BYTES",
    "ENCODINGS",
    "ENCODING_HEADER",
    "FIRST_HEADER",
    "LAST_HEADER",
    "MAX_PACK_BYTES",
    "TYPE_HEADER",
    "UNPACK_ERROR_HEADER",
    "Pack",
    "PackOptions",
    "Packer",
    "is_packed",
    "unpack",
    "unpack_bodies",
]

CONTENT_TYPE: Final = "application/x-ndjson"
COUNT_HEADER: Final = "mqlogging-count"
FIRST_HEADER: Final = "mqlogging-first-id"
LAST_HEADER: Final = "mqlogging-last-id"
ENCODING_HEADER: Final = "content-encoding"
TYPE_HEADER: Final = "content-type"
ENCODINGS: Final = ("gzip", "zstd")
UNPACK_ERROR_HEADER: Final = "mqlogging-unpack-error"
"""Set by a reader on a packed delivery it could not unpack: why (the message goes to the
dead letters whole)."""

DEFAULT_PACK_BYTES: Final = 256 * 1024
"""Uncompressed bytes of records per packed message when only ``pack=`` is given."""
MAX_PACK_BYTES: Final = 16 * 1024 * 1024
"""Largest ``pack_bytes``: RabbitMQ 4's default message size limit (``max_message_size``,
128 MiB in 3.x) and below ActiveMQ's STOMP frame limit. A producer also keeps packs under its
endpoint's ``max_message_bytes`` (and under a smaller limit a broker states in a refusal)."""
DEFAULT_MAX_UNPACKED: Final = 64 * 1024 * 1024
"""Most bytes a reader unpacks from one message by default (the zip-bomb bound)."""

Encoding = Literal["gzip", "zstd"]


@dataclass(frozen=True, slots=True)
class PackOptions:
    """How a producer packs: at most ``records`` records and ``max_bytes`` uncompressed bytes
    per message (a single larger record travels alone), compressed with ``compress``."""

    records: int
    max_bytes: int
    compress: Encoding | None = None


class Pack:
    """One packed message: its body, its headers and which records of the batch it holds
    (``first`` .. ``first + count - 1``); ``id`` is its first record's id."""

    __slots__ = ("body", "count", "first", "headers", "id")

    def __init__(
        self, body: bytes, headers: dict[str, Any], first: int, count: int, record_id: str
    ) -> None:
        self.body = body
        self.headers = headers
        self.first = first
        self.count = count
        self.id = record_id


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError as exc:
        raise MissingDependencyError("zstandard", "zstd") from exc
    return zstandard


class Packer:
    """Packs batches of records for one producer (one owner thread: the compressor is kept)."""

    def __init__(self, options: PackOptions) -> None:
        self.options = options
        self._compress: Callable[[bytes], bytes] | None = None
        if options.compress == "gzip":
            self._compress = _gzip
        elif options.compress == "zstd":
            self._compress = _zstd().ZstdCompressor(level=3).compress

    def pack(self, messages: Sequence[Message], limit: int | None = None) -> list[Pack]:
        """The records of ``messages`` in order, cut into packed messages by count and bytes.

        ``limit`` is the broker's message size limit (the body it checks, compressed or not):
        no message of several records is ever above it. A single record larger than it
        still travels alone (the producer refuses that one, alone, before sending it).
        """
        opts = self.options
        max_bytes = opts.max_bytes if limit is None else min(opts.max_bytes, limit)
        out: list[Pack] = []
        start, size = 0, 0
        for i, message in enumerate(messages):
            length = len(message.body) + 1
            count = i - start
            if count and (count >= opts.records or size + length > max_bytes):
                out.extend(self._within(messages, start, i, limit))
                start, size = i, 0
            size += length
        if start < len(messages):
            out.extend(self._within(messages, start, len(messages), limit))
        return out

    def _within(
        self, messages: Sequence[Message], start: int, end: int, limit: int | None
    ) -> list[Pack]:
        """The records ``start .. end - 1`` as one pack, or halved until each pack is within
        ``limit``: compression can make a body a little larger than its records (random
        data), and a pack the broker refuses for its size would lose every record in it."""
        pack = self._one(messages, start, end)
        if limit is None or len(pack.body) <= limit or end - start == 1:
            return [pack]
        middle = (start + end) // 2
        return self._within(messages, start, middle, limit) + self._within(
            messages, middle, end, limit
        )

    def _one(self, messages: Sequence[Message], start: int, end: int) -> Pack:
        chunk = messages[start:end]
        body = b"\n".join([m.body for m in chunk])
        headers: dict[str, Any] = {
            COUNT_HEADER: len(chunk),
            FIRST_HEADER: chunk[0].id,
            LAST_HEADER: chunk[-1].id,
        }
        if self._compress is not None:
            body = self._compress(body)
            headers[ENCODING_HEADER] = self.options.compress
        return Pack(body, headers, start, len(chunk), chunk[0].id)


def _gzip(data: bytes) -> bytes:
    # Level 1: log lines compress about 10x at it, several times faster than the default 9.
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


def unpack_bodies(body: bytes, headers: Mapping[str, Any], max_bytes: int) -> list[bytes]:
    """For a live view (``mqlogging tail``): the record bodies of any message, packed or not;
    a packed message that cannot be unpacked is shown as it came."""
    if not is_packed(headers):
        return [body]
    try:
        return unpack(body, headers, max_bytes)
    except UnpackError:
        return [body]


def is_packed(headers: Mapping[str, Any]) -> bool:
    """True if a message with these headers is a packed one: its content type says so, or
    it has a record count (a broker that does not pass ``content-type`` through)."""
    if COUNT_HEADER in headers:
        return True
    value = headers.get(TYPE_HEADER)
    return value is not None and str(value).split(";", 1)[0].strip() == CONTENT_TYPE


def unpack(body: bytes, headers: Mapping[str, Any], max_bytes: int) -> list[bytes]:
    """The record bodies of a packed message, in order (empty lines skipped).

    Raises:
        UnpackError: unknown encoding, a corrupt compressed body, more than ``max_bytes``
            once decompressed, or a record count that disagrees with the header.
    """
    encoding = headers.get(ENCODING_HEADER)
    if encoding:
        body = _decompress(body, str(encoding).strip().lower(), max_bytes)
    elif len(body) > max_bytes:
        msg = f"packed message of {len(body)} bytes is larger than the limit of {max_bytes}"
        raise UnpackError(msg)
    lines = [line for line in body.split(b"\n") if line.strip()]
    expected = headers.get(COUNT_HEADER)
    if expected is not None and str(expected).strip() != str(len(lines)):
        msg = f"packed message says {COUNT_HEADER}={expected} but holds {len(lines)} records"
        raise UnpackError(msg)
    return lines


def _decompress(body: bytes, encoding: str, max_bytes: int) -> bytes:
    """``body`` decompressed, holding at most about ``max_bytes`` of output.

    A body may be several gzip members or zstd frames in a row (concatenated files, a
    streaming compressor): all are read, and the limit bounds their sum. A stream cut short
    or followed by bytes that are not a member is refused, never half read.
    """
    if encoding not in ENCODINGS:
        msg = f"packed message has unknown content-encoding {encoding!r} (known: gzip, zstd)"
        raise UnpackError(msg)
    if not body:
        raise _truncated(encoding)
    try:
        if encoding == "gzip":
            return _gunzip(body, max_bytes)
        return _unzstd(body, max_bytes)
    except UnpackError:
        raise
    except Exception as exc:  # zlib.error, zstandard.ZstdError, OSError: a corrupt body
        msg = f"packed message is not valid {encoding}: {exc}"
        raise UnpackError(msg) from exc


def _too_large(max_bytes: int) -> UnpackError:
    msg = f"packed message decompresses to more than the limit of {max_bytes} bytes"
    return UnpackError(msg)


def _truncated(encoding: str) -> UnpackError:
    return UnpackError(f"packed message is a truncated {encoding} stream")


def _gunzip(body: bytes, max_bytes: int) -> bytes:
    """Every gzip member of ``body``, reading at most ``max_bytes + 1`` bytes of output."""
    out: list[bytes] = []
    size, data = 0, body
    while data:
        inflater = zlib.decompressobj(31)
        chunk = inflater.decompress(data, max_bytes + 1 - size)
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        if not inflater.eof:
            raise _truncated("gzip")
        out.append(chunk)
        data = inflater.unused_data
    return b"".join(out)


def _unzstd(body: bytes, max_bytes: int) -> bytes:
    """Every zstd frame of ``body``. First measured with a bounded streaming read (the
    zip-bomb bound: a frame may not declare its size), then decompressed frame by frame,
    which tells a complete frame from a cut one (the streaming reader does not)."""
    zstd = _zstd().ZstdDecompressor()
    reader = zstd.stream_reader(io.BytesIO(body), read_across_frames=True)
    size = 0
    while size <= max_bytes:
        chunk = reader.read(min(1 << 20, max_bytes + 1 - size))
        if not chunk:
            break
        size += len(chunk)
    if size > max_bytes:
        raise _too_large(max_bytes)
    out: list[bytes] = []
    data = body
    while data:
        frame = zstd.decompressobj()
        out.append(frame.decompress(data))
        if not frame.eof:
            raise _truncated("zstd")
        data = frame.unused_data
    return b"".join(out)
