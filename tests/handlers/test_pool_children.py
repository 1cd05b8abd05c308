"""MQHandler in pool children that no exit hook covers (issue #11): ``with
multiprocessing.Pool() as p:`` terminates its workers with SIGTERM (defect 4), and billiard's
pool workers (Celery prefork) always end with ``os._exit()``, recycled after
``maxtasksperchild`` or terminated (defect 16). Every record a worker emitted arrives, once,
in each worker's emit order; counted at the queue."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import billiard

from harness.brokers import RabbitMQ
from harness.drain import amqp_url, drain_amqp, record_id, seqs
from harness.helpers import unique_name, wait_until
from mqlogging import MQHandler
from mqlogging.cli.spool import inspect_spool

ROOT = Path(__file__).resolve().parents[2]

LOGGER = "tests.handlers.pool"
PER_TASK = 10


def _task(i: int) -> int:
    """Log ``PER_TASK`` records (seq ``i * PER_TASK + k``) and return at once."""
    logger = logging.getLogger(LOGGER)
    for k in range(PER_TASK):
        seq = i * PER_TASK + k
        logger.info("task record %d", seq, extra={"seq": seq, "worker": os.getpid()})
    return i


def _parent_handler(rabbitmq: RabbitMQ, queue: str, spool: Path) -> tuple[MQHandler, Any]:
    """The parent's handler, already delivering (its sender runs and adopts what dead
    children leave in the shared spool)."""
    handler = MQHandler(amqp_url(rabbitmq, queue), spool=str(spool), close_timeout=10.0)
    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    logger.info("parent ready", extra={"seq": -1, "worker": os.getpid()})
    assert handler.flush(20)
    return handler, logger


def _check(docs: list[dict[str, Any]], total: int, order: str = "seq") -> None:
    """Every task record once, and each worker's records in its emit order (the ``order``
    field grows in emit order within one process)."""
    got = [s for s in seqs(docs) if s >= 0]
    assert sorted(got) == list(range(total))
    assert len({record_id(d) for d in docs}) == len(docs)
    by_worker: dict[int, list[int]] = defaultdict(list)
    for doc in docs:
        if int(doc["seq"]) >= 0:
            by_worker[int(doc["worker"])].append(int(doc[order]))
    for worker, mine in by_worker.items():
        assert mine == sorted(mine), f"worker {worker}: records out of order"


_shared: dict[str, Any] = {}


def _init(logged: Any, release: Any) -> None:
    _shared["logged"], _shared["release"] = logged, release


def _log_and_hold(w: int) -> int:
    """Log ``HELD`` records, say so, then stay busy until the pool is terminated."""
    logger = logging.getLogger(LOGGER)
    for k in range(HELD):
        seq = w * HELD + k
        logger.info("held record %d", seq, extra={"seq": seq, "worker": os.getpid()})
    with _shared["logged"].get_lock():
        _shared["logged"].value += 1
    _shared["release"].wait(60)  # never set: the worker is busy when terminate() comes
    return w


HELD = 1000


def test_multiprocessing_pool_context_manager_terminates_workers(
    rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path
) -> None:
    """Four workers of ``with Pool(4) as p:`` each log 1000 records, which the handler keeps
    in memory (long flush interval), and are still busy when the ``with`` exit calls
    ``terminate()`` (SIGTERM, no finalizer). All 4000 records arrive exactly once, per worker
    in order, and the spool ends empty. Before the fix every one of them was lost, with no
    counter anywhere."""
    held = MQHandler(  # batches fill slowly: the workers' records wait in memory
        amqp_url(rabbitmq, queue_name), spool=str(spool_dir), flush_interval=30.0,
        batch_size=10_000, close_timeout=10.0,
    )  # fmt: skip
    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(held)
    ctx = multiprocessing.get_context("fork")
    logged, release = ctx.Value("i", 0), ctx.Event()
    try:
        with ctx.Pool(4, initializer=_init, initargs=(logged, release)) as pool:
            pool.map_async(_log_and_hold, range(4), chunksize=1)
            wait_until(lambda: logged.value == 4, 30, message="workers logged")
        # A live process sharing the spool ships whatever the workers could not.
        adopter = MQHandler(amqp_url(rabbitmq, queue_name), spool=str(spool_dir))
        docs = drain_amqp(rabbitmq, queue_name, set(range(4 * HELD)), timeout=30)
        wait_until(lambda: inspect_spool(str(spool_dir)).records == 0, 10, message="spool")
        adopter.close()
    finally:
        logger.removeHandler(held)
        held.close()
    _check(docs, 4 * HELD)


def test_billiard_pool_recycled_and_terminated_workers(
    rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path
) -> None:
    """A billiard pool (Celery's prefork pool) with ``maxtasksperchild=10``: 100 tasks run in
    recycled children, each ending with ``os._exit()``; then ``terminate()`` ends the last
    ones (SIGTERM, billiard's handler, ``os._exit``). All 1000 records arrive exactly once,
    per worker in order, and the spool ends empty. Before the fix most were lost."""
    handler, logger = _parent_handler(rabbitmq, queue_name, spool_dir)
    tasks = 100
    try:
        pool = billiard.Pool(2, maxtasksperchild=10)
        try:
            assert pool.map(_task, range(tasks), chunksize=1) == list(range(tasks))
        finally:
            pool.terminate()
            pool.join()
        docs = drain_amqp(rabbitmq, queue_name, set(range(tasks * PER_TASK)), timeout=30)
        wait_until(lambda: inspect_spool(str(spool_dir)).records == 0, 10, message="spool")
    finally:
        logger.removeHandler(handler)
        handler.close()
    _check(docs, tasks * PER_TASK)


def test_celery_prefork_worker_recycled_children_and_warm_shutdown(
    rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path
) -> None:
    """A real Celery worker (prefork, two children, ``--max-tasks-per-child 10``, RabbitMQ as
    its broker) runs 100 tasks that log one record each, in ten recycled children; then a
    SIGTERM gives it a warm shutdown. All 100 records arrive exactly once, per child in
    order, and the spool ends empty (before the fix 0-40 of them arrived)."""
    from celery import Celery

    celery_queue = unique_name("mqlt-celery")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MQLT_CELERY_BROKER": rabbitmq.amqp_url,
        "MQLT_LOG_URL": amqp_url(rabbitmq, queue_name),
        "MQLT_SPOOL": str(spool_dir),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.handlers._celery_app", "worker",
         "--pool=prefork", "--concurrency=2", "--max-tasks-per-child=10", "-Q", celery_queue,
         "--without-heartbeat", "--without-gossip", "--without-mingle", "--loglevel=WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    client = Celery("mqlt-client", broker=rabbitmq.amqp_url, backend="rpc://")
    try:
        results = [client.send_task("mqlt.log", args=(i,), queue=celery_queue) for i in range(100)]
        assert [r.get(timeout=60) for r in results] == list(range(100))
        worker.send_signal(signal.SIGTERM)  # warm shutdown
        output, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0, output[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        client.close()
    docs = drain_amqp(rabbitmq, queue_name, set(range(100)), timeout=30)
    _check(docs, 100, order="n")  # a child runs its tasks in any order: n is its emit order
    assert len({int(d["worker"]) for d in docs}) >= 10  # recycled children
    assert inspect_spool(str(spool_dir)).records == 0


def _spooled_in_child(handler: MQHandler, conn: Any) -> None:
    logging.getLogger(LOGGER).info("child record", extra={"seq": 0, "worker": os.getpid()})
    conn.send(handler.stats()["spooled"])
    handler.close()


def test_explicit_memory_durability_is_honoured_in_pool_children(
    rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path
) -> None:
    """Write-ahead in ``multiprocessing`` children is what ``durability="auto"`` (the
    default) means there; an explicit ``durability="memory"`` is never overridden: the
    child's record goes through memory (nothing spooled), while the default spools it."""
    url = amqp_url(rabbitmq, queue_name)
    ctx = multiprocessing.get_context("fork")
    spooled = {}
    for durability in ("auto", "memory"):
        handler = MQHandler(url, spool=str(spool_dir / durability), durability=durability)
        logger = logging.getLogger(LOGGER)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        logger.addHandler(handler)
        try:
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=_spooled_in_child, args=(handler, child_end))
            proc.start()
            assert parent_end.poll(30)
            spooled[durability] = parent_end.recv()
            proc.join(30)
        finally:
            logger.removeHandler(handler)
            handler.close()
    assert spooled == {"auto": 1, "memory": 0}
    drain_amqp(rabbitmq, queue_name, 2)
