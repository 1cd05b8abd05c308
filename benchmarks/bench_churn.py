"""Connection churn against a three-node RabbitMQ cluster: waves of short-lived producers.

A grid pilot (or a cron job, a CI step) connects, logs a few lines and exits. With 100k
concurrent jobs the brokers see thousands of such connections a minute, so what matters is how
many connections (and their records) a cluster takes per second, and that none of those records
is lost when thousands of processes open and close connections at once.

Each wave starts ``procs`` producer processes at once (default 200). Each one builds its own
``MQHandler`` on a multi-host URL of the cluster (a quorum queue; the host order is rotated per
process, as a site would spread its workers over the nodes), logs ``lines`` records (default
50), and exits through ``handler.close()`` (what ``logging.shutdown()`` does at exit). The
processes are forked from a parent that has already imported mqlogging and pika, like a
pre-forking pilot framework: an interpreter start per process would measure Python's start-up
on 2 cores, not the cluster. Afterwards the queue is drained and every record counted by its
``seq``.

Reported: records/s and connections/s over the waves (from the first fork to the last exit),
and lost records (must be 0). Baseline, same run: one long-lived producer logging as many
records on one connection. Each child's handler confirms its records before it exits, so the
rates are of confirmed, replicated (quorum) records.

Run: ``.venv/bin/python -m benchmarks.bench_churn [--waves 3] [--procs 200] [--lines 50]``
(about two minutes on 2 cores, cluster start included). ``make bench`` runs it too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from typing import Any

from harness.cluster import RabbitMQCluster, drain_cluster


def _child(url: str, first: int, lines: int, spool: str) -> int:
    """One short-lived producer: connect, log ``lines`` records, close (deliver), exit code."""
    from mqlogging import MQHandler

    handler = MQHandler(url, spool=spool, close_timeout=60.0)
    log = logging.getLogger("pilot")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    for i in range(lines):
        log.info("pilot step %d", i, extra={"seq": first + i})
    handler.close()
    stats = handler.stats()
    return 0 if stats["confirmed"] >= lines and stats["spool"]["records"] == 0 else 1


def _steady(url: str, first: int, n: int, spool: str) -> float:
    """Baseline: one long-lived producer logs ``n`` records on one connection; seconds from
    its first record to its ``close()`` (every record confirmed)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _child(url, first, n, spool)
        finally:
            os._exit(code)
    began = time.monotonic()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        msg = "the steady producer did not deliver everything"
        raise RuntimeError(msg)
    return time.monotonic() - began


def _wave(urls: list[str], base: int, procs: int, lines: int, spool: str) -> tuple[float, int]:
    """Fork ``procs`` producers at once and wait for all; (seconds, failed children)."""
    began = time.monotonic()
    pids = []
    for p in range(procs):
        pid = os.fork()
        if pid == 0:  # the child never returns into the benchmark
            code = 1
            try:
                own_spool = os.path.join(spool, str(base + p))  # one per process: no sharing
                code = _child(urls[p % len(urls)], (base + p) * lines, lines, own_spool)
            finally:
                os._exit(code)
        pids.append(pid)
    failed = 0
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        failed += os.waitstatus_to_exitcode(status) != 0
    return time.monotonic() - began, failed


def measure(waves: int = 3, procs: int = 200, lines: int = 50) -> dict[str, Any]:
    """Start a cluster, run the waves, drain and count; return the figures."""
    # Imported before forking, so every child starts warm (a pre-forking pilot framework).
    import pika  # noqa: F401

    import mqlogging.handlers  # noqa: F401

    with RabbitMQCluster() as cluster, tempfile.TemporaryDirectory() as spool:
        queue = "churn"
        path = f"/?exchange=&queue={queue}&queue_type=quorum"
        with cluster.channel() as channel:
            channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        urls = [cluster.amqp_url(path, order=[k, (k + 1) % 3, (k + 2) % 3]) for k in range(3)]
        total = waves * procs * lines  # seqs 0..total-1 for the waves, then the baseline's
        steady = _steady(urls[0], total, total, os.path.join(spool, "steady"))
        times, failed = [], 0
        for w in range(waves):
            took, bad = _wave(urls, w * procs, procs, lines, spool)
            times.append(took)
            failed += bad
        wanted = set(range(2 * total))
        docs = drain_cluster(urls[0], wanted, timeout=120.0)
        seqs = [int(d["seq"]) for d in docs if "seq" in d]
        seen = set(seqs)
        seconds = sum(times)
        return {
            "cluster_start_seconds": cluster.last_start_seconds,
            "waves": waves,
            "procs_per_wave": procs,
            "lines_per_proc": lines,
            "wave_seconds": [round(t, 2) for t in times],
            "records_per_second": total / seconds,
            "steady_records_per_second": total / steady,
            "connections_per_second": waves * procs / seconds,
            "records": total,
            "lost": len(wanted - seen),
            "duplicates": len(seqs) - len(seen),
            "failed_children": failed,
        }


def run(waves: int = 3, procs: int = 200, lines: int = 50) -> list[dict[str, Any]]:
    """Rows for ``benchmarks/run.py``."""
    r = measure(waves, procs, lines)
    what = f"{r['waves']} waves x {r['procs_per_wave']} producers x {r['lines_per_proc']} lines"
    return [
        {"name": f"churn, {what}: records/s", "value": r["records_per_second"],
         "unit": "records/s", "baseline_name": "one long-lived producer, same records",
         "baseline_value": r["steady_records_per_second"],
         "ratio": r["records_per_second"] / r["steady_records_per_second"], "goal": "measured"},
        {"name": f"churn, {what}: connections/s", "value": r["connections_per_second"],
         "unit": "connections/s", "baseline_name": "", "baseline_value": 0.0, "ratio": 0.0,
         "goal": "measured"},
        {"name": f"churn, {what}: lost", "value": r["lost"], "unit": "records",
         "baseline_name": "", "baseline_value": 0.0, "ratio": 0.0, "goal": "0"},
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waves", type=int, default=3)
    parser.add_argument("--procs", type=int, default=200)
    parser.add_argument("--lines", type=int, default=50)
    args = parser.parse_args()
    result = measure(args.waves, args.procs, args.lines)
    print(json.dumps(result, indent=2))
    return 0 if result["lost"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
