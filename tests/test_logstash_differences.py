"""Each documented difference of the ``logstash`` schema from the real logstash-formatter V1.

``_LogstashSchema``'s docstring lists them (issue #11, defect 20); every one is shown here
against ``logstash_formatter.LogstashFormatterV1`` itself, for both encoders, so the list
cannot drift from the code. Equal output for ordinary values is tested in test_formatting.py.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
from typing import Any

import pytest
from logstash_formatter import LogstashFormatterV1

from mqlogging.formatting import JsonFormatter

LOGGER = logging.getLogger("tests.logstash_differences")


class Colour(enum.Enum):
    RED = 1


@dataclasses.dataclass
class Point:
    x: int


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")


def _record(value: Any = None, msg: Any = "m %s", args: Any = ("a",)) -> logging.LogRecord:
    extra = None if value is None else {"value": value}
    return LOGGER.makeRecord(LOGGER.name, logging.INFO, "f.py", 1, msg, args, None, None, extra)


def _refuse(name: str) -> Any:
    """``parse_constant`` of a strict parser: NaN and Infinity are not JSON."""
    raise ValueError(name)


def _v1(record: logging.LogRecord) -> dict[str, Any]:
    """V1's document, parsed leniently (V1 may write NaN, which is not JSON)."""
    doc: dict[str, Any] = json.loads(LogstashFormatterV1().format(record))
    return doc


def _ours(record: logging.LogRecord, encoder: str) -> dict[str, Any]:
    """Our document, parsed strictly (NaN and Infinity refused)."""
    body = JsonFormatter(schema="logstash", encoder=encoder).format_message(record).body
    doc: dict[str, Any] = json.loads(body, parse_constant=_refuse)
    return doc


ENCODERS = ["orjson", "json"]

# value -> (what V1 writes for it, what we write)
VALUES: dict[str, tuple[Any, Any, Any]] = {
    "bytes": (b"\x00\xffab", "b'\\x00\\xffab'", "AP9hYg=="),
    "bytearray": (bytearray(b"ab"), "bytearray(b'ab')", "YWI="),
    "set": ({1}, "{1}", [1]),
    "frozenset": (frozenset({"a"}), "frozenset({'a'})", ["a"]),
    "enum": (Colour.RED, "Colour.RED", 1),
    "dataclass": (Point(1), "Point(x=1)", {"x": 1}),
    "lone surrogate": ("a\ud800b", "a\ud800b", "a?b"),
}


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("case", list(VALUES))
def test_values_v1_writes_as_repr_or_out_of_range(case: str, encoder: str) -> None:
    """bytes as base64, sets as lists, enums as their value, dataclasses as objects, lone
    surrogates replaced: V1 writes something else."""
    value, theirs, ours = VALUES[case]
    record = _record(value)
    assert theirs == _v1(record)["value"]
    assert ours == _ours(record, encoder)["value"]


@pytest.mark.parametrize("encoder", ENCODERS)
def test_integers_beyond_64_bits(encoder: str) -> None:
    """With orjson, integers outside -2**63 .. 2**64 - 1 are decimal strings (orjson cannot
    write them); the json encoder writes numbers, as V1 does. Inside the range: numbers."""
    for value in (2**64, -(2**63) - 1):
        record = _record(value)
        assert value == _v1(record)["value"]
        assert (str(value) if encoder == "orjson" else value) == _ours(record, encoder)["value"]
    for value in (2**64 - 1, -(2**63)):
        record = _record(value)
        assert value == _v1(record)["value"] == _ours(record, encoder)["value"]


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_null_not_invalid_json(value: float, encoder: str) -> None:
    """V1 writes NaN/Infinity (not JSON); we write null, so the document stays valid."""
    record = _record(value)
    with pytest.raises(ValueError, match=r"NaN|Infinity"):
        json.loads(LogstashFormatterV1().format(record), parse_constant=_refuse)
    assert _ours(record, encoder)["value"] is None


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize(
    ("case", "value", "ours"),
    [
        ("tuple key", {(1, 2): "a"}, {"(1, 2)": "a"}),
        ("unprintable", Unprintable(), None),
    ],
)
def test_values_v1_cannot_encode_at_all(case: str, value: Any, ours: Any, encoder: str) -> None:
    """A tuple dict key or an object whose str() raises makes V1 raise (the record is lost);
    we stringify the key and show a placeholder for the object."""
    record = _record(value)
    with pytest.raises((TypeError, RuntimeError)):
        LogstashFormatterV1().format(record)
    got = _ours(record, encoder)["value"]
    if ours is None:
        assert isinstance(got, str)
        assert "Unprintable" in got or "could_not_encode" in got
    else:
        assert ours == got


@pytest.mark.parametrize("encoder", ENCODERS)
def test_preformatted_record_has_no_msg_and_a_fresh_message(encoder: str) -> None:
    """After another formatter set ``record.message`` (and args changed since), V1 keeps the
    raw ``msg`` template and the stale ``message``; we render ``message`` afresh, no ``msg``."""
    record = _record(msg="hello %s", args=("x",))
    logging.Formatter().format(record)  # e.g. a console handler ran first
    record.args = ("y",)
    theirs, ours = _v1(record), _ours(record, encoder)
    assert (theirs["msg"], theirs["message"]) == ("hello %s", "hello x")
    assert "msg" not in ours
    assert ours["message"] == "hello y"


@pytest.mark.parametrize("encoder", ENCODERS)
def test_user_fields_named_like_ours_go_under_extra(encoder: str) -> None:
    """A user field named like a field the formatter writes (a record attribute such as
    ``name`` or ``levelname``, the header ``source_host``/``@version``, the message) replaces
    it in V1; here it goes under ``extra`` and ours stays: from a dict message, from an
    ``extra=`` field, and from static fields (V1's defaults, which V1 silently drops)."""
    dict_message = {"message": "m", "name": "user name", "levelname": "LOUD", "lineno": "x"}
    record = _record(msg=dict_message, args=None)
    theirs, ours = _v1(record), _ours(record, encoder)
    assert (theirs["name"], theirs["levelname"], theirs["lineno"]) == ("user name", "LOUD", "x")
    assert (ours["name"], ours["levelname"], ours["lineno"]) == (LOGGER.name, "INFO", 1)
    assert ours["extra"] == {"name": "user name", "levelname": "LOUD", "lineno": "x"}
    assert ours["message"] == theirs["message"] == "m"

    record = LOGGER.makeRecord(
        LOGGER.name, logging.INFO, "f.py", 1, "m", (), None, None,
        {"source_host": "spoofed", "@version": 2},
    )  # fmt: skip
    theirs, ours = _v1(record), _ours(record, encoder)
    assert (theirs["source_host"], theirs["@version"]) == ("spoofed", 2)
    assert ours["@version"] == 1
    assert ours["source_host"] != "spoofed"
    assert ours["extra"] == {"source_host": "spoofed", "@version": 2}

    static = {"name": "static name", "message": "static message", "site": "CERN"}
    body = JsonFormatter(schema="logstash", encoder=encoder, static_fields=static).format(
        _record(msg="m", args=())
    )
    theirs = json.loads(LogstashFormatterV1(fmt=json.dumps({"extra": static})).format(_record()))
    ours = json.loads(body)
    assert (theirs["name"], theirs["site"]) == (LOGGER.name, "CERN")  # V1: "static name" lost
    assert (ours["name"], ours["message"], ours["site"]) == (LOGGER.name, "m", "CERN")
    assert ours["extra"] == {"name": "static name", "message": "static message"}
