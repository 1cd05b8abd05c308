"""Spool throughput: records/s appended (batched, fsync per segment) and replayed.

Baselines, measured in the same run on the same disk: a raw buffered ``f.write`` of the same
lines, in the same batches, to one file (then one fsync), and a raw ``for line in f`` over that
file. The spool does more per record (newline checks, segment rotation and sealing with fsync;
on read JSON validation, positions, durable progress and deletion), so the ratio is the price
of those guarantees. Goal: >= 100k records/s each way for ~300-byte JSON records.

Run: ``.venv/bin/python -m benchmarks.bench_spool [records]`` (default 300000, ~10 s).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from mqlogging.spool import Spool, SpoolReader

GOAL = 100_000.0
BATCH = 100


def make_records(n: int) -> list[bytes]:
    """~300-byte ECS-like JSON bodies, each unique."""
    out = []
    for i in range(n):
        doc = {
            "@timestamp": "2026-11-21T23:49:48.123456Z",
            "log": {"level": "info", "logger": "app.worker"},
            "message": f"processed job {i} of the nightly batch in 12.5 ms",
            "event": {"id": f"018f4c2e-7a3b-7c1d-9e2f-{i:012x}"},
            "host": {"name": "worker-node-017.example.org"},
            "service": {"name": "bench"},
            "process": {"pid": 4242, "thread": {"name": "MainThread"}},
            "labels": {"site": "LCG.Example.org"},
        }
        out.append(json.dumps(doc, separators=(",", ":")).encode())
    return out


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def bench_baseline_write(path: Path, records: list[bytes]) -> float:
    start = time.perf_counter()
    with open(path, "wb") as f:
        for i in range(0, len(records), BATCH):
            f.write(b"".join(r + b"\n" for r in records[i : i + BATCH]))
        f.flush()
        os.fsync(f.fileno())
    return _rate(len(records), time.perf_counter() - start)


def bench_baseline_read(path: Path) -> tuple[float, int]:
    start = time.perf_counter()
    n = 0
    with open(path, "rb") as f:
        for _line in f:
            n += 1
    return _rate(n, time.perf_counter() - start), n


def bench_baseline_read_validate(path: Path) -> float:
    """Raw line iteration plus the JSON parse any corruption-checking replay must do."""
    try:
        import orjson

        loads = orjson.loads
    except ImportError:  # pragma: no cover
        loads = json.loads
    start = time.perf_counter()
    n = 0
    with open(path, "rb") as f:
        for line in f:
            loads(line)
            n += 1
    return _rate(n, time.perf_counter() - start)


def bench_spool_write(directory: Path, records: list[bytes], batch: int) -> float:
    start = time.perf_counter()
    with Spool(directory, fsync="segment") as spool:
        for i in range(0, len(records), batch):
            spool.append(records[i : i + batch])
    return _rate(len(records), time.perf_counter() - start)


def bench_spool_read(directory: Path) -> tuple[float, int]:
    start = time.perf_counter()
    n = 0
    with SpoolReader(directory) as reader:
        while records := reader.read(1000):
            n += len(records)
            reader.commit(records)
    return _rate(n, time.perf_counter() - start), n


def run(n: int = 300_000) -> list[dict[str, object]]:
    records = make_records(n)
    avg = sum(len(r) + 1 for r in records) / n
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-spool-", dir=os.environ.get("TMPDIR")) as tmp:
        base = Path(tmp)
        raw = base / "raw.jsonl"
        w_base = bench_baseline_write(raw, records)
        r_base, r_n = bench_baseline_read(raw)
        assert r_n == n
        r_valid = bench_baseline_read_validate(raw)
        w_spool = bench_spool_write(base / "spool", records, BATCH)
        r_spool, s_n = bench_spool_read(base / "spool")
        assert s_n == n, f"replayed {s_n} of {n}"
        leftover = [p for p in (base / "spool").iterdir() if p.suffix in (".jsonl", ".open")]
        assert not leftover, leftover
        small = records[: n // 10]
        w_one = bench_spool_write(base / "spool1", small, 1)
        bench_spool_read(base / "spool1")

    def row(name: str, value: float, bname: str, bvalue: float, goal: float | None) -> None:
        rows.append({
            "name": name, "value": round(value), "unit": "records/s", "baseline_name": bname,
            "baseline_value": round(bvalue), "ratio": round(value / bvalue, 3),
            "goal": f">= {goal:,.0f} records/s" if goal else "",
        })  # fmt: skip

    row(f"spool append, batch {BATCH}, fsync=segment", w_spool, "raw f.write, same batches",
        w_base, GOAL)  # fmt: skip
    row("spool replay, read(1000)+commit", r_spool, "raw for-line-in-file", r_base, GOAL)
    row("spool replay (info: vs validating loop)", r_spool, "raw for-line + JSON parse",
        r_valid, None)  # fmt: skip
    row("spool append, batch 1 (info)", w_one, "raw f.write, same batches", w_base, None)
    rows.append({"name": "record size", "value": round(avg), "unit": "bytes",
                 "baseline_name": "", "baseline_value": "", "ratio": "", "goal": ""})  # fmt: skip
    return rows


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
    rows = run(n)
    print(f"{'benchmark':40} {'value':>9} {'baseline':>9} {'ratio':>6}  {'baseline is':28} goal")
    for r in rows:
        print(
            f"{r['name']!s:40} {r['value']!s:>9} {r['baseline_value']!s:>9} "
            f"{r['ratio']!s:>6}  {r['baseline_name']!s:28} {r['goal']}"
        )
    print(f"{n} records; unit records/s unless stated")


if __name__ == "__main__":
    main()
