"""MQHandler: caller cost, end-to-end throughput, memory while the broker is down.

Everything is measured in one run on a private RabbitMQ node (:mod:`harness.brokers`):

1. Caller-thread cost of ``logger.info("job %d done", i, extra={...})`` (mean µs per call, best
   of 3 rounds) with: a ``NullHandler`` (baseline), the stdlib ``QueueHandler`` drained by a
   ``QueueListener`` into a ``NullHandler``, python-logstash-async's
   ``AsynchronousLogstashHandler`` (closed port, in-memory buffer) and ``MQHandler`` (healthy
   broker). Goal: MQHandler <= 1.5x NullHandler. structlog into the same MQHandler, through
   structlog's stdlib integration and directly (``mqlogging.structlog``). Also reported: the cost of
   ``JsonFormatter.format_message`` alone — the part of ``emit()`` that must run on the caller
   to capture ``args``/``exc_info``/context correctly — and the rest of the MQHandler path.
2. Records/s for a burst (100k by default) from the first ``emit()`` to the last broker
   confirmation, against raw pika publishing the same bodies without confirms (basic_publish
   loop on a BlockingChannel) measured in the same run. Goal: >= 0.8x.
3. RSS while the broker is down and the application logs 1M records: sampled every 10% and
   printed; records go to the spool on disk, so RSS should stay flat.

Run: ``.venv/bin/python -m benchmarks.bench_handler [--burst N] [--down N] [--calls N]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import logging.handlers
import os
import queue
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.brokers import RabbitMQ
from harness.helpers import free_port, unique_name
from mqlogging.formatting import JsonFormatter
from mqlogging.handlers import MQHandler

Row = dict[str, object]


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"bench.{name}")
    logger.handlers.clear()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    return logger


def _per_call_us(logger: logging.Logger, calls: int, rounds: int = 3) -> float:
    best = float("inf")
    for r in range(rounds):
        gc.collect()
        t0 = time.perf_counter()
        for i in range(calls):
            logger.info("job %d done in %.3f ms", i, 12.5, extra={"job": r, "queue": "default"})
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    return best


def _structlog_us(handler: logging.Handler, calls: int, rounds: int = 3) -> dict[str, float]:
    """structlog into ``handler`` two ways (issue #16): through structlog's stdlib
    integration (``render_to_log_kwargs`` -> a stdlib logger) and directly
    (:class:`mqlogging.structlog.MQLogger`); same call shape as :func:`_per_call_us`."""
    try:
        import structlog
    except ImportError:  # pragma: no cover
        return {}
    from mqlogging.structlog import MQLogger

    via_stdlib = structlog.wrap_logger(
        _logger("sl-stdlib", handler),
        processors=[
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.render_to_log_kwargs,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    direct = structlog.wrap_logger(
        MQLogger(handler, "bench.sl-direct"),
        processors=[],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    results = {}
    for name, log in (("structlog via stdlib", via_stdlib), ("structlog direct", direct)):
        best = float("inf")
        for r in range(rounds):
            gc.collect()
            t0 = time.perf_counter()
            for i in range(calls):
                log.info("job %d done in %.3f ms", i, 12.5, job=r, queue="default")
            best = min(best, (time.perf_counter() - t0) / calls * 1e6)
        results[f"MQHandler, {name}"] = best
    return results


def caller_cost(rabbitmq: RabbitMQ, calls: int) -> list[Row]:
    results: dict[str, float] = {}
    results["NullHandler"] = _per_call_us(_logger("null", logging.NullHandler()), calls)

    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(q, logging.NullHandler())
    listener.start()
    results["stdlib QueueHandler"] = _per_call_us(
        _logger("qh", logging.handlers.QueueHandler(q)), calls
    )
    listener.stop()

    try:
        from logstash_async.handler import AsynchronousLogstashHandler

        lsh = AsynchronousLogstashHandler("127.0.0.1", free_port(), database_path=None)
        results["python-logstash-async"] = _per_call_us(_logger("lsa", lsh), calls)
        lsh.close()
    except ImportError:  # pragma: no cover
        pass

    spool = tempfile.mkdtemp(prefix="bench-mq-")
    url = f"{rabbitmq.amqp_url}?exchange=&queue={unique_name('bench-caller')}"
    handler = MQHandler(url, spool=spool, queue_size=8 * calls, batch_size=500)
    mq_logger = _logger("mq", handler)
    mq_logger.info("warm up")  # starts the sender and connects
    handler.flush(30)
    results["MQHandler"] = _per_call_us(mq_logger, calls)
    handler.flush(60)
    results.update(_structlog_us(handler, calls))
    handler.flush(60)

    # What dominates: formatting (required on the caller) vs the rest of the path.
    fmt = JsonFormatter()
    record = logging.LogRecord(
        "bench.fmt", logging.INFO, __file__, 1, "job %d done in %.3f ms", (1, 12.5), None
    )
    record.job, record.queue = 1, "default"
    t0 = time.perf_counter()
    for _ in range(calls):
        record.__dict__.pop("mqlogging_id", None)
        fmt.format_message(record)
    results["JsonFormatter.format_message only"] = (time.perf_counter() - t0) / calls * 1e6
    handler.close()
    shutil.rmtree(spool, ignore_errors=True)

    null = results["NullHandler"]
    rows: list[Row] = []
    for name, value in results.items():
        rows.append(
            {
                "name": f"caller cost: {name}",
                "value": round(value, 2),
                "unit": "us/call",
                "baseline_name": "caller cost: NullHandler",
                "baseline_value": round(null, 2),
                "ratio": round(value / null, 2),
                "goal": "<= 1.5x NullHandler" if name == "MQHandler" else "",
            }
        )
    rest = results["MQHandler"] - results["JsonFormatter.format_message only"]
    rows.append(
        {
            "name": "caller cost: MQHandler minus formatting",
            "value": round(rest, 2),
            "unit": "us/call",
            "baseline_name": "caller cost: NullHandler",
            "baseline_value": round(null, 2),
            "ratio": round(rest / null, 2),
            "goal": "info: filter, guard, enqueue + logging machinery",
        }
    )
    return rows


def _raw_pika_rate(rabbitmq: RabbitMQ, bodies: list[bytes]) -> float:
    import pika

    name = unique_name("bench-raw")
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq.amqp_url))
    try:
        ch = conn.channel()
        ch.queue_declare(name, durable=True)
        props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
        t0 = time.perf_counter()
        for body in bodies:
            ch.basic_publish("", name, body, props)
        rate = len(bodies) / (time.perf_counter() - t0)
        ch.queue_delete(name)
    finally:
        conn.close()
    return rate


def burst(rabbitmq: RabbitMQ, n: int) -> list[Row]:
    spool = tempfile.mkdtemp(prefix="bench-mq-")
    name = unique_name("bench-burst")
    url = f"{rabbitmq.amqp_url}?exchange=&queue={name}"
    handler = MQHandler(url, spool=spool, queue_size=n, batch_size=1000)
    logger = _logger("burst", handler)
    logger.info("warm up")
    handler.flush(30)
    base = handler.stats()["confirmed"]
    t0 = time.perf_counter()
    for i in range(n):
        logger.info("job %d done in %.3f ms", i, 12.5, extra={"job": i, "queue": "default"})
    emitted = time.perf_counter() - t0
    while handler.stats()["confirmed"] - base < n:
        time.sleep(0.01)
    took = time.perf_counter() - t0
    stats = handler.stats()
    handler.close()
    shutil.rmtree(spool, ignore_errors=True)
    rabbitmq.delete_queue(name)

    fmt = JsonFormatter()
    bodies = [
        fmt.format_message(
            logging.LogRecord("bench", 20, __file__, 1, "job %d done", (i,), None)
        ).body
        for i in range(n)
    ]
    raw = _raw_pika_rate(rabbitmq, bodies)
    ours = n / took
    print(
        f"burst: {n} records emitted in {emitted:.1f}s, all confirmed after {took:.1f}s "
        f"(spooled {stats['spooled']}, replayed {stats['replayed']})"
    )
    return [
        {
            "name": f"burst {n}: first emit to last confirm",
            "value": round(ours),
            "unit": "records/s",
            "baseline_name": "raw pika basic_publish, no confirms",
            "baseline_value": round(raw),
            "ratio": round(ours / raw, 2),
            "goal": ">= 0.8x",
        }
    ]


def broker_down_rss(n: int) -> list[Row]:
    """RSS while the broker is down, measured in a fresh process.

    In the process that ran the other benchmarks first, the baseline read ~500 MiB: RSS there
    is what those runs left behind (100k-record bursts, lists of bodies), not this handler's.
    A child process starts from an interpreter with only the handler loaded.
    """
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_handler", "--down-child", str(n)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = out.strip().splitlines()
    print("\n".join(lines[:-1]))
    rows: list[Row] = json.loads(lines[-1])
    return rows


def _broker_down_rss_here(n: int) -> list[Row]:
    spool = tempfile.mkdtemp(prefix="bench-mq-")
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/?exchange=&queue=q"
    handler = MQHandler(url, spool=spool, retry_max=5.0, spool_max_bytes="4G")
    logger = _logger("down", handler)
    samples: list[tuple[int, float]] = [(0, _rss_mb())]
    step = max(1, n // 10)
    t0 = time.perf_counter()
    for i in range(n):
        logger.info("job %d done in %.3f ms", i, 12.5, extra={"job": i, "queue": "default"})
        if (i + 1) % step == 0:
            samples.append((i + 1, _rss_mb()))
    took = time.perf_counter() - t0
    handler.close()
    stats = handler.stats()
    disk = sum(p.stat().st_size for p in Path(spool).iterdir()) / 2**20
    shutil.rmtree(spool, ignore_errors=True)
    print(
        f"broker down: {n} records in {took:.1f}s, {stats['spooled']} spooled "
        f"({disk:.0f} MiB on disk), dropped {stats['dropped']}"
    )
    print("  RSS (MiB) by records logged: " + ", ".join(f"{k}:{v:.0f}" for k, v in samples))
    first = samples[1][1]
    last = samples[-1][1]
    return [
        {
            "name": f"RSS growth while broker down ({n} records, after the first 10%)",
            "value": round(last - first, 1),
            "unit": "MiB",
            "baseline_name": "RSS after the first 10%",
            "baseline_value": round(first, 1),
            "ratio": round(last / first, 2),
            "goal": "flat (records on disk, not in memory)",
        }
    ]


def run(burst_n: int = 100_000, down_n: int = 1_000_000, calls: int = 20_000) -> list[Row]:
    """Boot a private RabbitMQ node, run the three measurements, return the rows."""
    rows: list[Row] = []
    with RabbitMQ() as rabbitmq:
        rabbitmq.start()
        rows += caller_cost(rabbitmq, calls)
        rows += burst(rabbitmq, burst_n)
    rows += broker_down_rss(down_n)
    return rows


def _table(rows: list[Row]) -> str:
    lines = [f"{'measurement':<62} {'value':>12} {'baseline':>12} {'ratio':>6}  goal"]
    for r in rows:
        value = f"{r['value']} {r['unit']}"
        lines.append(
            f"{r['name']!s:<62} {value:>12} {r['baseline_value']!s:>12} {r['ratio']!s:>6}  "
            f"{r['goal']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--burst", type=int, default=100_000)
    parser.add_argument("--down", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--down-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.down_child:
        print(json.dumps(_broker_down_rss_here(args.down_child)))
        return 0
    rows = run(args.burst, args.down, args.calls)
    print(_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
