"""A RabbitMQ resource alarm (memory high watermark) blocks every publishing connection: the
broker stops reading what producers send. The handler must neither freeze its callers nor
lose or duplicate a record; it spools while blocked and delivers everything once the alarm
clears. Real RabbitMQ, alarm raised with ``rabbitmqctl set_vm_memory_high_watermark``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harness.brokers import RabbitMQ
from harness.drain import amqp_url, drain_amqp, record_id, seqs
from harness.helpers import wait_until
from mqlogging import MQHandler


def _watermark(rabbitmq: RabbitMQ, value: str) -> None:
    result = rabbitmq.rabbitmqctl("set_vm_memory_high_watermark", value)
    assert result.returncode == 0, result.stderr


def test_memory_alarm_blocks_publishing_without_loss(
    rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path, app_logger: Any
) -> None:
    """2,000 records logged while the broker's memory alarm blocks publishers: no emit()
    waits for the broker (none takes 0.5 s), and after the alarm clears every record arrives, in order,
    any second copy under the same record id."""
    handler = MQHandler(
        amqp_url(rabbitmq, queue_name), spool=str(spool_dir), timeout=2.0, retry_max=1.0
    )
    app_logger.addHandler(handler)
    app_logger.info("before the alarm", extra={"seq": 0})
    assert handler.flush(20)
    _watermark(rabbitmq, "0.0000001")  # every publisher is blocked from now on
    try:
        slowest = 0.0
        for i in range(1, 2001):
            started = time.monotonic()
            app_logger.info("during the alarm %d", i, extra={"seq": i})
            slowest = max(slowest, time.monotonic() - started)
        wait_until(lambda: handler.stats()["spooled"] > 0, 30, message="spooling while blocked")
    finally:
        _watermark(rabbitmq, "0.4")
    assert handler.flush(60)
    handler.close()
    docs = drain_amqp(rabbitmq, queue_name, set(range(2001)))
    assert slowest < 0.5  # blocked on the broker would be its 2 s timeout, or forever
    # Every record arrives, first copies in emit order. Batches published on the blocked
    # connection before it was given up are read by the broker once the alarm clears, next to
    # their replay: at-least-once copies with the same record id (one document in ES).
    assert list(range(2001)) == list(dict.fromkeys(seqs(docs)))
    ids: dict[int, set[str]] = {}
    for doc in docs:
        ids.setdefault(int(doc["seq"]), set()).add(record_id(doc))
    assert all(len(copies) == 1 for copies in ids.values())
