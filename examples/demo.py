"""The embedded default: the whole mqlogging pipeline on one machine, no broker, no Elasticsearch.

Run it with ``make demo`` (or ``python examples/demo.py [--out DIR] [--workers N] [--records N]``).

1. It writes two ordinary configuration files into ``demo-out/``: ``logging.json`` (a
   ``dictConfig`` with ``mqlogging.MQHandler`` pointed at a ``local://`` spool directory) and
   ``collector.toml`` (the collector draining that spool into a JSON-lines file).
2. It starts the collector, then a few worker processes that log through the standard
   ``logging`` module: requests, warnings, and errors with tracebacks and context fields.
3. It waits until every record is in ``demo-out/logs.jsonl`` and prints a summary: records per
   level and per process, the last errors with their tracebacks, and what ``mqlogging audit``
   finds in the output (every producer's sequence numbers, no gap).
4. It shows the two edits that point the same setup at RabbitMQ and Elasticsearch.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.config
import multiprocessing
import os
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import mqlogging
from mqlogging.audit import Audit, audit_files
from mqlogging.collector import CollectorService, load_config

BOLD, DIM, RED, GREEN, YELLOW, RESET = (
    "\033[1m",
    "\033[2m",
    "\033[31m",
    "\033[32m",
    "\033[33m",
    "\033[0m",
)
if not sys.stdout.isatty() or os.environ.get("NO_COLOR"):
    BOLD = DIM = RED = GREEN = YELLOW = RESET = ""


def write_configs(out: Path) -> tuple[Path, Path]:
    """The two files a real deployment has too: the application's and the collector's."""
    spool = out / "spool"
    logging_json = out / "logging.json"
    logging_json.write_text(
        json.dumps(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "formatters": {
                    "json": {
                        "()": "mqlogging.JsonFormatter",
                        "schema": "ecs",
                        "static_fields": {"service": "demo-shop", "environment": "demo"},
                    }
                },
                "handlers": {
                    "mq": {
                        "class": "mqlogging.MQHandler",
                        "formatter": "json",
                        "endpoints": [f"local://{spool.resolve()}"],
                    }
                },
                "root": {"level": "INFO", "handlers": ["mq"]},
            },
            indent=2,
        )
        + "\n"
    )
    collector_toml = out / "collector.toml"
    collector_toml.write_text(
        f"""# Drain the demo's spool directory into a JSON-lines file.
[[sources]]
name = "demo-spool"
url = "local://{spool.resolve()}"

[[sinks]]
type = "file"
path = "{(out / "logs.jsonl").resolve()}"

[pipeline]
batch_max_wait = 0.2

[http]
listen = ""        # no /metrics endpoint for the demo
"""
    )
    return logging_json, collector_toml


def worker(number: int, config_path: str, records: int) -> None:
    """One application process: plain stdlib logging, configured by dictConfig."""
    logging.config.dictConfig(json.loads(Path(config_path).read_text()))
    log = logging.getLogger(f"shop.worker{number}")
    rng = random.Random(number)
    for n in range(records):
        order = f"order-{number}-{n}"
        with mqlogging.bound_context(order_id=order, worker=number):
            roll = rng.random()
            if roll < 0.04:
                try:
                    _ = {"apples": 3}[rng.choice(["pears", "plums"])]
                except KeyError:
                    log.exception("stock lookup failed for %s", order)
            elif roll < 0.15:
                log.warning("payment slow", extra={"duration_ms": rng.randint(900, 3000)})
            else:
                log.info("order %s shipped", order, extra={"items": rng.randint(1, 9)})
    logging.shutdown()  # flushes the handler: everything emitted reaches the spool or beyond


def wait_for_lines(path: Path, expected: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        if path.exists():
            with path.open("rb") as f:
                count = sum(1 for _ in f)
            if count >= expected:
                break
        time.sleep(0.1)
    return count


def summarise(path: Path, expected: int, elapsed: float) -> bool:
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    ids = {d["event"]["id"] for d in docs}
    levels = Counter(d["log"]["level"] for d in docs)
    per_process = Counter(d["process"]["pid"] for d in docs)
    print(f"\n{BOLD}Collected {len(docs)} of {expected} records in {elapsed:.1f} s{RESET}")
    print(f"  distinct record ids: {len(ids)} (duplicates: {len(docs) - len(ids)})")
    print(f"  by level:   {', '.join(f'{k} {v}' for k, v in sorted(levels.items()))}")
    print(f"  by process: {', '.join(f'pid {k}: {v}' for k, v in sorted(per_process.items()))}")
    errors = [d for d in docs if d["log"]["level"] == "error"][-2:]
    for doc in errors:
        print(f"\n{RED}{doc['@timestamp']} {doc['log']['logger']}: {doc['message']}{RESET}")
        print(f"  {DIM}order_id={doc.get('order_id')} error.type={doc['error']['type']}{RESET}")
        for line in doc["error"]["stack_trace"].rstrip().splitlines()[-3:]:
            print(f"  {DIM}{line}{RESET}")
    return len(ids) == expected and audit(path)


def audit(path: Path) -> bool:
    """What ``mqlogging audit --file PATH`` says: every producer's sequence, gaps explained."""
    report = Audit()
    audit_files(report, [str(path)])
    totals = report.report()["totals"]
    gaps = totals["missing"]
    colour = RED if gaps else GREEN
    print(
        f"\n{colour}mqlogging audit --file {path}: {totals['producers']} producers, "
        f"{totals['records']} records, {gaps} missing, {totals['dropped']} dropped by policy, "
        f"{totals['duplicates']} duplicates{RESET}"
    )
    return gaps == 0


NEXT_STEPS = """
{b}Same pipeline, real infrastructure{r} — two edits, nothing else changes:
  {y}{logging_json}{r}: point the handler at your brokers (failover in list order):
      "endpoints": ["amqps://logger@mq1.example.org/?password_env=MQ_PASSWORD",
                    "stomp+ssl://logger@mq2.example.org:61614/queue/logs"]
  {y}{collector_toml}{r}: read the queue, write to Elasticsearch:
      [[sources]]  url = "amqps://collector@mq1.example.org/?queue=logs&password_env=MQ_PASSWORD"
      [[sinks]]    type = "elasticsearch"   hosts = ["https://es.example.org:9200"]
  then run:  mqlogging collect --config {collector_toml}
  More: examples/collector-elasticsearch.toml, examples/logging.yaml, README.md
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo-out", help="working directory (recreated)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--records", type=int, default=500, help="records per worker")
    args = parser.parse_args()

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    logging_json, collector_toml = write_configs(out)
    expected = args.workers * args.records
    print(
        f"{BOLD}mqlogging demo{RESET}: {args.workers} workers x {args.records} records "
        f"-> local:// spool -> collector -> {out / 'logs.jsonl'}"
    )
    print(f"  application config: {logging_json}\n  collector config:   {collector_toml}")

    logging.basicConfig(level=logging.WARNING, format="collector: %(levelname)s %(message)s")
    service = CollectorService(load_config(collector_toml))
    service.start()
    started = time.monotonic()
    try:
        ctx = multiprocessing.get_context("fork")
        procs = [
            ctx.Process(target=worker, args=(i, str(logging_json), args.records))
            for i in range(args.workers)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        failed = [p.exitcode for p in procs if p.exitcode != 0]
        if failed:
            print(f"{RED}workers failed with exit codes {failed}{RESET}")
            return 1
        count = wait_for_lines(out / "logs.jsonl", expected, timeout=60)
        elapsed = time.monotonic() - started
    finally:
        service.close()
    ok = summarise(out / "logs.jsonl", expected, elapsed) and count == expected
    print(
        NEXT_STEPS.format(
            b=BOLD, r=RESET, y=YELLOW, logging_json=logging_json, collector_toml=collector_toml
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
