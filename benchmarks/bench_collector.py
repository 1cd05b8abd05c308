"""Collector throughput from a pre-filled RabbitMQ queue, vs the raw pika consume rate.

Baseline (same run, same broker, same records): pika ``basic_consume`` with prefetch 1000 and
one ``multiple`` ack every 500 messages — the fastest plain consumer. Then the collector
(in-process :class:`CollectorService`, one AMQP source) drains an identical queue into:

- the null sink (goal: >= 0.8x the raw rate: the pipeline's own cost — decode, enrich, batch,
  ack — must stay small),
- a file sink (JSON lines, fsync per batch),
- the Elasticsearch stand-in noida-db (its own indexing speed dominates here).

Logstash's published rabbitmq-input figure, ~14.6k events/s, is printed as the peer to beat.

Run: ``.venv/bin/python -m benchmarks.bench_collector`` (``BENCH_COLLECTOR_N`` records, default
30000; ``BENCH_COLLECTOR_ES_N`` for the noida-db run, default 10000).
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from harness.brokers import NoidaES, RabbitMQ
from mqlogging._ids import new_id
from mqlogging.collector.config import parse_config
from mqlogging.collector.service import CollectorService

N = int(os.environ.get("BENCH_COLLECTOR_N", "30000"))
ES_N = int(os.environ.get("BENCH_COLLECTOR_ES_N", "10000"))
LOGSTASH_PEER = 14_600.0
PACK = 200  # records per packed message, when packed messages exist


def _record(i: int) -> bytes:
    return json.dumps(
        {
            "@timestamp": "2024-05-01T12:00:00.000000Z",
            "ecs": {"version": "8.11.0"},
            "event": {"id": new_id(), "dataset": "bench"},
            "log": {"level": "info", "logger": "bench.collector"},
            "message": f"benchmark record {i} with a typical message length for a log line",
            "service": {"name": "bench"},
            "host": {"name": "benchhost"},
            "process": {"pid": 1234, "thread": {"name": "MainThread"}},
            "seq": i,
        }
    ).encode()


def packing_available() -> bool:
    """True once packed messages exist (``mqlogging.packing``, issue #13)."""
    return importlib.util.find_spec("mqlogging.packing") is not None


def _messages(n: int, pack: int) -> list[tuple[bytes, dict[str, Any]]]:
    """``n`` records as (body, AMQP properties) pairs: one record each, or ``pack`` records
    per packed message (JSON lines, packed by ``mqlogging.packing`` itself)."""
    if pack <= 1:
        out = []
        for i in range(n):
            props = {"content_type": "application/json", "message_id": new_id()}
            out.append((_record(i), props))
        return out
    from mqlogging._types import Message
    from mqlogging.packing import Packer, PackOptions

    records = [Message(new_id(), _record(i)) for i in range(n)]
    packer = Packer(PackOptions(records=pack, max_bytes=16 * 2**20))
    return [
        (
            p.body,
            {"content_type": "application/x-ndjson", "message_id": p.id, "headers": p.headers},
        )
        for p in packer.pack(records)
    ]


def _fill(rabbit: RabbitMQ, queue: str, n: int, pack: int = 1) -> int:
    """Pre-fill ``queue`` with ``n`` persistent records (plain pika, no confirms: fast);
    returns the number of broker messages they make."""
    import pika

    messages = _messages(n, pack)
    conn = pika.BlockingConnection(pika.URLParameters(rabbit.amqp_url))
    ch = conn.channel()
    ch.queue_declare(queue, durable=True)
    for body, props in messages:
        ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2, **props))
    conn.close()
    deadline = time.monotonic() + 120
    while rabbit.queue_depth(queue) < len(messages) and time.monotonic() < deadline:
        time.sleep(0.1)
    return len(messages)


def _raw_pika(rabbit: RabbitMQ, queue: str, n: int, records: int) -> float:
    """Records/s of a plain pika consumer taking ``n`` messages holding ``records`` records."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(rabbit.amqp_url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1000)
    start = time.perf_counter()
    for got, (method, _props, _body) in enumerate(ch.consume(queue, auto_ack=False), 1):
        if got % 500 == 0 or got == n:
            ch.basic_ack(method.delivery_tag, multiple=True)
        if got == n:
            break
    elapsed = time.perf_counter() - start
    ch.cancel()
    conn.close()
    return records / elapsed


@contextmanager
def collector_gc() -> Iterator[None]:
    """This process's GC set up as ``mqlogging collect`` sets up its own
    (:func:`mqlogging.collector.tune_gc`) while the block runs, then restored, so the suites
    that run after it in ``benchmarks.run`` measure with the default GC. Set
    ``MQLOGGING_BENCH_DEFAULT_GC`` to measure what an application embedding the collector gets."""
    if os.environ.get("MQLOGGING_BENCH_DEFAULT_GC"):
        yield
        return
    from mqlogging.collector import tune_gc

    threshold = gc.get_threshold()
    tune_gc()
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def _collector(rabbit: RabbitMQ, queue: str, n: int, sink: dict[str, Any]) -> float:
    config = parse_config(
        {
            "sources": [{"url": f"{rabbit.amqp_url}?exchange=&queue={queue}", "prefetch": 2000}],
            "sinks": [sink],
            "pipeline": {"batch_max_count": 1000, "batch_max_wait": 0.2},
            "http": {"listen": ""},
        },
        env={},
    )
    svc = CollectorService(config)
    begin = time.perf_counter()
    with collector_gc():
        return _drain(svc, n, begin)


def _drain(svc: CollectorService, n: int, begin: float) -> float:
    return drain_rate(svc, n, deadline=begin + 300)


def acked(svc: CollectorService) -> float:
    """Records the collector acked: its one counter (reading the whole metrics registry, as
    ``metrics.value`` does, costs ~200 µs and the GIL, often enough to slow what is measured)."""
    return sum(
        s.value for m in svc.metrics.acked.collect() for s in m.samples if s.name.endswith("_total")
    )


def drain_rate(svc: CollectorService, n: int, *, deadline: float) -> float:
    """Start ``svc`` and return its records/s from the first delivery (connection set-up and
    queue declaration are not throughput, as for the baseline) until ``n`` records are acked;
    ``deadline`` (``time.perf_counter()``) bounds a stalled run."""
    svc.start()
    try:
        while svc.metrics.value("consumed") == 0:
            time.sleep(0.001)
            if time.perf_counter() > deadline:
                raise RuntimeError("collector consumed nothing")
        start = time.perf_counter()
        while acked(svc) < n:
            time.sleep(0.01)
            if time.perf_counter() > deadline:
                raise RuntimeError(f"collector stalled at {acked(svc):.0f} of {n}")
        elapsed = time.perf_counter() - start
    finally:
        svc.close()
    return n / elapsed


def _goal(goal: str, pack: int) -> str:
    """The null sink's goal: 0.8x raw consume on single records, 100k records/s packed."""
    if not goal:
        return ""
    return ">= 100,000 records/s (issue #13)" if pack > 1 else f">= {goal}x"


def run(pack: int | None = None) -> list[dict[str, Any]]:
    """Raw pika, then the collector into each sink, on the same records. ``pack``: records
    per packed message (default 200 where packed messages exist, else single records)."""
    if pack is None:
        pack = PACK if packing_available() else 1
    shape = f"packed messages of {pack} records" if pack > 1 else "single-record messages"
    print(f"collector benchmark on {shape}")
    rows: list[dict[str, Any]] = []
    with RabbitMQ() as rabbit, NoidaES() as noida, tempfile.TemporaryDirectory() as tmp:
        rabbit.start()
        noida.start()
        messages = _fill(rabbit, "bench-raw", N, pack)
        raw = _raw_pika(rabbit, "bench-raw", messages, N)
        cases = [
            ("collector -> null sink", {"type": "null"}, N, "0.8"),
            (
                "collector -> file sink (fsync per batch)",
                {"type": "file", "path": f"{tmp}/out.jsonl", "max_bytes": 0},
                N,
                "",
            ),
            (
                "collector -> noida-db (ES stand-in)",
                {"type": "elasticsearch", "hosts": [noida.url], "dataset": "bench"},
                ES_N,
                "",
            ),
        ]
        for i, (name, sink, n, goal) in enumerate(cases):
            queue = f"bench-c{i}"
            _fill(rabbit, queue, n, pack)
            rate = _collector(rabbit, queue, n, sink)
            rows.append(
                {
                    "name": f"{name}, {shape}",
                    "value": round(rate),
                    "unit": "records/s",
                    "baseline_name": "raw pika consume of the same messages (prefetch 1000)",
                    "baseline_value": round(raw),
                    "ratio": round(rate / raw, 2),
                    "goal": _goal(goal, pack),
                }
            )
        rows.append(
            {
                "name": "peer: Logstash rabbitmq input (published)",
                "value": LOGSTASH_PEER,
                "unit": "events/s",
                "baseline_name": "raw pika consume",
                "baseline_value": round(raw),
                "ratio": round(LOGSTASH_PEER / raw, 2),
                "goal": "",
            }
        )
    return rows


def main() -> None:
    rows = run()
    print(f"{'case':45} {'rate':>10} {'unit':8} {'baseline':>10} {'ratio':>6}  goal")
    for r in rows:
        print(
            f"{r['name']:45} {r['value']:>10} {r['unit']:8} {r['baseline_value']:>10} "
            f"{r['ratio']:>6}  {r['goal']}"
        )


if __name__ == "__main__":
    main()
