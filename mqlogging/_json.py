"""The package's one choice between orjson and the stdlib :mod:`json`.

orjson (``mqlogging[fast]``) is several times faster on millions of records; without it every
function here falls back to :mod:`json` with the same results for valid documents. Callers
import these names instead of repeating the ``try: import orjson`` dance, so the fallback and
its error classes are decided once. This module imports nothing from the package but
:mod:`mqlogging.errors` (which imports nothing).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, Final

from .errors import MissingDependencyError

try:
    import orjson
except ImportError:  # pragma: no cover - exercised only without the [fast] extra
    orjson = None  # type: ignore[assignment]

__all__ = ["DECODE_ERRORS", "HAVE_ORJSON", "dumps", "loads", "orjson", "strict_encoder"]

HAVE_ORJSON: Final = orjson is not None

# orjson.JSONDecodeError is a ValueError, and so is UnicodeDecodeError (json on invalid UTF-8);
# json raises RecursionError on documents nested deeper than the interpreter's stack.
DECODE_ERRORS: Final[tuple[type[Exception], ...]] = (ValueError, RecursionError)


def _loads_json(data: bytes | bytearray | str) -> Any:
    """The stdlib's ``json.loads``, but bytes must be UTF-8 as for orjson (``json`` would also
    take UTF-16 and UTF-32, so a line orjson counts as corrupt would be a record)."""
    if not isinstance(data, str):
        data = bytes(data).decode("utf-8")  # UnicodeDecodeError is a ValueError
    return json.loads(data)


loads: Callable[[bytes | bytearray | str], Any] = orjson.loads if HAVE_ORJSON else _loads_json
"""Parse JSON bytes or text; raises one of :data:`DECODE_ERRORS` on anything else."""


def _dumps_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def _compacted(encode: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """``encode`` whose result is copied into bytes of its exact size.

    orjson (3.13 measured) returns bytes whose allocation is at least 4 KiB and grows in 4 KiB
    steps whatever their length: a 100-byte record held in a queue cost ~4 KiB, so every
    bound counted in body bytes (handler queue, ingest, collector batches) was off by up to
    ~40 times. The copy costs ~0.2-0.5 us per document.
    """

    def encode_compact(obj: Any) -> bytes:
        return bytes(memoryview(encode(obj)))

    return encode_compact


dumps: Callable[[Any], bytes] = (
    _compacted(functools.partial(orjson.dumps, default=str)) if HAVE_ORJSON else _dumps_json
)
"""Compact UTF-8 JSON bytes; values JSON cannot encode are written as ``str(value)``."""


def strict_encoder(
    default: Callable[[Any], Any], *, use_orjson: bool, exact: bool = True
) -> Callable[[Any], bytes]:
    """A compact encoder that raises (TypeError, ValueError, RecursionError) instead of
    writing invalid JSON: no NaN, no cycle check on the fast path (a cycle ends in
    RecursionError), ``default`` for other types. For a caller with its own fallback.

    ``exact=False`` skips the copy that makes orjson's result exactly its size (see
    :func:`_compacted`): for parts that are joined into a larger bytes object at once.

    Raises:
        MissingDependencyError: ``use_orjson`` without orjson installed.
    """
    if use_orjson:
        if orjson is None:
            raise MissingDependencyError("orjson", "fast")
        dump = functools.partial(orjson.dumps, default=default)
        return _compacted(dump) if exact else dump
    encode = json.JSONEncoder(
        ensure_ascii=False,
        allow_nan=False,
        check_circular=False,
        separators=(",", ":"),
        default=default,
    ).encode

    def encode_json(obj: Any) -> bytes:
        return encode(obj).encode("utf-8")

    return encode_json
