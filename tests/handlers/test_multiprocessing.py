"""MQHandler in ``multiprocessing`` children (fork context): records a worker logs before it
returns reach the broker, although such children end with ``os._exit()`` (no ``atexit``, no
:func:`logging.shutdown`); workers forked while the parent's sender is still connecting (and
importing its client library) deliver too; and segments that other processes left in a shared
spool directory are adopted by a live handler. Found by ``make faults`` scenario 10 (issue 6)."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import subprocess
import sys
from pathlib import Path

from harness.brokers import RabbitMQ
from harness.drain import amqp_url, drain_amqp, record_id, seqs
from harness.helpers import wait_until
from harness.proxy import Outage
from mqlogging import MQHandler
from mqlogging.cli.spool import inspect_spool

ROOT = Path(__file__).resolve().parents[2]

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


# -- fork while the parent's sender imports its client library (faults scenario 10) -----------

# Run in a fresh interpreter: the test process imported pika long ago, and the bug needs a
# parent whose sender thread is still importing it when the workers are forked.
_FORK_RACE_APP = r"""
import logging, multiprocessing, sys
sys.path.insert(0, sys.argv[1])
from mqlogging import MQHandler

url, spool, per = sys.argv[2], sys.argv[3], int(sys.argv[4])
workers = 4
handler = MQHandler(url, spool=spool, close_timeout=10.0)
logger = logging.getLogger("app")
logger.setLevel(logging.INFO)
logger.propagate = False
logger.addHandler(handler)

def log(first, count):
    for i in range(first, first + count):
        logger.info("record %d", i, extra={"seq": i})

# Parent seqs [0, per), worker w [(w + 1) * per, (w + 2) * per). Two batches wake the sender
# (its first connection), then fork at once, and the parent logs while the workers do.
third = per // 3
log(0, third)
ctx = multiprocessing.get_context("fork")
procs = [ctx.Process(target=log, args=((w + 1) * per, per)) for w in range(workers)]
for p in procs:
    p.start()
log(third, third)
for p in procs:
    p.join(60)
log(2 * third, per - 2 * third)
print("EXITCODES", [p.exitcode for p in procs], flush=True)
"""


def test_fork_while_parent_logs_concurrently(
    rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path
) -> None:
    """A parent (fresh interpreter, its sender connecting for the first time) forks four
    workers right after its first batches and keeps logging while they log 3000 records each:
    all 15000 records arrive exactly once, each process's in its emit order, and the spool is
    left empty. Before the fix the fork caught the sender thread importing pika, every child
    inherited a half-initialised ``pika`` and spooled all of its records."""
    per = 3000
    total = 5 * per
    run = subprocess.run(
        [sys.executable, "-c", _FORK_RACE_APP, str(ROOT), amqp_url(rabbitmq, queue_name),
         str(spool_dir), str(per)],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "EXITCODES [0, 0, 0, 0]" in run.stdout
    assert "partially initialized" not in run.stderr
    docs = drain_amqp(rabbitmq, queue_name, set(range(total)), timeout=60)
    got = seqs(docs)
    assert sorted(got) == list(range(total))  # every record, exactly once
    assert len({record_id(d) for d in docs}) == total
    for w in range(5):  # per-process emit order
        mine = [s for s in got if w * per <= s < (w + 1) * per]
        assert mine == list(range(w * per, (w + 1) * per))
    assert inspect_spool(str(spool_dir)).records == 0


# -- segments left by other processes in a shared spool directory ---------------------------

# A process that spools to the shared directory (its broker is unreachable) and dies: either
# cleanly (close() seals its segment) or by SIGKILL (durability="spool": an orphaned open
# segment whose flock died with it).
_DEAD_WRITER_APP = r"""
import logging, os, signal, sys
sys.path.insert(0, sys.argv[1])
from mqlogging import MQHandler

url, spool, first, count, how = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
durability = "spool" if how == "kill" else "memory"
handler = MQHandler(url, spool=spool, durability=durability, close_timeout=1.0,
                    connect_timeout=0.5, retry_max=0.5)
logger = logging.getLogger("app")
logger.setLevel(logging.INFO)
logger.propagate = False
logger.addHandler(handler)
for i in range(first, first + count):
    logger.info("record %d", i, extra={"seq": i})
if how == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
handler.close()
print("SPOOLED", handler.stats()["spooled"], flush=True)
"""


def test_live_handlers_adopt_segments_of_dead_processes(
    rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path, outage: Outage
) -> None:
    """Two live handlers share a spool directory and are delivering directly (their own
    backlog long replayed) when two other processes of the same application (same
    destination: a spool directory serves one) leave records there during a broker outage:
    one exits with the broker unreachable (a sealed segment), one is killed -9 (an orphaned
    open segment). Once the broker is back, the live handlers pick both up on their periodic
    check and deliver every one of those records exactly once (claims: no segment goes out
    twice), their own records too, and the directory ends empty. (All reach the broker through
    the ``outage`` fixture's proxy: the outage cuts it, every connection reset and new ones
    refused, as a crashed broker's.)"""
    broker, url = outage(amqp_url(rabbitmq, queue_name), rabbitmq.amqp_port)
    broker.start()
    handlers = [MQHandler(url, spool=spool_dir) for _ in range(2)]
    logger = logging.getLogger("tests.handlers.mp.adopt")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in handlers:
        logger.addHandler(h)  # each record goes through both handlers
    n = 2000
    try:
        for i in range(100):
            logger.info("live record %d", i, extra={"seq": i})
        assert all(h.flush(20) for h in handlers)
        broker.cut()
        for first, how in ((10_000, "exit"), (20_000, "kill")):
            run = subprocess.run(
                [sys.executable, "-c", _DEAD_WRITER_APP, str(ROOT), url, str(spool_dir),
                 str(first), str(n), how],
                check=False, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert run.returncode == (0 if how == "exit" else -signal.SIGKILL), run.stderr
        broker.restore()
        assert inspect_spool(str(spool_dir)).records == 2 * n  # stranded, for now
        for i in range(100, 200):
            logger.info("live record %d", i, extra={"seq": i})
        wanted = set(range(200)) | set(range(10_000, 10_000 + n)) | set(range(20_000, 20_000 + n))
        docs = drain_amqp(rabbitmq, queue_name, wanted, timeout=30)
        wait_until(lambda: inspect_spool(str(spool_dir)).records == 0, 10, message="spool emptied")
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()
    got = seqs(docs)
    adopted = sorted(s for s in got if s >= 10_000)
    assert adopted == sorted(wanted - set(range(200)))  # each exactly once
    assert sorted(s for s in got if s < 200) == sorted(list(range(200)) * 2)  # one per handler
    for first in (10_000, 20_000):  # a dead writer's records keep their order
        assert [s for s in got if first <= s < first + n] == list(range(first, first + n))
