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

Needs ``valgrind`` (Debian package); without it the suite reports one row saying so.

Run: ``.venv/bin/python -m benchmarks.bench_instructions [n]`` (default 2,000).
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
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000
    for r in run(n):
        print(f"{r['name']:75} {r['value']:>9,} {r['unit']}  x{r['ratio']} {r['baseline_name']}")


if __name__ == "__main__":
    main()
