"""The packed-message format (mqlogging.packing) and its endpoint options, without a broker."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

from mqlogging._types import Message
from mqlogging.backends import Endpoint
from mqlogging.errors import ConfigurationError, UnpackError
from mqlogging.packing import (
    COUNT_HEADER,
    ENCODING_HEADER,
    FIRST_HEADER,
    LAST_HEADER,
    Packer,
    PackOptions,
    is_packed,
    unpack,
)


def _messages(n: int, size: int = 50) -> list[Message]:
    return [Message(f"id-{i}", json.dumps({"i": i, "pad": "x" * size}).encode()) for i in range(n)]


class TestPacker:
    @pytest.mark.parametrize("compress", [None, "gzip", "zstd"])
    def test_round_trip_keeps_every_record_in_order(self, compress: str | None) -> None:
        """Packing then unpacking gives back every record body, in order, whatever the
        compression; headers carry the count and the first and last ids."""
        messages = _messages(450)
        packs = Packer(PackOptions(200, 1 << 20, compress)).pack(messages)  # type: ignore[arg-type]
        assert [p.count for p in packs] == [200, 200, 50]
        out: list[bytes] = []
        for pack in packs:
            headers = {"content-type": "application/x-ndjson", **pack.headers}
            assert is_packed(headers)
            assert (compress is not None) == (ENCODING_HEADER in headers)
            assert messages[pack.first].id == pack.id == headers[FIRST_HEADER]
            assert messages[pack.first + pack.count - 1].id == headers[LAST_HEADER]
            out.extend(unpack(pack.body, headers, 1 << 24))
        assert [m.body for m in messages] == out

    def test_cut_by_bytes_and_a_large_record_travels_alone(self) -> None:
        """``max_bytes`` bounds the uncompressed body of a packed message; a record larger
        than that is not refused, it travels in a message of its own."""
        messages = [*_messages(30, size=100), Message("big", b'{"x":"' + b"y" * 5000 + b'"}')]
        packs = Packer(PackOptions(10_000, 1024, None)).pack(messages)
        assert all(len(p.body) <= 1024 for p in packs[:-1])
        assert packs[-1].count == 1
        assert packs[-1].id == "big"
        assert sum(p.count for p in packs) == 31


def _zstd(data: bytes) -> bytes:
    zstandard = pytest.importorskip("zstandard")
    return bytes(zstandard.ZstdCompressor().compress(data))


class TestUnpackConcatenated:
    """A compressed body may be several gzip members or zstd frames in a row (``cat a.gz
    b.gz``, a streaming compressor flushing frames): every one of them is records."""

    @pytest.mark.parametrize("count", [None, "3"])
    @pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("zstd", _zstd)])
    def test_every_member_is_read(self, encoding: str, compress: Any, count: str | None) -> None:
        """All records of all members come out, with or without a count header (without
        one, a reader that stops after the first member loses the rest silently)."""
        body = compress(b'{"a":1}\n{"a":2}\n') + compress(b'{"a":3}')
        headers = {"content-type": "application/x-ndjson", ENCODING_HEADER: encoding}
        if count is not None:
            headers[COUNT_HEADER] = count
        assert unpack(body, headers, 1 << 20) == [b'{"a":1}', b'{"a":2}', b'{"a":3}']

    @pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("zstd", _zstd)])
    def test_limit_counts_every_member(self, encoding: str, compress: Any) -> None:
        """The zip-bomb limit bounds the sum of the members, not each one."""
        member = compress(b"0" * (600 << 10))
        headers = {ENCODING_HEADER: encoding}
        with pytest.raises(UnpackError, match="more than the limit"):
            unpack(member + member, headers, 1 << 20)

    @pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("zstd", _zstd)])
    def test_truncated_or_trailing_garbage_refused(self, encoding: str, compress: Any) -> None:
        """A stream cut short (also a zstd one, whose reader returns what it has without a
        word) or followed by bytes that are not a member is refused, never half read."""
        full = compress(b"".join(b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * 99) for i in range(3000)))
        headers = {ENCODING_HEADER: encoding}
        for body in (b"", full[: len(full) // 2], full[:-3], full + b"garbage!"):
            with pytest.raises(UnpackError):
                unpack(body, headers, 1 << 22)


class TestUnpackRefuses:
    def test_zip_bomb_refused_at_the_limit(self) -> None:
        """A gzip body that inflates beyond the reader's limit is refused without being
        inflated whole (the limit bounds the memory it costs)."""
        bomb = gzip.compress(b"0" * (32 << 20))
        headers = {"content-type": "application/x-ndjson", ENCODING_HEADER: "gzip"}
        with pytest.raises(UnpackError, match="more than the limit"):
            unpack(bomb, headers, 1 << 20)

    @pytest.mark.parametrize(
        ("body", "headers", "match"),
        [
            (b"not gzip", {ENCODING_HEADER: "gzip"}, "not valid gzip"),
            (b"x", {ENCODING_HEADER: "lz4"}, "unknown content-encoding"),
            (b'{"a":1}\n{"a":2}', {COUNT_HEADER: "3"}, "holds 2 records"),
            (gzip.compress(b'{"a":1}')[:-6], {ENCODING_HEADER: "gzip"}, "truncated"),
        ],
    )
    def test_corrupt_messages_refused(
        self, body: bytes, headers: dict[str, str], match: str
    ) -> None:
        """Corrupt or unknown compression and a count that disagrees are UnpackErrors."""
        with pytest.raises(UnpackError, match=match):
            unpack(body, {"content-type": "application/x-ndjson", **headers}, 1 << 20)

    def test_single_record_messages_are_not_packed(self) -> None:
        """A plain ``application/json`` message (the default) is not taken for a packed one."""
        assert not is_packed({"content-type": "application/json", "mqlogging-id": "x"})


class TestOptions:
    @pytest.mark.parametrize(
        ("query", "match"),
        [
            ("pack=0", "pack=.0. is not valid"),
            ("pack=200&compress=lz4", "compress=.lz4. is not valid .must be one of gzip, zstd"),
            ("compress=gzip", "compress=gzip needs packed messages"),
            ("pack_bytes=100", "pack_bytes must be from 1KiB"),
            ("pack_bytes=1GiB", "pack_bytes must be from 1KiB to 16MiB"),
        ],
    )
    @pytest.mark.parametrize("base", ["amqp://h/", "stomp://h/queue/logs"])
    def test_bad_options_are_one_line_errors(self, base: str, query: str, match: str) -> None:
        """Bad packing options are refused at configuration, in one line naming the option."""
        with pytest.raises(ConfigurationError, match=match) as info:
            Endpoint.from_url(f"{base}?{query}")
        assert "\n" not in str(info.value)

    def test_pack_options(self) -> None:
        """``pack`` alone packs within 256 KiB; ``pack_bytes`` alone packs by size only; no
        option means one record per message (the default)."""
        assert Endpoint.from_url("amqp://h/").pack_options() is None
        opts = Endpoint.from_url("amqp://h/?pack=200&compress=zstd").pack_options()
        assert PackOptions(200, 256 * 1024, "zstd") == opts
        opts = Endpoint.from_url("stomp://h/queue/q?pack_bytes=64KiB").pack_options()
        assert opts is not None
        assert opts.max_bytes == 64 * 1024

    def test_other_transports_do_not_take_packing_options(self) -> None:
        """``local://`` (a spool: one record per line already) refuses ``pack``."""
        with pytest.raises(ConfigurationError, match="unknown option 'pack'"):
            Endpoint.from_url("local:///tmp/x?pack=10")
