"""``JsonFormatter.fallback_message``: the minimal record shipped for a record the formatter
cannot format. Valid for its schema (read back by :func:`mqlogging.wire.read_meta` like any
record), the same whichever path (``ecs``'s plain fast path or the dict path) failed, within
``max_bytes``, and never raising whatever the record holds."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import pytest

from mqlogging.formatting import SCHEMAS, JsonFormatter
from mqlogging.wire import FORMAT_ERROR, NAMESPACE, read_meta

STAMP = {"producer": "host:1:abcd", "seq": 7}


class DictPath(JsonFormatter):
    """An overridden python-json-logger hook: always the dict path (the plain path's
    reference, as in tests/test_formatting_plain.py)."""

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def record(**broken: Any) -> logging.LogRecord:
    rec = logging.LogRecord("app.db", logging.WARNING, "/srv/db.py", 3, "took %d ms", (5,), None)
    rec.__dict__.update(broken)
    return rec


BROKEN = {
    "list levelname": {"levelname": ["x"]},
    "infinite created": {"created": math.inf},
    "NaN created": {"created": math.nan},
    "string created": {"created": "yesterday"},
}
# Formatted as usual (a 5-digit year), yet no time of an ISO date: a fallback takes now.
ODD = {**BROKEN, "year 10000": {"created": 253402300800.0}}


def _fallback(formatter: JsonFormatter, rec: logging.LogRecord) -> tuple[Any, Exception]:
    with pytest.raises((TypeError, ValueError, OverflowError)) as info:
        formatter.format_message(rec, STAMP)
    return formatter.fallback_message(rec, STAMP, info.value), info.value


@pytest.mark.parametrize("case", list(BROKEN))
def test_plain_and_dict_paths_give_the_same_fallback(case: str) -> None:
    """Whether the plain path or the dict path met the broken attribute, the fallback is the
    same bytes, with the id the record was given."""
    rec = record(**BROKEN[case])
    got, error = _fallback(JsonFormatter(), rec)
    expected, reference_error = _fallback(DictPath(), rec)
    assert type(error) is type(reference_error)
    assert json.loads(got.body)["@timestamp"][:16] == json.loads(expected.body)["@timestamp"][:16]
    if "created" not in BROKEN[case]:  # else "now", read twice
        assert got == expected
    assert got.id == rec.mqlogging_id


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("case", list(ODD))
def test_every_schema_gives_a_valid_record(schema: str, case: str) -> None:
    """Each schema's fallback reads back as one of its records: id, time, schema, producer
    and seq; the message rendered; the error under ``mqlogging.format_error``."""
    rec = record(**ODD[case])
    formatter = JsonFormatter(schema=schema)
    error = TypeError("broken")
    message = formatter.fallback_message(rec, STAMP, error)
    doc = json.loads(message.body)
    meta = read_meta(doc)
    assert (meta.id, meta.schema, meta.producer, meta.seq) == (message.id, schema, "host:1:abcd", 7)
    assert meta.timestamp is not None
    assert meta.timestamp[:2] in ("19", "20")
    assert "took 5 ms" in message.body.decode()
    assert doc[NAMESPACE][FORMAT_ERROR] == {"type": "TypeError", "message": "broken"}


def test_level_from_levelno_and_own_time_kept() -> None:
    """An unusable ``levelname`` gives way to ``levelno``'s name; a usable time is the
    record's own, exactly as the formatter writes it."""
    rec = record(levelname=["x"])
    doc = json.loads(JsonFormatter().fallback_message(rec, STAMP, TypeError("x")).body)
    assert doc["log"] == {"level": "warning", "logger": "app.db"}
    plain = json.loads(JsonFormatter().format_message(record(created=rec.created)).body)
    assert doc["@timestamp"] == plain["@timestamp"]
    otel = json.loads(JsonFormatter(schema="otel").fallback_message(rec, None, ValueError()).body)
    assert (otel["severityNumber"], otel["severityText"]) == (13, "WARNING")


def test_whatever_the_record_holds() -> None:
    """Nothing usable at all (a message whose ``str`` and ``repr`` raise, no level, a
    non-string name, an unprintable error) still gives a record."""
    rec = record(msg=Unprintable(), args=(), levelname=None, levelno="high", name=Unprintable())
    del rec.created

    class Error(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str")

    for schema in SCHEMAS:
        message = JsonFormatter(schema=schema).fallback_message(rec, STAMP, Error())
        meta = read_meta(json.loads(message.body))
        assert (meta.id, meta.seq) == (message.id, 7)


def test_within_max_bytes() -> None:
    """A fallback of a huge message is cut to ``max_bytes`` like any record, its namespace
    (seq, error) kept."""
    rec = record(msg="x" * 100_000, args=(), created=math.inf)
    for schema in SCHEMAS:
        message = JsonFormatter(schema=schema, max_bytes=2048).fallback_message(
            rec, STAMP, OverflowError("e" * 10_000)
        )
        assert len(message.body) <= 2048
        doc = json.loads(message.body)
        assert doc[NAMESPACE]["seq"] == 7
        assert doc[NAMESPACE][FORMAT_ERROR]["type"] == "OverflowError"


@pytest.mark.parametrize("case", list(BROKEN))
def test_format_for_any_handler_writes_the_fallback(case: str) -> None:
    """``format()``, what a stdlib handler calls (a ``StreamHandler`` to stdout), writes a
    broken record as its fallback line naming the error, instead of raising (the handler
    would print a traceback and write nothing)."""
    rec = record(**BROKEN[case])
    formatter = JsonFormatter(prefix="app: ")
    line = formatter.format(rec)
    assert line.startswith("app: ")
    doc = json.loads(line.removeprefix("app: "))
    assert "took 5 ms" in doc["message"]
    assert doc[NAMESPACE][FORMAT_ERROR]["type"] in ("TypeError", "ValueError", "OverflowError")
    assert doc["event"]["id"] == rec.mqlogging_id
