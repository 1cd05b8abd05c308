"""Hostile cases for the handler and its pipeline (issue #12 review), counted end to end at a
real broker: offers racing close(), close_timeout=0, dictConfig while records flow, recycled pool
workers, os.fork() children, full queues racing close() to a stuck broker; and two regressions
the review found in the refactor: two handlers over different transports must not ship each
other's client-library records (at DEBUG they fed each other forever), and ``None`` for a
required number is a one-line configuration error.
"""

from __future__ import annotations

import logging
import logging.config
import threading
from pathlib import Path
from typing import Any

import pytest

from harness.brokers import RabbitMQ
from harness.drain import amqp_url, drain_amqp, seqs, stomp_url
from harness.helpers import unique_name, wait_until
from mqlogging.cli.spool import replay_spool
from mqlogging.errors import ConfigurationError
from mqlogging.handlers import MQHandler


def _client_records(docs: list[dict[str, Any]], root: str) -> list[dict[str, Any]]:
    """The documents of ``docs`` logged by logger ``root`` (or its children)."""
    out = []
    for d in docs:
        name = str(d.get("log", {}).get("logger", ""))
        if name.partition(".")[0] == root:
            out.append(d)
    return out


def test_cross_handler_client_library_records_stay_out(rabbitmq: RabbitMQ) -> None:
    """An AMQP handler and a STOMP handler on the root logger at DEBUG: neither ships the
    other's client-library chatter (pika/stomp records), so neither can feed the other.

    Found by the #12 review: when a handler ignored only its own transports' loggers, the STOMP
    handler shipped pika's records written by the AMQP handler's sender thread and the AMQP
    handler shipped stomp.py's records of the STOMP handler's sender and receiver."""
    q_amqp, q_stomp = unique_name("r2a"), unique_name("r2s")
    root = logging.getLogger()
    old_level = root.level
    a = MQHandler(amqp_url(rabbitmq, q_amqp), spool=False)
    b = MQHandler(stomp_url(rabbitmq, q_stomp), spool=False)
    root.setLevel(logging.DEBUG)
    root.addHandler(a)
    root.addHandler(b)
    try:
        app = logging.getLogger("app.review2.cross")
        for i in range(20):
            app.info("record %d", i, extra={"seq": i})
        assert a.flush(10)
        assert b.flush(10)
    finally:
        root.removeHandler(a)
        root.removeHandler(b)
        root.setLevel(old_level)
        a.close()
        b.close()
    docs_a = drain_amqp(rabbitmq, q_amqp, 20, timeout=30)
    stomp_in_a = _client_records(docs_a, "stomp")
    assert sorted(seqs([d for d in docs_a if "seq" in d])) == list(range(20))
    print("AMQP queue:", len(docs_a), "docs;", len(stomp_in_a), "from stomp loggers")
    print("ignored:", a.stats()["ignored"], b.stats()["ignored"])
    assert stomp_in_a == []


def test_offers_racing_close_lose_nothing(
    rabbitmq: RabbitMQ, queue_name: str, tmp_path: Path
) -> None:
    """8 threads log 500 records each while the main thread calls close(): every record is
    confirmed or spooled; a second handler on the spool ships the rest; each seq arrives."""
    spool = tmp_path / "spool"
    url = amqp_url(rabbitmq, queue_name)
    handler = MQHandler(url, spool=str(spool), queue_size=200, batch_size=50)
    logger = logging.getLogger(f"app.review2.race.{queue_name}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    n_threads, per = 8, 1500
    started = threading.Barrier(n_threads + 1)

    def work(t: int) -> None:
        started.wait()
        for i in range(per):
            logger.info("r", extra={"seq": t * per + i})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    started.wait()
    wait_until(lambda: handler.stats()["confirmed"] > 0, timeout=20, message="first confirm")
    handler.close()
    for th in threads:
        th.join()
    logger.removeHandler(handler)
    st = handler.stats()
    print("stats:", st["confirmed"], st["spooled"], st["dropped"])
    replay_spool(str(spool), url)
    docs = drain_amqp(rabbitmq, queue_name, n_threads * per, timeout=30)
    got = seqs(docs)
    assert sorted(set(got)) == list(range(n_threads * per))
    st = handler.stats()
    assert not st["dropped"], st["dropped"]


def test_close_timeout_zero_loses_nothing(
    rabbitmq: RabbitMQ, queue_name: str, tmp_path: Path
) -> None:
    """close_timeout=0 while 3,000 records flow: close() returns at once and the spool holds
    whatever was not confirmed; a second handler ships it (every seq arrives)."""
    spool = tmp_path / "spool"
    url = amqp_url(rabbitmq, queue_name)
    handler = MQHandler(url, spool=str(spool), close_timeout=0)
    logger = logging.getLogger(f"app.review2.ct0.{queue_name}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    for i in range(3000):
        logger.info("r", extra={"seq": i})
    handler.close()
    for i in range(3000, 3100):  # after close: to the spool
        logger.info("r", extra={"seq": i})
    logger.removeHandler(handler)
    # The sender close() gave up on still holds its claim on the spool segments until its
    # publish ends (about 2 s here): a replay started at once may find nothing to take yet.
    # Replay until every record not confirmed by the handler was shipped.
    shipped = [0]

    def replayed_all() -> bool:  # the exiting sender may still count a confirm meanwhile
        shipped[0] += replay_spool(str(spool), url).records
        return shipped[0] + handler.stats()["confirmed"] >= 3100

    wait_until(replayed_all, timeout=60, message="the spool replays")
    docs = drain_amqp(rabbitmq, queue_name, set(range(3100)), timeout=30)
    assert sorted(set(seqs(docs))) == list(range(3100))


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO])
def test_two_handlers_do_not_feed_each_other(rabbitmq: RabbitMQ, level: int) -> None:
    """An AMQP handler and a STOMP handler on the root logger (DEBUG, INFO) go quiet once the
    application stops logging: neither handler's sending makes the other send.

    Found by the #12 review: the STOMP handler shipped the pika records of the AMQP handler's
    publishes, whose stomp.py frame records the AMQP handler shipped, and so on: a perpetual
    loop between the two handlers with no application record."""
    q_amqp, q_stomp = unique_name("r2a"), unique_name("r2s")
    root = logging.getLogger()
    old_level = root.level
    a = MQHandler(amqp_url(rabbitmq, q_amqp), spool=False)
    b = MQHandler(stomp_url(rabbitmq, q_stomp), spool=False)
    root.setLevel(level)
    root.addHandler(a)
    root.addHandler(b)
    try:
        logging.getLogger("app.review2.loop").info("one record", extra={"seq": 0})
        assert a.flush(10)
        assert b.flush(10)
        before = a.stats()["confirmed"] + b.stats()["confirmed"]
        done = threading.Event()
        done.wait(3.0)  # an idle period (no application record): nothing may be sent
        a.flush(10)
        b.flush(10)
        after = a.stats()["confirmed"] + b.stats()["confirmed"]
    finally:
        root.removeHandler(a)
        root.removeHandler(b)
        root.setLevel(old_level)
        a.close()
        b.close()
    print("confirmed before idle:", before, "after 3 s idle:", after)
    assert after == before


def test_dictconfig_while_records_flow_loses_nothing(
    rabbitmq: RabbitMQ, queue_name: str, tmp_path: Path
) -> None:
    """A thread logs 4,000 records while the main thread calls dictConfig three times (each
    closes the old handler while records flow): every seq reaches the queue, nothing is
    counted as dropped, nothing stays in the spool."""
    spool = tmp_path / "spool"
    url = amqp_url(rabbitmq, queue_name)
    name = f"review2.reconf.{queue_name}"
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"mq": {"class": "mqlogging.MQHandler", "endpoints": url, "spool": str(spool)}},
        "loggers": {name: {"handlers": ["mq"], "level": "INFO", "propagate": False}},
    }
    logger = logging.getLogger(name)
    n = 4000
    logging.config.dictConfig(config)
    closed: list[MQHandler] = []
    progress = threading.Semaphore(0)

    def work() -> None:
        for i in range(n):
            logger.info("r", extra={"seq": i})
            if i % 1000 == 999:
                progress.release()

    th = threading.Thread(target=work)
    th.start()
    for _ in range(3):
        assert progress.acquire(timeout=30)
        closed.extend(h for h in logger.handlers if isinstance(h, MQHandler))
        logging.config.dictConfig(config)
    th.join()
    (handler,) = logger.handlers
    assert isinstance(handler, MQHandler)
    try:
        wait_until(lambda: handler.flush(1), timeout=30, message="the last handler delivers")
    finally:
        logger.removeHandler(handler)
        handler.close()
    replay_spool(str(spool), url)  # whatever a closed handler spooled and nobody adopted
    docs = drain_amqp(rabbitmq, queue_name, set(range(n)), timeout=30)
    assert sorted(set(seqs(docs))) == list(range(n))
    for h in [*closed, handler]:
        assert not h.stats()["dropped"], h.stats()["dropped"]


def _pool_task(i: int) -> int:
    """Log 100 records with seq values i*100..i*100+99 (in a pool worker)."""
    log = logging.getLogger("review2.pool")
    for k in range(100):
        log.info("r", extra={"seq": i * 100 + k})
    return i


def test_pool_maxtasksperchild_workers_deliver_everything(
    rabbitmq: RabbitMQ, queue_name: str, tmp_path: Path
) -> None:
    """multiprocessing Pool(2, maxtasksperchild=1) runs 20 tasks of 100 records each; the
    workers are recycled after every task (they end with os._exit). After the pool is joined
    and the parent's handler flushed, every seq is at the queue (replaying what is spooled)."""
    import multiprocessing

    spool = tmp_path / "spool"
    url = amqp_url(rabbitmq, queue_name)
    handler = MQHandler(url, spool=str(spool))
    log = logging.getLogger("review2.pool")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        log.info("parent", extra={"seq": 100_000})
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(2, maxtasksperchild=1) as pool:
            assert sorted(pool.map(_pool_task, range(20))) == list(range(20))
            pool.close()
            pool.join()
        wait_until(lambda: handler.flush(1), timeout=30, message="parent flush")
    finally:
        log.removeHandler(handler)
        handler.close()
    replay_spool(str(spool), url)
    want = set(range(2000)) | {100_000}
    docs = drain_amqp(rabbitmq, queue_name, want, timeout=60)
    got = seqs(docs)
    print("arrived:", len(got), "distinct:", len(set(got)))
    assert set(got) == want


@pytest.mark.parametrize(
    "option", ["batch_size", "queue_size", "flush_interval", "block_timeout", "close_timeout"]
)
def test_none_for_a_required_number_is_a_one_line_error(option: str, tmp_path: Path) -> None:
    """``option: null`` (YAML/dictConfig) is refused at configuration time with a one-line
    ConfigurationError naming the option.

    Found by the #12 review: HandlerConfig skipped the bound check for every None value (meant
    for connect_timeout/timeout only), so the handler was built with None and then:
    batch_size=None raised TypeError in every emit() and the sender never sent;
    flush_interval=None killed the sender thread; block_timeout=None lost records at a full
    queue through handleError with no counter; close_timeout=None raised TypeError."""
    url = "amqp://guest:guest@127.0.0.1:1/?exchange=&queue=review2"
    built: list[MQHandler] = []
    try:
        with pytest.raises(ConfigurationError, match=option):
            built.append(MQHandler(url, spool=str(tmp_path / "spool"), **{option: None}))
    finally:
        for handler in built:
            handler.close()


def _forked(body: Any) -> None:
    """Run ``body()`` in an os.fork() child that exits with os._exit (status 0 if it returned)."""
    import os

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            body()
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert status == 0


def test_os_fork_children_of_open_and_closed_handlers(
    rabbitmq: RabbitMQ, queue_name: str, tmp_path: Path
) -> None:
    """A child forked while the handler is open delivers its own records (flush + close);
    a child forked after the parent's close() writes its records to the spool; the parent's
    queued records are never sent by a child. Every seq arrives exactly once."""
    spool = tmp_path / "spool"
    url = amqp_url(rabbitmq, queue_name)
    handler = MQHandler(url, spool=str(spool))
    log = logging.getLogger(f"review2.fork.{queue_name}")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)

    def child(first: int) -> None:
        for i in range(first, first + 300):
            log.info("c", extra={"seq": i})
        handler.flush(10)
        handler.close()

    for i in range(300):
        log.info("p", extra={"seq": i})
    _forked(lambda: child(1000))
    assert handler.flush(20)
    handler.close()
    _forked(lambda: child(2000))
    log.removeHandler(handler)
    replay_spool(str(spool), url)
    want = set(range(300)) | set(range(1000, 1300)) | set(range(2000, 2300))
    docs = drain_amqp(rabbitmq, queue_name, want, timeout=30)
    got = seqs(docs)
    assert sorted(got) == sorted(want)


@pytest.mark.parametrize("overflow", ["block", "spool", "drop"])
def test_full_queue_callers_racing_close_to_a_stuck_broker(
    overflow: str, rabbitmq: RabbitMQ, queue_name: str, tmp_path: Path
) -> None:
    """The broker accepts and never answers, so the queue (50) fills; 4 threads log 200
    records each under ``overflow``; close() (close_timeout=1) runs while they are blocked or
    spilling. close() returns within a bound, and every record is either in the spool or
    counted as dropped (drop: overflow), none twice; the spool replayed elsewhere delivers
    every record that was not counted."""
    from harness.helpers import BlackholeServer

    spool = tmp_path / "spool"
    with BlackholeServer() as hole:
        url = f"amqp://guest:guest@127.0.0.1:{hole.port}/?exchange=&queue={queue_name}"
        handler = MQHandler(
            url,
            spool=str(spool),
            overflow=overflow,
            queue_size=50,
            batch_size=10,
            block_timeout=10,
            close_timeout=1,
            connect_timeout=30,
            timeout=30,
        )
        log = logging.getLogger(f"review2.full.{queue_name}")
        log.propagate = False
        log.setLevel(logging.INFO)
        log.addHandler(handler)
        n_threads, per = 4, 200

        def work(t: int) -> None:
            for i in range(per):
                log.info("r", extra={"seq": t * per + i})

        threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        # The queue full, or (on a loaded machine, where the handshake to the black hole can
        # time out before the callers fill it) records already going to the spool: either way
        # close() below races callers that are blocked or spilling.
        wait_until(
            lambda: handler.stats()["queued"] >= 50 or handler.stats()["spooled"] > 0,
            timeout=30,
            message="queue full or spilling",
        )
        import time

        started = time.monotonic()
        handler.close()
        took = time.monotonic() - started
        for th in threads:
            th.join(30)
        log.removeHandler(handler)
    stats = handler.stats()
    print(
        overflow,
        "close took",
        round(took, 2),
        "dropped",
        stats["dropped"],
        "spooled",
        stats["spooled"],
    )
    assert took < 5
    dropped = sum(stats["dropped"].values())
    total = n_threads * per
    # The sender thread close() gave up on may still hold its claim on the spool segments until
    # its publish times out: replay until everything not counted as dropped was shipped.
    shipped = [0]

    def replayed_all() -> bool:
        shipped[0] += replay_spool(str(spool), amqp_url(rabbitmq, queue_name)).records
        return shipped[0] >= total - dropped

    wait_until(replayed_all, timeout=60, message="the spool replays")
    docs = drain_amqp(rabbitmq, queue_name, total - dropped, timeout=30)
    got = seqs(docs)
    assert len(got) == len(set(got)), "duplicates"
    assert len(got) + dropped == total
    if overflow != "drop":
        assert dropped == 0
