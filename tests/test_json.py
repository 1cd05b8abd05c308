"""The package's one orjson-or-json choice (``mqlogging._json``): both encoders agree, and the
decode errors it names cover every way a body can fail to parse."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from mqlogging import _json


class TestDecode:
    @pytest.mark.parametrize(
        "body",
        [b"{", b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000, b"", b"nul"],
        ids=["truncated", "invalid-utf8", "too-deep", "empty", "bad-literal"],
    )
    def test_every_failure_is_a_decode_error(self, body: bytes) -> None:
        """Truncated, non-UTF-8, absurdly nested or empty bodies raise one of DECODE_ERRORS,
        so a caller catching that tuple never lets a poison message escape."""
        with pytest.raises(_json.DECODE_ERRORS):
            _json.loads(body)

    def test_loads_reads_bytes_and_text(self) -> None:
        """Bytes and str bodies give the same value."""
        assert _json.loads(b'{"a":[1,"\xc3\xa9"]}') == _json.loads('{"a":[1,"é"]}')


class TestEncode:
    def test_dumps_is_compact_utf8_and_stringifies_the_unknown(self) -> None:
        """dumps writes compact UTF-8 (not \\u escapes) and str() of what JSON cannot hold."""
        value = {"a": [1, "é"], "when": object.__new__(_Odd)}
        assert _json.dumps(value) == '{"a":[1,"é"],"when":"odd"}'.encode()

    @pytest.mark.parametrize("use_orjson", [True, False] if _json.HAVE_ORJSON else [False])
    def test_strict_encoders_agree_and_refuse_invalid_json(self, use_orjson: bool) -> None:
        """Both strict encoders write the same bytes as the stdlib's compact form for plain
        documents, call ``default`` for other types, raise on cycles and never write the
        invalid literal ``NaN`` (json raises, orjson writes null)."""
        encode = _json.strict_encoder(lambda obj: f"<{obj}>", use_orjson=use_orjson)
        doc: dict[str, Any] = {"message": "é\u2028x", "n": [1, 2.5, None, True], "o": _Odd()}
        expected = json.dumps(
            {**doc, "o": "<odd>"}, separators=(",", ":"), ensure_ascii=False
        ).encode()
        assert encode(doc) == expected
        cycle: list[Any] = []
        cycle.append(cycle)
        with pytest.raises((TypeError, ValueError, RecursionError)):
            encode(cycle)
        try:
            assert encode({"x": math.nan}) == b'{"x":null}'
        except ValueError:
            assert not use_orjson


class _Odd:
    def __str__(self) -> str:
        return "odd"


def test_without_orjson_a_line_is_json_only_if_it_is_utf8_json() -> None:
    """With orjson missing (the stdlib fallback), a spool line is a record under the same rule
    as with it: a UTF-16 encoded document, which the stdlib would sniff and accept, is
    corrupt; and ``null`` followed by a non-JSON whitespace byte is not the value ``null``."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['orjson'] = None\n"
        "from mqlogging import _json, wire\n"
        "from mqlogging.spool import format as fmt\n"
        "assert not _json.HAVE_ORJSON\n"
        "assert wire.decode('{\"a\": 1}'.encode('utf-16')) is None\n"
        "assert not fmt.is_json_line('{\"a\": 1}'.encode('utf-16'))\n"
        "assert fmt.is_json_line(b'{\"a\": 1}') and fmt.is_json_line(b' null\\r')\n"
        "assert not fmt.is_json_line(b'null\\x0b')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.skipif(not _json.HAVE_ORJSON, reason="the json fallback's bytes are exact anyway")
@pytest.mark.parametrize("encoder", ["dumps", "strict_encoder"])
def test_encoded_bodies_hold_about_their_own_size(encoder: str) -> None:
    """Bodies kept in memory (the handler's queue, the ingest's waiting records, the
    collector's batches) cost about their length: orjson 3.13 returns bytes whose allocation
    is 4 KiB or more whatever their length, so 100-byte records held ~40 times their bytes
    and every bound counted in body bytes was off by that much (an 8 MiB ingest body of tiny
    records took gigabytes)."""
    import tracemalloc

    dumps = _json.dumps if encoder == "dumps" else _json.strict_encoder(str, use_orjson=True)
    docs = [{"message": "x" * 60, "n": i} for i in range(2000)]
    tracemalloc.start()
    try:
        bodies = [dumps(doc) for doc in docs]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 2 * sum(len(b) + 40 for b in bodies) + 64 * 1024
