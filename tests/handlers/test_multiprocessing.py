"""MQHandler in ``multiprocessing`` children (fork context): records a worker logs before it
returns reach the broker, although such children end with ``os._exit()`` (no ``atexit``, no
:func:`logging.shutdown`). Found by ``make faults`` scenario 10 (issue 6)."""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path

from mqlogging import MQHandler
from tests.brokers import RabbitMQ
from tests.handlers.conftest import amqp_url, drain_amqp, record_id, seqs

N = 500


def _work(first: int) -> None:
    logger = logging.getLogger("tests.handlers.mp")
    for i in range(first, first + N):
        logger.info("worker record %d", i, extra={"seq": i})


def test_fork_workers_deliver_before_exit(
    rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path
) -> None:
    """Two fork-context workers log 500 records each and return (no flush, no close): all
    1000 arrive once each, in order per worker, with distinct ids."""
    handler = MQHandler(amqp_url(rabbitmq, queue_name), spool=spool_dir)
    logger = logging.getLogger("tests.handlers.mp")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=_work, args=(k * N,)) for k in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0]
    finally:
        logger.removeHandler(handler)
        handler.close()
    docs = drain_amqp(rabbitmq, queue_name, 2 * N)
    got = seqs(docs)
    assert list(range(2 * N)) == sorted(got)
    assert [s for s in got if s < N] == list(range(N))
    assert len({record_id(d) for d in docs}) == 2 * N
