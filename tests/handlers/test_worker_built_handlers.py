"""Handlers *built inside* a pool worker -- a pool ``initializer``, Celery's
``worker_process_init`` signal, every ``spawn``/``forkserver`` child -- get the pool-child
protection that handlers inherited through ``fork()`` get (write-ahead, the SIGTERM hook); an
adversarial review of issue #11 found them losing nearly everything, silently. Counted at the
queue."""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path
from typing import Any

import billiard
import pytest

from harness.brokers import RabbitMQ
from harness.drain import amqp_url, drain_amqp, seqs
from harness.helpers import wait_until
from mqlogging import MQHandler
from mqlogging.cli.spool import inspect_spool

LOGGER = "tests.handlers.worker_built"
PER_TASK = 10
HELD = 500

_shared: dict[str, Any] = {}


def _configure_in_child(url: str, spool: str, logged: Any = None, release: Any = None) -> None:
    """What ``worker_process_init`` handlers and pool initializers do: build the handler in
    the worker. Records wait in memory (long flush interval) as they would under load."""
    _shared["logged"], _shared["release"] = logged, release
    logger = logging.getLogger(LOGGER)
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(
        MQHandler(url, spool=spool, flush_interval=30.0, batch_size=10_000, close_timeout=10.0)
    )
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _task(i: int) -> int:
    logger = logging.getLogger(LOGGER)
    for k in range(PER_TASK):
        logger.info("task record", extra={"seq": i * PER_TASK + k})
    return i


def _log_and_hold(w: int) -> int:
    logger = logging.getLogger(LOGGER)
    for k in range(HELD):
        logger.info("held record", extra={"seq": w * HELD + k})
    with _shared["logged"].get_lock():
        _shared["logged"].value += 1
    _shared["release"].wait(60)  # never set: busy when terminate() comes
    return w


def _adopt_and_drain(rabbitmq: RabbitMQ, queue: str, spool: Path, total: int) -> list[Any]:
    """A live process sharing the spool ships what the workers left; drain the queue."""
    adopter = MQHandler(amqp_url(rabbitmq, queue), spool=str(spool))
    try:
        docs = drain_amqp(rabbitmq, queue, set(range(total)), timeout=30)
        wait_until(lambda: inspect_spool(str(spool)).records == 0, 10, message="spool")
    finally:
        adopter.close()
    return docs


def test_billiard_recycled_workers_with_handler_built_in_the_worker(
    rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path
) -> None:
    """billiard ``Pool(2, maxtasksperchild=10)`` whose initializer builds the handler (the
    Celery ``worker_process_init`` pattern): 100 tasks of 10 records in recycled children,
    each ending with ``os._exit()``. All 1000 records arrive exactly once (before the fix:
    60 of 2000 in the reviewer's script; nothing counted, audit exits 0)."""
    url = amqp_url(rabbitmq, queue_name)
    pool = billiard.Pool(
        2, maxtasksperchild=10, initializer=_configure_in_child, initargs=(url, str(spool_dir))
    )
    try:
        assert pool.map(_task, range(100), chunksize=1) == list(range(100))
    finally:
        pool.close()
        pool.join()
    docs = _adopt_and_drain(rabbitmq, queue_name, spool_dir, 100 * PER_TASK)
    assert sorted(seqs(docs)) == list(range(100 * PER_TASK))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_terminate_with_handler_built_in_the_initializer(
    rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path, method: str
) -> None:
    """``with multiprocessing.get_context(METHOD).Pool(4, initializer=...)``: the handler is
    built in each worker; the workers hold 500 records each in memory when ``terminate()``
    (SIGTERM) comes. All 2000 arrive exactly once (before the fix: 0 of 2000)."""
    ctx = multiprocessing.get_context(method)
    logged, release = ctx.Value("i", 0), ctx.Event()
    url = amqp_url(rabbitmq, queue_name)
    init_args = (url, str(spool_dir), logged, release)
    with ctx.Pool(4, initializer=_configure_in_child, initargs=init_args) as pool:
        pool.map_async(_log_and_hold, range(4), chunksize=1)
        wait_until(lambda: logged.value == 4, 30, message="workers logged")
    docs = _adopt_and_drain(rabbitmq, queue_name, spool_dir, 4 * HELD)
    assert sorted(seqs(docs)) == list(range(4 * HELD))
