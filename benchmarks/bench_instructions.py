"""CPU instructions per delivered record, counted by valgrind: the noise-free comparison.

Timings on a small shared machine move by ±30 % from one run to the next (other processes, the
hypervisor, the brokers on the same two cores), which hides differences of 10 %. Instruction
counts do not move: valgrind's callgrind counts every user-space instruction the process runs.
Each contender runs the same ``logger.info("job %d done in %.3f ms", i, 12.5, extra=...)`` in a
fresh process under valgrind twice, with ``n`` and ``3n`` records; the difference divided by
``2n`` is the cost of one record, start-up excluded. For MQHandler that is the whole process
(caller, sender thread, pika, confirms) until every record is confirmed by RabbitMQ, counted at
the destination (the queue holds them all).

Kernel work is not counted (valgrind sees user space only): python-json-logger's
``StreamHandler`` makes one ``write(2)`` per record, MQHandler one ``sendmsg`` per packed
message; the timed table (``bench_contenders``) includes both.

Where the handler's instructions go: the row "caller only" is an ``MQHandler`` whose
:meth:`~mqlogging.MQHandler.enqueue` sends nothing (the ``logger.info`` call, the handler's
``emit`` and the formatting on the caller's thread); the whole process minus that row is the
sender thread's share. ``--parts`` splits the formatting of one record further: each step of
:meth:`~mqlogging.formatting.JsonFormatter.format_message` timed alone, in a loop, the same way
(``n`` and ``3n`` iterations).

Needs ``valgrind`` (Debian package); without it the suite reports one row saying so.

Run: ``.venv/bin/python -m benchmarks.bench_instructions [n] [--parts]`` (default 2,000).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from typing import Any

from harness.brokers import RabbitMQ
from harness.collector import REPO
from harness.drain import amqp_url
from harness.helpers import unique_name

Row = dict[str, Any]

_CHILD = """
import logging, os, sys, tempfile
mode, n, url = sys.argv[1], int(sys.argv[2]), sys.argv[3]
EXTRA = {"job": 7, "queue": "default"}
if mode == "null":
    handler = logging.NullHandler()
elif mode == "pjl":
    from pythonjsonlogger.json import JsonFormatter
    handler = logging.StreamHandler(open(os.devnull, "w"))
    handler.setFormatter(JsonFormatter())
else:
    from mqlogging.handlers import MQHandler
    if mode == "caller":
        class CallerOnly(MQHandler):
            def enqueue(self, message):  # everything up to the queue, nothing sent
                pass
        handler = CallerOnly(url, spool=tempfile.mkdtemp(), close_timeout=1)
        mode = "null"  # nothing to flush
    else:
        handler = MQHandler(url, spool=tempfile.mkdtemp(), queue_size=n + 1000, close_timeout=600)
logger = logging.getLogger("bench.instructions")
logger.propagate = False
logger.setLevel(logging.INFO)
logger.addHandler(handler)
for i in range(100):  # warm up: imports, connection, caches
    logger.info("job %d done in %.3f ms", i, 12.5, extra=EXTRA)
if mode != "null" and mode != "pjl" and not handler.flush(600):
    sys.exit("warm-up records not confirmed")
for i in range(n):
    logger.info("job %d done in %.3f ms", i, 12.5, extra=EXTRA)
if mode != "null" and mode != "pjl":
    if not handler.flush(600):
        sys.exit("records not confirmed")
    handler.close()
"""

_COLLECTED = re.compile(rb"Collected : (\d+)")


def _instructions(mode: str, n: int, url: str) -> int:
    """User-space instructions of one fresh process logging ``n`` records."""
    out = subprocess.run(
        [
            "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
            sys.executable, "-c", _CHILD, mode, str(n), url,
        ],
        capture_output=True, check=True, timeout=1800,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    found = _COLLECTED.search(out.stderr)
    if found is None:
        msg = f"valgrind printed no instruction count for {mode}: {out.stderr[-500:]!r}"
        raise RuntimeError(msg)
    return int(found.group(1))


def _per_record(mode: str, n: int, url: str = "") -> float:
    return (_instructions(mode, 3 * n, url) - _instructions(mode, n, url)) / (2 * n)


_PARTS_SETUP = """
import logging
from mqlogging import formatting as F
from mqlogging._ids import new_id
fmt = F.JsonFormatter()
schema, dumps = fmt._schema, fmt._dumps_part
make = logging.getLogger("x").makeRecord
record = make(
    "bench.instructions", 20, "f.py", 10, "job %d done in %.3f ms", (5, 12.5), None, "fn",
    {"job": 7, "queue": "default"},
)
stamp = {"producer": "host:1:abcdef01", "seq": 5}
rid = new_id()
"""

PARTS = {
    "LogRecord made (the stdlib's makeRecord)": (
        "make('bench.instructions', 20, 'f.py', 10, 'job %d done in %.3f ms', (5, 12.5), "
        "None, 'fn', {'job': 7, 'queue': 'default'})"
    ),
    "format_message, whole (ecs plain path)": (
        "record.__dict__.pop('mqlogging_id', None); fmt.format_message(record, stamp)"
    ),
    "  record id (new_id)": "new_id()",
    "  body (encode_plain)": "schema.encode_plain(record, rid, stamp)",
    "    message rendered and encoded": "dumps(F._message(record, record.msg))",
    "    time (ISO 8601)": "schema._clock(record.created).encode()",
    "    extras found": "F._plain_extras(record, schema._extra_kinds, schema._static_tail)",
    "    log object (cached)": (
        "F._cached(schema._log_cache, F._log_key(record), record, F._ecs_log, fmt._dumps)"
    ),
    "    process object (cached)": (
        "F._cached(schema._process_cache, F._process_key(record), record, F._ecs_process, "
        "fmt._dumps)"
    ),
    "    stamp encoded": "dumps(stamp)[1:-1]",
    "    id encoded": "dumps(rid)",
}
"""Steps of formatting one record, each timed alone (``--parts``); indented rows are inside
the row above. They use private names on purpose: this is a profile of the internals."""


def parts(n: int = 2_000) -> list[tuple[str, float]]:
    """Instructions per iteration of each :data:`PARTS` step (an empty loop subtracted)."""

    def count(stmt: str, k: int) -> int:
        code = f"{_PARTS_SETUP}\nfor _ in range({k}):\n    {stmt}\n"
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
             sys.executable, "-c", code],
            capture_output=True, check=True, timeout=1800,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        found = _COLLECTED.search(out.stderr)
        assert found is not None, out.stderr[-500:]
        return int(found.group(1))

    def per(stmt: str) -> float:
        return (count(stmt, 3 * n) - count(stmt, n)) / (2 * n)

    loop = per("pass")
    return [(name, per(stmt) - loop) for name, stmt in PARTS.items()]


def _delivered(rabbit: RabbitMQ, queue: str) -> int:
    """Distinct records waiting in ``queue`` (a packed message counts for its records)."""
    from mqlogging.backends import UnpackingConsumer, open_consumer

    seen: set[str] = set()
    with UnpackingConsumer(open_consumer(amqp_url(rabbit, queue), prefetch=2000)) as consumer:
        while batch := consumer.fetch(2000, 2.0):
            seen.update(delivery.id for delivery in batch)
            consumer.ack(batch)
    return len(seen)


def run(n: int = 2_000) -> list[Row]:
    """Instructions per record: NullHandler, python-json-logger to /dev/null, MQHandler over
    AMQP to RabbitMQ with single-record and packed messages (``pack=500``)."""
    if shutil.which("valgrind") is None:
        return [_row("valgrind not installed (apt-get install valgrind): skipped", 0, 0, "")]
    rows: list[Row] = []
    null = _per_record("null", n)
    pjl = _per_record("pjl", n)
    rows.append(_row("NullHandler", null, null, "NullHandler"))
    rows.append(_row("python-json-logger StreamHandler -> /dev/null", pjl, null, "NullHandler"))
    with RabbitMQ() as rabbit:
        rabbit.start()
        caller = _per_record("caller", n, amqp_url(rabbit, unique_name("bench-ins")))
        rows.append(
            _row("MQHandler, caller only (logger call, emit, formatting; nothing sent)",
                 caller, null, "NullHandler")
        )  # fmt: skip
        for label, query in (("single-record messages", {}), ("packed, pack=500", {"pack": 500})):
            queue = unique_name("bench-ins")
            per = _per_record("mq", n, amqp_url(rabbit, queue, **query))
            delivered = _delivered(rabbit, queue)
            expected = 2 * (100 + n) + 2 * n  # both processes: warm-up and measured records
            name = f"MQHandler AMQP -> RabbitMQ, {label}, whole process until confirmed"
            if delivered != expected:
                name += f" (delivered {delivered} of {expected}!)"
            rows.append(_row(name, per, pjl, "python-json-logger -> /dev/null"))
    return rows


def _row(name: str, value: float, base: float, base_name: str) -> Row:
    return {
        "name": name,
        "value": round(value),
        "unit": "instructions/record",
        "baseline_name": base_name,
        "baseline_value": round(base),
        "ratio": round(value / base, 2) if base else "",
        "goal": "below python-json-logger" if "packed" in name else "",
    }


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--parts"]
    n = int(args[0]) if args else 2_000
    if "--parts" in sys.argv:
        for name, value in parts(n):
            print(f"{name:50} {value:>9,.0f} instructions")
        return
    for r in run(n):
        print(f"{r['name']:75} {r['value']:>9,} {r['unit']}  x{r['ratio']} {r['baseline_name']}")


if __name__ == "__main__":
    main()
