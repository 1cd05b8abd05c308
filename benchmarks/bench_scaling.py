"""How MQHandler's cost grows with the number of records: throughput and RSS, 10k -> 1M.

For each size N, a fresh Python process (so RSS belongs to this run alone) logs N records
through ``MQHandler``:

- *healthy*: a private RabbitMQ node is up; the time is from the first ``emit()`` to the last
  broker confirmation;
- *broker down*: the endpoint's port is closed; the time is until every record is on disk
  (``close()`` returned) — records must go to the spool, not accumulate in memory.

Reported per N: records/s and the process's peak RSS. The cost must grow linearly (records/s
roughly constant) and memory stay flat. ``make bench`` plots both curves into
``docs/performance-scaling.png``.

Run: ``.venv/bin/python -m benchmarks.bench_scaling [--sizes 10000,100000,1000000]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness.brokers import RabbitMQ
from harness.helpers import free_port, unique_name

ROOT = Path(__file__).resolve().parent.parent

SIZES = (10_000, 30_000, 100_000, 300_000, 1_000_000)

# The measured application: plain logging through MQHandler, timing and RSS printed as JSON.
_APP = r"""
import json, logging, sys, time
from mqlogging import MQHandler

url, spool, n, healthy = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
handler = MQHandler(url, spool=spool, batch_size=1000, spool_max_bytes="8G", retry_max=5.0,
                    close_timeout=600 if healthy else 5)
log = logging.getLogger("scaling")
log.addHandler(handler)
log.setLevel(logging.INFO)
log.propagate = False
t0 = time.perf_counter()
for i in range(n):
    log.info("job %d done in %.3f ms", i, 12.5, extra={"job": i, "queue": "default"})
if healthy:
    while handler.stats()["confirmed"] < n:
        time.sleep(0.01)
handler.close()
took = time.perf_counter() - t0
stats = handler.stats()
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across execve, so a child of a big benchmark
# process would report its parent's peak.
hwm_kib = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": took, "maxrss_mib": hwm_kib / 1024,
                  "confirmed": stats["confirmed"], "spooled": stats["spooled"]}))
"""


def _one(url: str, n: int, healthy: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as spool:
        out = subprocess.run(
            [sys.executable, "-c", _APP, url, spool, str(n), "1" if healthy else "0"],
            capture_output=True, text=True, check=True, cwd=ROOT, timeout=3600,
        )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["rate"] = n / result["seconds"]
    return result


def measure(sizes: tuple[int, ...] = SIZES) -> dict[str, list[dict[str, Any]]]:
    """Return ``{"healthy": [...], "down": [...]}``, one point per size."""
    curves: dict[str, list[dict[str, Any]]] = {"healthy": [], "down": []}
    down_url = f"amqp://guest:guest@127.0.0.1:{free_port()}/?exchange=&queue=q"
    with RabbitMQ() as rabbitmq:
        rabbitmq.start()
        for n in sizes:
            queue = unique_name("bench-scale")
            point = _one(f"{rabbitmq.amqp_url}?exchange=&queue={queue}", n, healthy=True)
            rabbitmq.delete_queue(queue)
            curves["healthy"].append({"records": n, **point})
            print(
                f"healthy {n:>9}: {point['rate']:8.0f} rec/s  peak RSS {point['maxrss_mib']:.0f} MiB"
            )
            point = _one(down_url, n, healthy=False)
            curves["down"].append({"records": n, **point})
            print(
                f"down    {n:>9}: {point['rate']:8.0f} rec/s  peak RSS {point['maxrss_mib']:.0f} MiB"
            )
    return curves


def plot(curves: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Two panels: records/s and peak RSS against records, log-scaled x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label, points in curves.items():
        xs = [p["records"] for p in points]
        name = (
            "broker healthy (to last confirm)" if label == "healthy" else "broker down (to spool)"
        )
        ax1.plot(xs, [p["rate"] for p in points], marker="o", label=name)
        ax2.plot(xs, [p["maxrss_mib"] for p in points], marker="o", label=name)
    for ax, title in ((ax1, "delivery throughput (records/s)"), (ax2, "peak RSS (MiB)")):
        ax.set_xscale("log")
        ax.set_xlabel("records logged")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("MQHandler cost against number of records (one process, loopback RabbitMQ)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run(sizes: tuple[int, ...] = SIZES) -> list[dict[str, Any]]:
    curves = measure(sizes)
    rows = []
    for label, points in curves.items():
        first, last = points[0], points[-1]
        rows.append(
            {
                "name": f"records/s, {label}, {last['records']:,} vs {first['records']:,} records",
                "value": round(last["rate"]),
                "unit": "records/s",
                "baseline_name": f"same at {first['records']:,}",
                "baseline_value": round(first["rate"]),
                "ratio": round(last["rate"] / first["rate"], 2),
                "goal": "~1.0 (linear cost)",
            }
        )
        rows.append({
            "name": f"peak RSS, {label}, {last['records']:,} vs {first['records']:,} records",
            "value": round(last["maxrss_mib"]), "unit": "MiB",
            "baseline_name": f"same at {first['records']:,}", "baseline_value": round(first["maxrss_mib"]),
            "ratio": round(last["maxrss_mib"] / first["maxrss_mib"], 2), "goal": "~1.0 (flat)",
        })  # fmt: skip
    run.curves = curves  # type: ignore[attr-defined]  # for benchmarks/run.py's plot
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--plot", type=Path, help="write the PNG here")
    args = parser.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(","))
    rows = run(sizes)
    for row in rows:
        print(row)
    if args.plot:
        plot(run.curves, args.plot)  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
