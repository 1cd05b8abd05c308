"""Run every benchmark and write ``docs/performance.md`` (``make bench``).

Each ``benchmarks/bench_*.py`` module exposes ``run() -> list[dict]``: rows with ``name``,
``value``, ``unit``, ``baseline_name``, ``baseline_value``, ``ratio`` and ``goal`` — or its
own columns, with a ``render(rows) -> str`` that draws its table and ``NOTES`` that explain it
(``bench_contenders``). Every
baseline is measured in the same run as the figure it is compared with, on this machine, so the
ratios are meaningful even where the absolute numbers are not.

Run: ``.venv/bin/python -m benchmarks.run [--only formatting,spool] [--quick] [--out FILE]``.
With ``--update``, the suites run replace their own sections of an existing ``FILE`` and leave
the others as they were; each section says when it was measured and how loaded the machine was.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# (module, title, run() keyword arguments for the full run, for --quick)
SUITES: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    ("bench_contenders", "Log shippers side by side (issue #13)", {}, {"n": 5_000}),
    ("bench_instructions", "CPU instructions per record (valgrind: noise-free)", {},
     {"n": 1_000}),
    ("bench_collector_instructions", "Collector: CPU instructions per record (valgrind)", {},
     {"n": 2_000}),
    ("bench_formatting", "JSON formatting (caller thread, per record)", {}, {"rounds": 10}),
    ("bench_spool", "Spool (failover buffer and local:// queue)", {}, {"n": 50_000}),
    ("bench_backends", "Confirmed publishing and consuming (AMQP, STOMP)", {}, {"n": 5_000, "rounds": 1}),
    ("bench_handler", "MQHandler", {"down_n": 300_000}, {"burst_n": 20_000, "down_n": 50_000, "calls": 5_000}),
    ("bench_collector", "Collector", {}, {}),
    ("bench_scaling", "Scaling: records/s and RSS against number of records", {},
     {"sizes": (10_000, 30_000, 100_000)}),
    ("bench_packed", "Packed messages against single-record messages (issue #13)", {},
     {"n": 10_000}),
    ("bench_kafka", "Kafka (noida-db stand-in): clients, producer, collector", {}, {}),
    ("bench_churn", "Connection churn: short-lived producers against a 3-node RabbitMQ cluster",
     {}, {"waves": 1}),
]  # fmt: skip


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| measurement | value | baseline (same run) | ratio | goal |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        baseline = (
            f"{r['baseline_name']}: {_fmt(r['baseline_value'])}" if r.get("baseline_name") else ""
        )
        ratio = f"{_fmt(r['ratio'])}x" if r.get("ratio") not in (None, "") else ""
        lines.append(
            f"| {r['name']} | {_fmt(r['value'])} {r['unit']} | {baseline} | {ratio} "
            f"| {r.get('goal', '')} |"
        )
    return "\n".join(lines)


def _load() -> str:
    """The 1-minute load average: how shared the machine was (several helpers run tests)."""
    return f"{os.getloadavg()[0]:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated suite names, e.g. formatting,spool")
    parser.add_argument("--quick", action="store_true", help="smaller runs (for a smoke check)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument(
        "--update", action="store_true", help="replace only these suites' sections of --out"
    )
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None

    args.out.parent.mkdir(parents=True, exist_ok=True)
    sections: list[str] = []
    load_before = _load()
    plot_note = ""
    failed = []
    for module_name, title, full, quick in SUITES:
        if only and module_name.removeprefix("bench_") not in only:
            continue
        print(f"== {title}", flush=True)
        started = time.monotonic()
        try:
            module = importlib.import_module(f"benchmarks.{module_name}")
            rows = module.run(**(quick if args.quick else full))
            table = getattr(module, "render", _table)(rows)
        except Exception:  # one broken suite must not lose the others' figures
            traceback.print_exc()
            failed.append(module_name)
            sections.append(f"## {title}\n\nFAILED in this run (see the console output).\n")
            continue
        took = time.monotonic() - started
        print(table, flush=True)
        notes = getattr(module, "NOTES", "")
        when = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, load average {_load()}"
        sections.append(
            f"## {title}\n\n`benchmarks/{module_name}.py`, {took:.0f} s, measured {when}."
            f"{notes}\n\n{table}\n"
        )
        if module_name == "bench_scaling":
            png = args.out.with_name("performance-scaling.png")
            module.plot(module.run.curves, png)
            plot_note = f"\n![records/s and RSS against records]({png.name})\n"
            sections[-1] += plot_note

    load_after = _load()
    header = f"""# Performance

Generated by `make bench` (`.venv/bin/python -m benchmarks.run{" --quick" if args.quick else ""}`)
on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: {platform.python_implementation()}
{platform.python_version()}, {os.cpu_count()} cores, {platform.machine()}, loopback brokers
started by the benchmarks themselves; each section says when it was measured (`--update`
regenerates some sections only). Each figure is compared with a baseline measured in the
same run on the same machine. The baselines are the raw clients (pika, stomp.py) without
confirmation, the stdlib `QueueHandler`, python-json-logger, and `json.dumps`. Read the ratios
rather than the absolute rates: this machine is small and was shared (load average
{load_before} when the run started, {load_after} when it ended).

Why some ratios sit below the goals:
- In the first table, the tight-loop caller figure of a shipper with a sender thread includes
  that thread's share of the GIL: a loop that does nothing but log waits while the sender
  publishes (two cores, one GIL). The paced p50 is what an application doing other work feels.
- Publishing with confirmation is compared with raw publishing *without* confirmation, which
  only measures how fast the client fills its socket buffers. The broker's real storage rate
  for persistent messages is lower, and no confirmed publisher can beat it. The backend rows
  include that rate ("until stored") as a second reference.
- `MQHandler`'s caller cost includes formatting the record as JSON on the caller's thread.
  That is done on purpose, so that `args`, exceptions and context are captured as they were.
- Timings on this machine move by ±30 % from one run to the next; the instruction counts
  (valgrind) do not. They show where a handler process's CPU goes per delivered record: the
  stdlib `logger.info` call itself (the NullHandler row), then formatting on the caller, then
  the sender. A packed `MQHandler` process delivers at the rate its caller formats: the sender
  thread waits for confirms most of the time, so larger batches or more batches in flight do
  not raise it (see docs/scaling.md).
"""
    if args.update and args.out.exists():
        args.out.write_text(_spliced(args.out.read_text(), sections))
    else:
        args.out.write_text(header + "\n" + "\n".join(sections))
    print(f"wrote {args.out}")
    return 1 if failed else 0


def _spliced(page: str, sections: list[str]) -> str:
    """``page`` with each of its sections that ``sections`` has a new version of (same
    ``## title``) replaced, in place; a suite the page did not have yet goes at its end."""
    head, *old = page.split("\n## ")
    fresh = {s.split("\n", 1)[0]: s for s in sections}
    kept = []
    for section in old:
        title = section.split("\n", 1)[0]
        kept.append(fresh.pop("## " + title, "## " + section.rstrip("\n") + "\n"))
    return head.rstrip("\n") + "\n\n" + "\n".join([*kept, *fresh.values()])


if __name__ == "__main__":
    sys.exit(main())
