"""CPU instructions per record the collector spends, counted by valgrind (issue #13).

The collector's records/s on this 2-core machine move by ±30 % with the load, which hides
a 10 % change; instruction counts do not move. A fresh process runs an in-process
:class:`~mqlogging.collector.service.CollectorService` under ``valgrind --tool=callgrind``
that drains ``n`` records from a private RabbitMQ into the null sink and stops; the same with
``4n`` records; the difference divided by ``3n`` is the cost of one record, start-up, imports
and connection excluded. The records are :func:`benchmarks.bench_backends.make_messages`'
(~323-byte ECS-like bodies), published before the collector starts, once as single-record
messages and once packed (``pack=500``). The process's GC is set up as ``mqlogging collect``
sets up its own (:func:`mqlogging.collector.tune_gc`).

``--keep DIR`` keeps the callgrind output files of the runs (``DIR/<case>-<n>.out``) for
``callgrind_annotate`` (where the instructions go, per function).

Needs ``valgrind`` (Debian package).

Run: ``.venv/bin/python -m benchmarks.bench_collector_instructions [n] [case] [--keep DIR]``
(default 10,000: runs of 10,000 and 40,000 records per case, about ten minutes in all;
``case``: ``packed`` or ``single`` for one of them).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.brokers import RabbitMQ
from harness.collector import REPO
from harness.helpers import unique_name

Row = dict[str, Any]

CASES = {"single-record": "", "packed pack=500": "pack=500"}
"""Case name -> the URL query its records were published with."""

_CHILD = """
import sys, time
from mqlogging.collector import tune_gc
from mqlogging.collector.config import parse_config
from mqlogging.collector.service import CollectorService
url, n = sys.argv[1], int(sys.argv[2])
config = parse_config(
    {"sources": [{"url": url, "prefetch": 2000}], "sinks": [{"type": "null"}],
     "pipeline": {"batch_max_count": 1000, "batch_max_wait": 0.2}, "http": {"listen": ""}},
    env={},
)
svc = CollectorService(config)
tune_gc()
def acked():  # the one counter: reading the whole registry costs ~100 times more
    return sum(s.value for m in svc.metrics.acked.collect() for s in m.samples
               if s.name.endswith("_total"))
svc.start()
deadline = time.monotonic() + 1800
while acked() < n and time.monotonic() < deadline:
    time.sleep(0.2)  # rare, cheap polls: their instructions stay out of the figure
svc.close()
acked = acked()
sys.exit(0 if acked == n else f"acked {acked} of {n}")
"""

_COLLECTED = re.compile(rb"Collected : (\d+)")


def _publish(rabbit: RabbitMQ, n: int, query: str) -> str:
    """A fresh queue holding ``n`` records published with ``query``; returns its URL."""
    from benchmarks.bench_backends import make_messages
    from mqlogging.backends import open_producer

    url = f"{rabbit.amqp_url}?exchange=&queue={unique_name('bench-cins')}"
    url = f"{url}&{query}" if query else url
    messages = make_messages(n)
    with open_producer(url) as producer:
        for i in range(0, n, 2000):
            producer.publish_batch(messages[i : i + 2000])
    return url


def _instructions(url: str, n: int, out_file: str) -> int:
    """User-space instructions of one fresh collector process draining ``n`` records."""
    out = subprocess.run(
        [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}",
            sys.executable, "-c", _CHILD, url, str(n),
        ],
        check=False, capture_output=True, timeout=3600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    found = _COLLECTED.search(out.stderr)
    if out.returncode != 0 or found is None:
        msg = f"collector under valgrind failed ({out.returncode}): {out.stderr[-800:]!r}"
        raise RuntimeError(msg)
    return int(found.group(1))


def run(n: int = 10_000, keep: Path | None = None, cases: str = "") -> list[Row]:
    """Instructions per record of the collector, single-record and packed, into the null sink
    (``cases``: only the cases whose name starts with it)."""
    if shutil.which("valgrind") is None:
        return [{"name": "valgrind not installed: skipped", "value": 0, "unit": ""}]
    rows: list[Row] = []
    with RabbitMQ() as rabbit:
        rabbit.start()
        for name, query in CASES.items():
            if not name.startswith(cases):
                continue
            counts = []
            for size in (n, 4 * n):
                out_file = "/dev/null"
                if keep is not None:
                    keep.mkdir(parents=True, exist_ok=True)
                    out_file = str(keep / f"{name.split()[0]}-{size}.out")
                counts.append(_instructions(_publish(rabbit, size, query), size, out_file))
            per = (counts[1] - counts[0]) / (3 * n)
            print(f"collector {name} -> null: {counts} -> {per:,.0f}/record", file=sys.stderr)
            base = rows[0]["value"] if rows else 0
            rows.append({
                "name": f"collector, {name} -> null sink, whole process",
                "value": round(per), "unit": "instructions/record",
                "baseline_name": rows[0]["name"] if rows else "", "baseline_value": base,
                "ratio": round(per / base, 2) if base else "", "goal": "",
            })  # fmt: skip
    return rows


def main() -> None:
    args = sys.argv[1:]
    keep = None
    if "--keep" in args:
        at = args.index("--keep")
        keep = Path(args[at + 1])
        del args[at : at + 2]
    n = int(args[0]) if args else 10_000
    for row in run(n, keep, args[1] if len(args) > 1 else ""):
        print(f"{row['name']:60} {row['value']:>9,} {row['unit']}")


if __name__ == "__main__":
    main()
