"""MQHandler flush/close deadlines, reconfiguration and start-up (issue #11, defects 2, 9, 11, 17).

Every test counts the records at a real broker queue: nothing lost, nothing twice.
"""

from __future__ import annotations

import logging
import logging.config
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harness.brokers import ActiveMQ, RabbitMQ
from harness.drain import amqp_url, drain_amqp, drain_stomp, seqs, stomp_url
from harness.helpers import BlackholeServer, wait_until
from harness.proxy import Outage, TcpProxy
from mqlogging.cli.spool import inspect_spool, replay_spool
from mqlogging.errors import ConfigurationError
from mqlogging.handlers import MQHandler

REPO = Path(__file__).resolve().parents[2]


def _emit(logger: logging.Logger, n: int) -> None:
    for i in range(n):
        logger.info("record %d", i, extra={"seq": i})


def _in_backoff(handler: MQHandler, failures: int) -> bool:
    """The (only) endpoint failed ``failures`` times in a row: its next retry is seconds away."""
    (endpoint,) = handler.stats()["endpoints"].values()
    return not endpoint["healthy"] and endpoint["failures"] >= failures


def _restart_when_backed_off(broker: ActiveMQ | TcpProxy, handler: MQHandler) -> float:
    """Wait until the endpoint is deep in its retry backoff, start ``broker`` (or let it answer
    again) and return the time it was up. The handler's endpoint is still in backoff then
    (retry_max is large)."""
    wait_until(lambda: _in_backoff(handler, 4), timeout=60, message="backoff")
    broker.start()
    return time.monotonic()


class TestCloseAfterOutage:
    """Defect 2: close()/flush() gave up while the endpoint was in retry backoff.

    "RabbitMQ is down" is the ``outage`` fixture (:func:`harness.proxy.in_front`): a port that
    refuses connections until the test lets them through to the broker (no 7 s stop and
    reboot); ActiveMQ is really killed and restarted (which costs about as much)."""

    def test_close_delivers_everything_after_the_outage_ended(
        self,
        rabbitmq: RabbitMQ,
        queue_name: str,
        spool_dir: Path,
        app_logger: Any,
        outage: Outage,
    ) -> None:
        """RabbitMQ is down while 3,000 records are logged; it comes back while the handler is in
        retry backoff; close() retries at once and delivers all 3,000 (once each, in order)
        well within close_timeout instead of returning at once with them in the spool."""
        n = 3000
        down, url = outage(amqp_url(rabbitmq, queue_name), rabbitmq.amqp_port)
        handler = MQHandler(
            url, spool=str(spool_dir), close_timeout=20, retry_max=30, batch_size=500
        )
        app_logger.addHandler(handler)
        _emit(app_logger, n)
        _restart_when_backed_off(down, handler)
        started = time.monotonic()
        handler.close()
        took = time.monotonic() - started
        stats = handler.stats()
        assert (stats["replayed"], stats["spool"]["records"], stats["dropped"]) == (n, 0, {})
        assert took < 20
        assert list(range(n)) == seqs(drain_amqp(rabbitmq, queue_name, n))

    def test_flush_waits_for_an_outage_that_ends_before_its_deadline(
        self,
        rabbitmq: RabbitMQ,
        queue_name: str,
        spool_dir: Path,
        app_logger: Any,
        outage: Outage,
    ) -> None:
        """flush(30) called while RabbitMQ is down and the endpoint in backoff keeps retrying;
        the broker comes back during the flush; flush returns True only once all 2,000 records
        are confirmed, and each arrives once."""
        n = 2000
        down, url = outage(amqp_url(rabbitmq, queue_name), rabbitmq.amqp_port)
        handler = MQHandler(url, spool=str(spool_dir), retry_max=30)
        app_logger.addHandler(handler)
        _emit(app_logger, n)
        restarted: list[float] = []
        starter = threading.Thread(
            target=lambda: restarted.append(_restart_when_backed_off(down, handler))
        )
        starter.start()
        try:
            assert handler.flush(60)
            done = time.monotonic()
        finally:
            starter.join()
        assert done >= restarted[0]  # it did not return while the broker was down
        stats = handler.stats()
        assert (stats["confirmed"], stats["spool"]["records"]) == (n, 0)
        assert list(range(n)) == seqs(drain_amqp(rabbitmq, queue_name, n))

    def test_shutdown_after_the_outage_ended_delivers(
        self,
        rabbitmq: RabbitMQ,
        queue_name: str,
        spool_dir: Path,
        app_logger: Any,
        outage: Outage,
    ) -> None:
        """logging.shutdown()'s flush() runs out of time while RabbitMQ is down; the broker is
        back before its close(): close() does not give up because the flush failed, it delivers
        all 3,000 records (once each, in order)."""
        n = 3000
        down, url = outage(amqp_url(rabbitmq, queue_name), rabbitmq.amqp_port)
        handler = MQHandler(url, spool=str(spool_dir), close_timeout=20, retry_max=30)
        app_logger.addHandler(handler)
        _emit(app_logger, n)
        assert not handler.flush(1)
        down.start()
        handler.close()
        stats = handler.stats()
        assert (stats["confirmed"], stats["spool"]["records"]) == (n, 0)
        assert list(range(n)) == seqs(drain_amqp(rabbitmq, queue_name, n))

    def test_shutdown_with_the_broker_still_down_waits_one_deadline(
        self,
        rabbitmq: RabbitMQ,
        queue_name: str,
        spool_dir: Path,
        app_logger: Any,
        outage: Outage,
    ) -> None:
        """flush() then close() (logging.shutdown()) with RabbitMQ down throughout: flush uses
        its deadline, close() sees a fresh attempt fail and returns within a bounded probe
        instead of a second full deadline; all 2,000 records are in the spool, and the next
        handler delivers each once when the broker is back."""
        n = 2000
        _, url = outage(amqp_url(rabbitmq, queue_name), rabbitmq.amqp_port)
        handler = MQHandler(url, spool=str(spool_dir), close_timeout=3)
        app_logger.addHandler(handler)
        _emit(app_logger, n)
        assert not handler.flush()
        started = time.monotonic()
        handler.close()
        assert time.monotonic() - started < 1.5
        assert inspect_spool(str(spool_dir)).records == n
        # The directory serves the proxy's destination: ship it to the broker explicitly.
        assert replay_spool(str(spool_dir), amqp_url(rabbitmq, queue_name)).records == n
        assert list(range(n)) == seqs(drain_amqp(rabbitmq, queue_name, n))

    def test_close_after_activemq_restart(
        self, activemq: ActiveMQ, queue_name: str, spool_dir: Path, app_logger: Any
    ) -> None:
        """The same with ActiveMQ (STOMP) killed and restarted: close() delivers all 5,000
        records spooled during the outage, none twice."""
        n = 5000
        url = stomp_url(activemq, queue_name)
        activemq.kill()
        handler = MQHandler(url, spool=str(spool_dir), close_timeout=30, retry_max=30)
        app_logger.addHandler(handler)
        _emit(app_logger, n)
        _restart_when_backed_off(activemq, handler)
        handler.close()
        stats = handler.stats()
        assert (stats["replayed"], stats["spool"]["records"]) == (n, 0)
        docs = drain_stomp(url, n)
        assert sorted(seqs(docs)) == list(range(n))


class TestShutdownTwice:
    """Defect 9: flush() after close() waited its full timeout on the stopped sender."""

    def test_second_shutdown_returns_at_once_and_nothing_is_lost(
        self, rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path, app_logger: Any
    ) -> None:
        """A broker that accepts connections and never answers: the first flush()+close()
        (what logging.shutdown() does) gives up within close_timeout plus the short probe, the
        second pair returns in under 1 s; the 500 records are all in the spool, and a later
        handler on a healthy RabbitMQ delivers each of them once."""
        n = 500
        with BlackholeServer() as hole:
            url = f"amqp://guest:guest@127.0.0.1:{hole.port}/"
            handler = MQHandler(url, spool=str(spool_dir), close_timeout=2, connect_timeout=30)
            app_logger.addHandler(handler)
            _emit(app_logger, n)
            started = time.monotonic()
            handler.flush()
            handler.close()
            first = time.monotonic() - started
            started = time.monotonic()
            handler.flush()
            handler.close()
            second = time.monotonic() - started
        assert first < 2 + 2  # close_timeout for the flush, then a bounded probe
        assert second < 1
        assert inspect_spool(str(spool_dir)).records == n
        # The directory serves the black hole's destination: ship it elsewhere explicitly.
        assert replay_spool(str(spool_dir), amqp_url(rabbitmq, queue_name)).records == n
        assert list(range(n)) == seqs(drain_amqp(rabbitmq, queue_name, n))


class TestReconfiguration:
    """Defect 17: a second dictConfig with a healthy broker stalled for close_timeout."""

    @pytest.mark.parametrize("transport", ["amqp", "stomp"])
    def test_second_dictconfig_is_quick_and_delivers_once(
        self,
        transport: str,
        rabbitmq: RabbitMQ,
        queue_name: str,
        spool_dir: Path,
        capfd: pytest.CaptureFixture[str],
    ) -> None:
        """Two dictConfig calls in a row (Django's runserver does this), records logged just
        before the second: it returns well under close_timeout, nothing goes to stderr, every
        record reaches the queue exactly once, the spool is empty. Over AMQP (pika logs from the
        sender thread) and STOMP (stomp.py's receiver thread, which delivers the receipts the
        sender waits for, logs every frame)."""
        url = (
            amqp_url(rabbitmq, queue_name)
            if transport == "amqp"
            else stomp_url(rabbitmq, queue_name)
        )
        n = 50
        name = f"reconf.{queue_name}"
        config = {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {
                "mq": {
                    "class": "mqlogging.MQHandler",
                    "endpoints": url,
                    "spool": str(spool_dir),
                    "close_timeout": 5,
                }
            },
            "loggers": {name: {"handlers": ["mq"], "level": "INFO", "propagate": False}},
        }
        logger = logging.getLogger(name)
        try:
            logging.config.dictConfig(config)
            _emit(logger, n)
            started = time.monotonic()
            logging.config.dictConfig(config)
            took = time.monotonic() - started
            (handler,) = logger.handlers
            assert isinstance(handler, MQHandler)
            assert handler.flush(30)
            assert inspect_spool(str(spool_dir)).records == 0
        finally:
            for h in list(logger.handlers):
                logger.removeHandler(h)
                h.close()
        assert took < 2
        assert "mqlogging" not in capfd.readouterr().err
        assert list(range(n)) == seqs(drain_amqp(rabbitmq, queue_name, n))


_APP = """
import logging, logging.config, os, sys
from mqlogging.handlers import MQHandler
logging.config.dictConfig({
    "version": 1,
    "handlers": {"mq": {"class": "mqlogging.MQHandler", "endpoints": sys.argv[1]}},
    "root": {"handlers": ["mq"], "level": "INFO"},
})
(handler,) = logging.getLogger().handlers
print(handler.config.spool_dir)
for i in range(int(sys.argv[2])):
    logging.getLogger("app").info("record %d", i, extra={"seq": i})
"""


class TestAfterClose:
    """Records emitted after close() go to the spool (README) and are shipped (review 7, D5)."""

    def test_records_emitted_after_close_are_shipped_by_the_next_handler(
        self, rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path, app_logger: Any
    ) -> None:
        """Reconfiguration closes the old handler while another thread still holds and uses
        it: its records go to the spool. The next handler of the same process, on the same
        spool and destination, ships them: 100 emitted after close are sealed within the
        seal interval (about a second), then each is delivered once by the time the new
        handler's flush() returns True, and the spool is empty. Before the
        fix they sat in an open segment the closed handler kept locked until process exit."""
        url = amqp_url(rabbitmq, queue_name)
        old = MQHandler(url, spool=str(spool_dir), close_timeout=5)
        app_logger.addHandler(old)
        app_logger.info("before close", extra={"seq": -1})
        old.close()
        _emit(app_logger, 100)  # a thread still holding the old handler
        app_logger.removeHandler(old)
        # sealed at most once a second after close (review 9, R3): adoptable within that
        wait_until(lambda: not list(spool_dir.rglob("*.open")), timeout=5)
        new = MQHandler(url, spool=str(spool_dir), close_timeout=5)
        app_logger.addHandler(new)
        assert new.flush(10)
        assert new.stats()["spool"]["records"] == 0
        docs = drain_amqp(rabbitmq, queue_name, 101, timeout=10, idle=0.5)
        assert seqs(docs) == [-1, *range(100)]

    def test_records_after_close_do_not_make_one_segment_each(
        self, rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path, app_logger: Any
    ) -> None:
        """A thread still logging to a closed handler (a reconfiguration): its 500 records go
        to the spool, where another handler can ship them (D5). They are a stream, not
        stragglers: sealed at most once a second, they make a handful of segments (each one
        file, one open/write/rename, one claim when adopted), not 500, and all of them are
        sealed (adoptable) within about a second of the last write. Before the fix (review 9,
        R3) each record got a segment of its own: ~1 ms per emit() and 500 files to adopt."""
        handler = MQHandler(amqp_url(rabbitmq, queue_name), spool=spool_dir, close_timeout=2)
        app_logger.addHandler(handler)
        app_logger.info("before")
        assert handler.flush(5)
        handler.close()
        _emit(app_logger, 500)
        app_logger.removeHandler(handler)
        segments = [p for p in spool_dir.rglob("*") if p.suffix in {".jsonl", ".open"}]
        assert len(segments) <= 10, f"{len(segments)} segments for 500 records after close"
        wait_until(lambda: not list(spool_dir.rglob("*.open")), timeout=5)
        assert handler.stats()["spooled"] == 500


class TestDefaultSpoolDirectory:
    """Defect 11: start-up failed when the default spool directory could not be created."""

    def test_app_starts_when_home_is_not_creatable(
        self, rabbitmq: RabbitMQ, queue_name: str, tmp_path: Path
    ) -> None:
        """A process whose HOME cannot be created (here a path under a regular file, which
        fails for root too) and no XDG_STATE_HOME starts, says once on stderr where it spools
        instead (a private directory under TMPDIR), and delivers all 2,000 records once."""
        n = 2000
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        env = {k: v for k, v in os.environ.items() if k != "XDG_STATE_HOME"}
        env.update(HOME=str(blocker / "home"), TMPDIR=str(tmp_path / "tmp"), PYTHONPATH=str(REPO))
        (tmp_path / "tmp").mkdir()
        url = amqp_url(rabbitmq, queue_name)
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(_APP), url, str(n)],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        spool = done.stdout.strip()
        assert spool.startswith(str(tmp_path / "tmp" / f"mqlogging-{os.getuid()}"))
        complaints = [line for line in done.stderr.splitlines() if "spool" in line]
        assert len(complaints) == 1, done.stderr
        assert "spool=" in complaints[0]
        assert list(range(n)) == seqs(drain_amqp(rabbitmq, queue_name, n))

    def test_no_usable_directory_is_a_one_line_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When neither the default nor the temp fallback can be created, the handler refuses
        in one line that says to set spool=."""
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        monkeypatch.delenv("XDG_STATE_HOME", raising=False)
        monkeypatch.setenv("HOME", str(blocker / "home"))
        monkeypatch.setattr("tempfile.tempdir", str(blocker / "tmp"))
        with pytest.raises(ConfigurationError, match="spool=") as info:
            MQHandler("amqp://127.0.0.1/")
        assert "\n" not in str(info.value)
