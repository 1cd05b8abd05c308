"""A record the formatter cannot format still ships: as the formatter's fallback record, with
its own sequence number, counted in ``stats()["format_errors"]`` and said once on stderr (not
a traceback per record). One that cannot even be made a fallback is dropped, counted and
announced by a marker, so ``mqlogging audit`` explains its number.

Records are counted end to end through the ``local`` transport (a spool directory as the
queue: real files, read back with its consumer) and audited from what arrived.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mqlogging import JsonFormatter, MQHandler
from mqlogging.backends.local import LocalConsumer
from mqlogging.cli import main
from mqlogging.structlog import MQLogger
from mqlogging.wire import FORMAT_ERROR, NAMESPACE, read_meta


class Unprintable:
    """A value whose ``str`` and ``repr`` both raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def _set(name: str, value: Any) -> Callable[[logging.LogRecord], bool]:
    """A filter that breaks one attribute of the record, as a buggy filter or factory does."""

    def breaks(record: logging.LogRecord) -> bool:
        setattr(record, name, value)
        return True

    return breaks


# name: (filter breaking the record or None, message, extra)
CASES: dict[str, tuple[Any, Any, dict[str, Any] | None]] = {
    "list levelname": (_set("levelname", ["x"]), "levelname %s", None),
    "infinite created": (_set("created", math.inf), "inf %s", None),
    "NaN created": (_set("created", math.nan), "nan %s", None),
    "unprintable msg": (None, Unprintable(), None),
    "unprintable extra": (None, "extra %s", {"bad": Unprintable()}),
    "list logger name": (_set("name", ["app"]), "name %s", None),
}
# The errors of the records each schema cannot format (the others write a list levelname as a
# plain field: only ECS looks it up), in order; every other case formats as usual.
FORMAT_ERRORS = {
    "ecs": ["TypeError", "OverflowError", "ValueError"],
    "logstash": ["OverflowError", "ValueError"],
    "flat": ["OverflowError", "ValueError"],
    "otel": ["OverflowError", "ValueError"],
}


@pytest.fixture
def app_logger() -> logging.Logger:
    """A logger outside logging's hierarchy: only the handler under test sees its records
    (pytest's capture handlers would raise on the unprintable ones)."""
    logger = logging.Logger("app.format_errors", logging.DEBUG)
    logger.propagate = False
    return logger


def _read_all(url: str) -> list[dict[str, Any]]:
    """Every record the ``local`` queue holds, in order (consumed and committed)."""
    consumer = LocalConsumer(url)
    docs: list[dict[str, Any]] = []
    try:
        while batch := consumer.fetch(1000, 0.2):
            docs.extend(json.loads(d.body) for d in batch)
            consumer.ack(batch)
    finally:
        consumer.close()
    return docs


def _audit(capsys: pytest.CaptureFixture[str], path: Path, docs: list[dict[str, Any]]) -> Any:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    capsys.readouterr()
    code = main(["audit", "--file", str(path), "--json"])
    return code, json.loads(capsys.readouterr().out)


def _log_cases(logger: logging.Logger, handler: MQHandler) -> None:
    """A good record, then each case, each followed by a good record."""
    logger.info("good %s", "first")
    for name, (breaks, msg, extra) in CASES.items():
        if breaks is not None:
            handler.addFilter(breaks)
        logger.info(msg, name, extra=extra) if isinstance(msg, str) else logger.info(msg)
        if breaks is not None:
            handler.removeFilter(breaks)
        logger.info("good after %s", name)


@pytest.mark.parametrize("schema", ["ecs", "logstash", "flat", "otel"])
def test_broken_records_arrive_in_sequence(
    schema: str,
    app_logger: logging.Logger,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every case arrives with its own seq, no gap, in every schema: the broken ones as
    fallback records (id, time, level, logger, message, ``mqlogging.format_error``), counted
    in ``format_errors``; one complaint on stderr, no traceback; audit finds nothing missing."""
    url = f"local://{tmp_path / 'queue'}"
    handler = MQHandler(url, schema=schema, spool=False)
    app_logger.addHandler(handler)
    _log_cases(app_logger, handler)
    assert handler.flush(10)
    stats = handler.stats()
    handler.close()
    err = capsys.readouterr().err
    docs = _read_all(url)

    expected = 1 + 2 * len(CASES)
    assert [read_meta(d).seq for d in docs] == list(range(1, expected + 1))
    fallbacks = [d for d in docs if FORMAT_ERROR in d[NAMESPACE]]
    assert len(fallbacks) == len(FORMAT_ERRORS[schema]) == stats["format_errors"]
    assert stats["dropped"] == {}
    for doc in fallbacks:
        meta = read_meta(doc)
        assert (meta.schema, meta.producer) == (schema, handler.producer)
        assert meta.id
        assert meta.timestamp
        assert set(doc[NAMESPACE][FORMAT_ERROR]) == {"type", "message"}
    assert [d[NAMESPACE][FORMAT_ERROR]["type"] for d in fallbacks] == FORMAT_ERRORS[schema]
    assert "Traceback" not in err
    assert "Logging error" not in err
    assert err.count("cannot format a record") == 1  # once per 30 s, not once per record
    code, report = _audit(capsys, tmp_path / "sink.jsonl", docs)
    assert code == 0
    assert report["producers"][0]["gaps"] == []


def test_fallback_fields_in_ecs(app_logger: logging.Logger, tmp_path: Path) -> None:
    """The ECS fallback: the level from ``levelno`` when ``levelname`` is unusable, the logger
    name, the rendered message, the record's own time when it is usable and now when it is
    not; the application's ``error.*`` fields stay unused."""
    url = f"local://{tmp_path / 'queue'}"
    handler = MQHandler(url, spool=False)
    app_logger.addHandler(handler)
    handler.addFilter(_set("levelname", ["x"]))
    app_logger.warning("disk %d%% full", 93)
    handler.filters.clear()
    handler.addFilter(_set("created", math.inf))
    app_logger.error("no time")
    assert handler.flush(10)
    handler.close()
    first, second = _read_all(url)
    assert first["message"] == "disk 93% full"
    assert first["log"] == {"level": "warning", "logger": app_logger.name}
    assert "error" not in first
    assert first[NAMESPACE][FORMAT_ERROR] == {
        "type": "TypeError",
        "message": "unhashable type: 'list'",
    }
    assert second["log"]["level"] == "error"
    assert second[NAMESPACE][FORMAT_ERROR]["type"] == "OverflowError"
    # The first kept its own (finite) time, the second got the time it was formatted at.
    assert first["@timestamp"] <= second["@timestamp"]


class Unformattable(JsonFormatter):
    """A formatter that fails on a marked record, fallback included (cannot happen with ours:
    the guard behind the fallback)."""

    def format_message(self, record: logging.LogRecord, stamp: Any = None) -> Any:
        if getattr(record, "poison", False):
            raise TypeError("cannot format")
        return super().format_message(record, stamp)

    def fallback_message(self, record: logging.LogRecord, stamp: Any, error: Any) -> Any:
        raise RuntimeError("no fallback either")


def test_a_record_without_even_a_fallback_is_announced(
    app_logger: logging.Logger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """If even the fallback cannot be made, the record is dropped as ``unformattable``,
    counted, and its seq announced by a marker: audit explains the gap (exit 0)."""
    url = f"local://{tmp_path / 'queue'}"
    handler = MQHandler(url, spool=False)
    handler.setFormatter(Unformattable())
    app_logger.addHandler(handler)
    for i in range(20):
        app_logger.info("record %d", i, extra={"poison": i in (3, 4, 11)})
    assert handler.flush(10)
    stats = handler.stats()
    handler.close()
    err = capsys.readouterr().err
    docs = _read_all(url)
    assert stats["dropped"] == {"unformattable": 3}
    assert stats["format_errors"] == 3
    announced = {
        s
        for d in docs
        for r in d[NAMESPACE].get("dropped", [])
        for s in range(r["first"], r["last"] + 1)
    }
    assert announced == {4, 5, 12}
    assert "Traceback" not in err
    code, report = _audit(capsys, tmp_path / "sink.jsonl", docs)
    assert code == 0
    assert report["producers"][0]["dropped"] == 3


def test_structlog_records_share_the_fallback(tmp_path: Path) -> None:
    """structlog's :class:`MQLogger` goes through the handler's path: a record a filter broke
    ships as a fallback with its seq (the event as message) and is counted."""
    url = f"local://{tmp_path / 'queue'}"
    handler = MQHandler(url, spool=False)
    try:
        log = MQLogger(handler, "api")
        log.info(event="before")
        handler.addFilter(_set("created", math.nan))
        log.info(event="query done", rows=3)
        handler.filters.clear()
        log.info(event="after")
        assert handler.flush(10)
        assert handler.stats()["format_errors"] == 1
    finally:
        handler.close()
    docs = _read_all(url)
    assert [read_meta(d).seq for d in docs] == [1, 2, 3]
    assert docs[1]["message"] == "query done"
    assert docs[1][NAMESPACE][FORMAT_ERROR]["type"] == "ValueError"
