"""The collector's retry bookkeeping, kept per batch rather than per record (issue #13): the
attempts counted for ``max_attempts``, the Retry-After a store asked for, and what the sinks
receive (the pipeline's own per-record object, a :class:`Record`).

A scripted sink (registered like any sink type) answers from a table, over a ``local://``
source filled through the handler: no broker is needed for the pipeline's decisions.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from harness.collector import log_through_handler
from harness.helpers import wait_until
from mqlogging.collector._table import FromTable
from mqlogging.collector.service import CollectorService
from mqlogging.collector.sinks import SINK_TYPES, Outcome, Record, Result, Sink

Make = Callable[..., CollectorService]
Script = Callable[[int, Record], Result]
"""(attempt number of this sink, from 1; the record) -> the sink's answer for it."""

_SCRIPTS: dict[str, Script] = {}


@dataclass(frozen=True, slots=True, kw_only=True)
class ScriptedSinkConfig(FromTable):
    """A sink answering what ``_SCRIPTS[name]`` says."""

    type: Literal["scripted"] = "scripted"
    name: str = ""

    @property
    def label(self) -> str:
        return self.name

    def build(self, metrics: Any = None) -> Sink:
        return ScriptedSink(self.name)


class ScriptedSink(Sink):
    """Answers per record from its script; keeps every call (time, records) it was given."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.script = _SCRIPTS[name]
        self.calls: list[tuple[float, list[Record]]] = []
        self.lock = threading.Lock()

    def write(self, records: Sequence[Record]) -> list[Result]:
        with self.lock:
            self.calls.append((time.monotonic(), list(records)))
            attempt = len(self.calls)
        return [self.script(attempt, r) for r in records]


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, Script], dict[str, str]]:
    """``scripted(name, script)``: registers the script; returns the ``[[sinks]]`` table."""
    monkeypatch.setitem(SINK_TYPES, "scripted", ScriptedSinkConfig.from_table)

    def add(name: str, script: Script) -> dict[str, str]:
        monkeypatch.setitem(_SCRIPTS, name, script)
        return {"type": "scripted", "name": name}

    return add


def _dead_letters(directory: Path) -> list[dict[str, Any]]:
    out = []
    for segment in sorted(directory.rglob("*")):
        if segment.is_file() and segment.suffix in (".jsonl", ".open"):
            out.extend(json.loads(line) for line in segment.read_bytes().splitlines() if line)
    return out


def _source(tmp_path: Path, count: int) -> dict[str, str]:
    url = f"local://{tmp_path / 'spool'}"
    log_through_handler(url, count, "collector.test_retry_bookkeeping")
    return {"url": url}


def _sink(svc: CollectorService, name: str) -> ScriptedSink:
    sink = next(s for s in svc.sinks if s.name == name)
    assert isinstance(sink, ScriptedSink)
    return sink


def test_sinks_get_records_with_their_ids_and_documents(
    tmp_path: Path, service: Make, scripted: Callable[[str, Script], dict[str, str]]
) -> None:
    """What a sink is given is a :class:`Record` per message, with the record's id, its
    (enriched) document and its size; all are acked once the sink took them."""
    sink_table = scripted("ok", lambda attempt, record: Result(Outcome.DONE, "ok"))
    svc = service(sources=[_source(tmp_path, 50)], sinks=[sink_table])
    wait_until(lambda: svc.metrics.value("acked") == 50, timeout=30)
    records = [r for _, batch in _sink(svc, "ok").calls for r in batch]
    assert len(records) == 50
    assert all(isinstance(r, Record) for r in records)
    assert list(range(50)) == sorted(r.doc["seq"] for r in records)
    assert all(r.id == r.doc["event"]["id"] and "ingested" in r.doc["event"] for r in records)
    assert all(r.size > 0 and json.loads(r.encoded()) == r.doc for r in records)


def test_max_attempts_counts_each_round_of_a_batch(
    tmp_path: Path, service: Make, scripted: Callable[[str, Script], dict[str, str]]
) -> None:
    """A record a sink keeps answering RETRY for is written ``max_attempts`` times, then
    dead-lettered with "gave up after N attempts" and the sink's reason; the records the sink
    took in the same batch are written once."""

    def busy_for_odd(attempt: int, record: Record) -> Result:
        if record.doc["seq"] % 2:
            return Result(Outcome.RETRY, "503", "busy")
        return Result(Outcome.DONE, "ok")

    dead = tmp_path / "dead"
    svc = service(
        sources=[_source(tmp_path, 10)],
        sinks=[scripted("flaky", busy_for_odd)],
        pipeline={"batch_max_wait": 0.2, "retry_initial": 0.01, "retry_max": 0.05,
                  "max_attempts": 3},
        dead_letter={"url": f"local://{dead}"},
    )  # fmt: skip
    wait_until(lambda: svc.metrics.value("acked") == 10, timeout=30)
    written = [r.doc["seq"] for _, batch in _sink(svc, "flaky").calls for r in batch]
    assert {seq: (3 if seq % 2 else 1) for seq in range(10)} == {
        seq: written.count(seq) for seq in range(10)
    }
    letters = _dead_letters(dead)
    assert 5 == len(letters) == svc.metrics.value("dead_lettered")
    assert all("gave up after 3 attempts: flaky: busy" in json.dumps(x) for x in letters)


def test_retry_after_is_waited_for(
    tmp_path: Path, service: Make, scripted: Callable[[str, Script], dict[str, str]]
) -> None:
    """A store's Retry-After is honoured: the retry comes no sooner than it asked, even when
    the backoff alone would retry at once."""
    asked = 0.6

    def throttled_once(attempt: int, record: Record) -> Result:
        if attempt == 1:
            return Result(Outcome.RETRY, "429", "slow down", retry_after=asked)
        return Result(Outcome.DONE, "ok")

    svc = service(
        sources=[_source(tmp_path, 5)],
        sinks=[scripted("throttled", throttled_once)],
        pipeline={"batch_max_wait": 0.2, "retry_initial": 0.01, "retry_max": 0.02},
    )
    wait_until(lambda: svc.metrics.value("acked") == 5, timeout=30)
    calls = _sink(svc, "throttled").calls
    assert calls[1][0] - calls[0][0] >= asked


def test_retry_after_of_a_dead_lettered_record_does_not_hold_up_the_rest(
    tmp_path: Path, service: Make, scripted: Callable[[str, Script], dict[str, str]]
) -> None:
    """A Retry-After asked for a record another sink rejected (dead-lettered, so settled) is
    not waited for: the batch's other records are retried at the backoff's pace."""

    def throttle_first(attempt: int, record: Record) -> Result:
        if attempt == 1 and record.doc["seq"] == 0:
            return Result(Outcome.RETRY, "429", "slow down", retry_after=300.0)
        if attempt == 1:
            return Result(Outcome.RETRY, "503", "busy")
        return Result(Outcome.DONE, "ok")

    def reject_first(attempt: int, record: Record) -> Result:
        if record.doc["seq"] == 0:
            return Result(Outcome.REJECT, "400", "bad document")
        return Result(Outcome.DONE, "ok")

    dead = tmp_path / "dead"
    svc = service(
        sources=[_source(tmp_path, 5)],
        sinks=[scripted("a", throttle_first), scripted("b", reject_first)],
        pipeline={"batch_max_wait": 0.2, "retry_initial": 0.01, "retry_max": 0.05},
        dead_letter={"url": f"local://{dead}"},
    )
    wait_until(lambda: svc.metrics.value("acked") == 5, timeout=30)  # not 300 s
    [letter] = _dead_letters(dead)
    assert "b: bad document" in json.dumps(letter)
