"""Per-record cost of mqlogging's JsonFormatter against python-json-logger and logstash-formatter.

Run: ``.venv/bin/python -m benchmarks.bench_formatting [--rounds N] [--chunk N]``

Every contender formats the same kind of record (a %-style message with two arguments and two
``extra`` fields), each on freshly made records (our formatter stamps an id on the record, and
stdlib formatters cache text on it, so a record is never formatted twice). Contenders are timed
in interleaved rounds of ``chunk`` records; the reported cost is the best round, the ratio the
median of per-round ratios to the baseline (both timed in the same round), so a noisy neighbour
on a shared machine slows every contender alike rather than one of them; time is the thread's
CPU time, so time spent descheduled does not count. The baseline is
python-json-logger's stock ``JsonFormatter()`` (stdlib json), measured in the same run.

Goal (issue "Foundation", item 2): ``ecs`` formatting costs at most 1.5x the baseline.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson
from logstash_formatter import LogstashFormatterV1
from pythonjsonlogger.json import JsonFormatter as PjlJsonFormatter
from pythonjsonlogger.orjson import OrjsonFormatter as PjlOrjsonFormatter

from mqlogging.formatting import JsonFormatter

BASELINE = "python-json-logger JsonFormatter()"
# CPU time of this thread: time spent descheduled (other processes on a shared machine) does
# not count, which makes the figures far steadier than wall-clock time under load.
_clock = time.thread_time
GOAL_RATIO = 1.5
_LOGGER = logging.getLogger("bench.formatting")

# A 15-field document shaped like an ECS record, for the raw encoder rows.
DOC_15 = {
    "@timestamp": "2024-05-06T07:08:09.123456Z",
    "message": "user bob logged in from 10.0.0.1",
    "log.level": "info",
    "log.logger": "bench.formatting",
    "log.origin.file.name": "app.py",
    "log.origin.file.line": 42,
    "log.origin.function": "handler",
    "process.pid": 12345,
    "process.name": "MainProcess",
    "process.thread.id": 140578667387776,
    "process.thread.name": "MainThread",
    "host.hostname": "worker-17.example.org",
    "event.id": "018f4c2e-8b1a-7c3d-9e4f-0123456789ab",
    "user_id": 42,
    "request_id": "3f2b9c",
}


def make_record() -> logging.LogRecord:
    """The benchmark record: %-args message plus two extras, as a typical service logs."""
    return _LOGGER.makeRecord(
        _LOGGER.name,
        logging.INFO,
        "/srv/app/app.py",
        42,
        "user %s logged in from %s",
        ("bob", "10.0.0.1"),
        None,
        "handler",
        {"user_id": 42, "request_id": "3f2b9c"},
    )


def _record_loop(fmt: Callable[[logging.LogRecord], Any], chunk: int) -> float:
    records = [make_record() for _ in range(chunk)]
    start = _clock()
    for record in records:
        fmt(record)
    return _clock() - start


def _dict_loop(dumps: Callable[[Any], Any], chunk: int) -> float:
    doc = DOC_15
    start = _clock()
    for _ in range(chunk):
        dumps(doc)
    return _clock() - start


def measure(rounds: int = 40, chunk: int = 1000) -> dict[str, list[float]]:
    """Per-round cost in microseconds per record (or per dict) of every contender."""
    ecs = JsonFormatter()
    formatters: dict[str, Callable[[logging.LogRecord], Any]] = {
        BASELINE: PjlJsonFormatter().format,
        "python-json-logger OrjsonFormatter()": PjlOrjsonFormatter().format,
        "logstash_formatter LogstashFormatterV1()": LogstashFormatterV1().format,
        "mqlogging ecs format_message()": ecs.format_message,
        "mqlogging ecs format()": ecs.format,
        "mqlogging ecs, stdlib json encoder": JsonFormatter(encoder="json").format_message,
        "mqlogging logstash format_message()": JsonFormatter(schema="logstash").format_message,
        "mqlogging flat format_message()": JsonFormatter(schema="flat").format_message,
    }
    contenders: dict[str, Callable[[int], float]] = {
        name: functools.partial(_record_loop, fmt) for name, fmt in formatters.items()
    }
    contenders["json.dumps(15-field dict)"] = functools.partial(_dict_loop, json.dumps)
    contenders["orjson.dumps(15-field dict)"] = functools.partial(_dict_loop, orjson.dumps)
    for loop in contenders.values():  # warm-up
        loop(min(chunk, 200))
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    for _ in range(rounds):
        for name in order:
            samples[name].append(contenders[name](chunk) / chunk * 1e6)
        order.reverse()  # alternate the order so that a drift in load favours no one
    return samples


def run(rounds: int = 40, chunk: int = 1000) -> list[dict[str, Any]]:
    """Measure and return one row per contender, each against the python-json-logger baseline.

    ``value`` is the best round (the cost without interference); ``ratio`` is the median of the
    per-round ratios to the baseline measured in the same round, which stays steady when the
    machine's load changes during the run.
    """
    samples = measure(rounds, chunk)
    base = samples[BASELINE]
    rows = []
    for name, values in samples.items():
        goal = f"<= {GOAL_RATIO}x" if name == "mqlogging ecs format_message()" else ""
        ratios = sorted(v / b for v, b in zip(values, base, strict=True))
        rows.append(
            {
                "name": name,
                "value": round(min(values), 3),
                "unit": "us/record",
                "baseline_name": BASELINE,
                "baseline_value": round(min(base), 3),
                "ratio": round(statistics.median(ratios), 3),
                "goal": goal,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds")
    parser.add_argument("--chunk", type=int, default=1000, help="records per contender per round")
    args = parser.parse_args(argv)
    rows = run(args.rounds, args.chunk)
    width = max(len(row["name"]) for row in rows)
    print(f"{'contender':<{width}}  {'us/record':>9}  {'ratio':>6}  goal")
    for row in rows:
        print(f"{row['name']:<{width}}  {row['value']:>9.2f}  {row['ratio']:>6.2f}  {row['goal']}")
    ecs = next(row for row in rows if row["goal"])
    v1 = next(row for row in rows if row["name"].startswith("logstash_formatter"))
    ours = next(row for row in rows if row["name"] == "mqlogging logstash format_message()")
    verdict = "met" if ecs["ratio"] <= GOAL_RATIO else "NOT met"
    print(f"\necs vs {BASELINE}: {ecs['ratio']:.2f}x (goal <= {GOAL_RATIO}x: {verdict})")
    print(f"mqlogging logstash vs LogstashFormatterV1: {ours['ratio'] / v1['ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
