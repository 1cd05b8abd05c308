"""Collector memory bounded in bytes at the AMQP client too (issue #11 defect 8).

The worker holds at most ``max_inflight_bytes`` of messages; these tests check that the broker
cannot push more than about that much into the client library's receive buffer either, with a
real RabbitMQ and the collector as a child process (its peak RSS is its own, ``VmHWM``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.collector import (
    BulkStandIn,
    CollectorProcess,
    amqp_queue_url,
    dataset_for,
    ecs_record,
    publish,
    write_config,
)
from harness.helpers import free_port, wait_until

MIB = 1024 * 1024
BIG = 900 * 1024  # body padding: each message is a little over 900 KiB
COUNT = 300
BASELINE = 150 * MIB  # interpreter, pika, the ES client, prometheus, decoded copies, requests


@pytest.fixture
def procs() -> Iterator[list[CollectorProcess]]:
    started: list[CollectorProcess] = []
    yield started
    for proc in started:
        proc.close()


def _peak_rss(proc: CollectorProcess) -> int:
    """The process's peak resident set size in bytes (``VmHWM``)."""
    status = Path(f"/proc/{proc.proc.pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _start(tmp_path: Path, procs: list[CollectorProcess], url: str, es_url: str, queue: str) -> Any:
    port = free_port()
    config = write_config(
        tmp_path / "collector.toml",
        sources=[{"url": url}],  # the default prefetch (1000)
        sinks=[
            {
                "type": "elasticsearch",
                "hosts": [es_url],
                "dataset": dataset_for(queue),
                "request_timeout": 30.0,
            }
        ],
        pipeline={"batch_max_wait": 0.2, "retry_initial": 0.1, "retry_max": 0.5},
        collector={"shutdown_timeout": 8.0, "log_level": "info"},
        http={"listen": f"127.0.0.1:{port}"},
    )
    proc = CollectorProcess(config, port, tmp_path / "collector.log")
    procs.append(proc)
    proc.wait_http()
    return proc


def test_large_messages_default_prefetch_rss_bounded(
    rabbitmq: Any, queue_name: str, tmp_path: Path, procs: list[CollectorProcess]
) -> None:
    """300 messages of ~900 KiB, default prefetch (1000) and ``max_inflight_bytes`` (64 MiB),
    the Elasticsearch sink answering 503 for a while: the broker hands the collector no more
    messages than fit in the byte bound (the rest stay ready in the queue), the collector's
    peak RSS stays under 64 MiB + 150 MiB baseline, and once the sink recovers all 300 are
    stored exactly once and acked."""
    down = threading.Event()
    down.set()

    def fault(request: int, item: int) -> int | None:
        return 503 if down.is_set() and item == -1 else None

    url = amqp_queue_url(rabbitmq, queue_name)
    docs = [ecs_record(i, pad="x" * BIG) for i in range(COUNT)]
    publish(url, docs, batch=10)
    window = 64 * MIB // BIG + 1  # at most this many delivered and unacked at once
    with BulkStandIn(fault) as es:
        proc = _start(tmp_path, procs, url, es.url, queue_name)
        wait_until(lambda: proc.metric("retried") >= 50, timeout=60, message="sink retries")
        delivered = COUNT - rabbitmq.queue_depth(queue_name)
        held_rss = _peak_rss(proc)
        down.clear()
        wait_until(lambda: proc.metric("acked") == COUNT, timeout=120, message="all acked")
        peak = _peak_rss(proc)
        assert {d["event"]["id"] for d in docs} == set(es.docs)
        assert proc.terminate() == 0
    assert 0 < delivered <= window, f"broker pushed {delivered} unacked messages (> {window})"
    bound = 64 * MIB + BASELINE
    assert held_rss < bound, f"peak RSS {held_rss / MIB:.0f} MiB while the sink was down"
    assert peak < bound, f"peak RSS {peak / MIB:.0f} MiB (bound {bound / MIB:.0f} MiB)"
    assert rabbitmq.queue_depth(queue_name) == 0
