"""``mqlogging tail``: a live view that shows every new record and takes none from the collector."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any

import pytest

from harness.brokers import ActiveMQ, RabbitMQ
from harness.helpers import free_port, wait_until
from harness.proxy import in_front
from mqlogging import JsonFormatter, MQHandler
from mqlogging._ids import new_id
from mqlogging._types import Message
from mqlogging.backends import open_consumer, open_producer
from mqlogging.backends.base import Tap
from mqlogging.errors import ConfigurationError, ConnectError
from mqlogging.tail import Filter, Printer, follow, normalise, render, select

N = 50


class Tail:
    """``python -m mqlogging tail ...`` in a subprocess; ``ready`` once it is subscribed."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mqlogging", "tail", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.banner = ""
        self.lines: list[str] = []
        self.notices: list[str] = []  # stderr after the banner
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def _read_notices(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.notices.append(line.rstrip("\n"))

    def wait_ready(self) -> str:
        """Block until the banner (printed once the tap is subscribed) is on stderr."""
        assert self.proc.stderr is not None
        self.banner = self.proc.stderr.readline()
        assert self.banner.startswith("mqlogging tail:"), self.banner + self.proc.stderr.read()
        threading.Thread(target=self._read_notices, daemon=True).start()
        return self.banner

    def wait_notice(self, text: str, timeout: float = 60.0) -> str:
        """Wait for a stderr line containing ``text`` (after :meth:`wait_ready`)."""
        found: str = wait_until(
            lambda: next((line for line in self.notices if text in line), None),
            timeout=timeout,
            message=f"{text!r} on the tail's stderr",
        )
        return found

    def finish(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def tails() -> Iterator[list[Tail]]:
    started: list[Tail] = []
    yield started
    for tail in started:
        tail.kill()


def _log(
    url: str, records: int, *, spool: Any = False, name: str = "app.tail", first: int = 0
) -> None:
    handler = MQHandler(url, spool=spool, close_timeout=10)
    logger = logging.Logger(name, logging.DEBUG)
    logger.addHandler(handler)
    for i in range(first, first + records):
        logger.info("record %d", i, extra={"seq": i})
    handler.close()
    assert handler.stats()["confirmed"] == records


def _consume_all(url: str, expected: int) -> list[dict[str, Any]]:
    """What a collector would get: every message of the queue, acked."""
    docs: list[dict[str, Any]] = []
    with open_consumer(url) as consumer:

        def more() -> bool:
            batch = consumer.fetch(1000, 0.5)
            consumer.ack(batch)
            docs.extend(json.loads(d.body) for d in batch)
            return len(docs) >= expected

        wait_until(more, timeout=30, message=f"{expected} records in the collector's queue")
        consumer.ack(extra := consumer.fetch(1000, 0.5))
        docs.extend(json.loads(d.body) for d in extra)
    return docs


def _seqs(lines: list[str]) -> list[int]:
    return [json.loads(line)["seq"] for line in lines]


class TestCopies:
    def test_amqp_sees_new_records_and_the_collector_keeps_them(
        self, rabbitmq: RabbitMQ, queue_name: str, tails: list[Tail]
    ) -> None:
        """AMQP: the tail's own exclusive queue gets a copy of every record, in order; the
        collector's queue still holds all of them; the tap queue is gone after exit."""
        url = f"{rabbitmq.amqp_url}?exchange={queue_name}-x&queue={queue_name}"
        _log(url, 1)  # the backlog: not shown (a copy of *new* records)
        tail = Tail(url, "--json", "--count", str(N))
        tails.append(tail)
        banner = tail.wait_ready()
        assert "exclusive queue amq.gen-" in banner
        assert "guest:guest" not in banner
        _log(url, N)
        assert tail.finish() == 0
        assert list(range(N)) == _seqs(tail.lines)
        assert rabbitmq.queue_depth(queue_name) == N + 1
        tap = banner.split("exclusive queue ")[1].split()[0]
        wait_until(lambda: not rabbitmq.queue_exists(tap), message="tap queue deleted")

    def test_stomp_rabbitmq_exchange_tap(
        self, rabbitmq: RabbitMQ, queue_name: str, tails: list[Tail]
    ) -> None:
        """STOMP on RabbitMQ with --exchange: a /queue/ URL is tapped through
        /exchange/NAME/#; every record shown once, none taken from the queue."""
        amqp = f"{rabbitmq.amqp_url}?exchange={queue_name}-x&queue={queue_name}"
        _log(amqp, 1)  # declares the exchange the tail binds to
        stomp = f"{rabbitmq.stomp_url}/queue/{queue_name}"
        tail = Tail(stomp, "--exchange", f"{queue_name}-x", "--json", "--count", str(N))
        tails.append(tail)
        assert f"/exchange/{queue_name}-x/#" in tail.wait_ready()
        _log(amqp, N)
        assert tail.finish() == 0
        assert list(range(N)) == _seqs(tail.lines)
        assert rabbitmq.queue_depth(queue_name) == N + 1

    def test_stomp_topic_subscription(
        self, rabbitmq: RabbitMQ, queue_name: str, tails: list[Tail]
    ) -> None:
        """A /topic/ destination is subscribed as it is: every subscriber gets its copy."""
        url = f"{rabbitmq.stomp_url}/topic/{queue_name}"
        tail = Tail(url, "--json", "--count", str(N))
        tails.append(tail)
        assert "own subscription to /topic/" in tail.wait_ready()
        _log(url, N)
        assert tail.finish() == 0
        assert list(range(N)) == _seqs(tail.lines)

    def test_activemq_queue_browser(
        self, activemq: ActiveMQ, queue_name: str, tails: list[Tail]
    ) -> None:
        """ActiveMQ /queue/: a repeated queue browser shows each new record exactly once and
        the consumer still gets every record (browsing consumes nothing)."""
        url = f"{activemq.stomp_url}/queue/{queue_name}"
        _log(url, 3)  # backlog, hidden without --backlog
        tail = Tail(url, "--json", "--count", str(N))
        tails.append(tail)
        assert "queue browser" in tail.wait_ready()
        _log(url, N)
        assert tail.finish() == 0
        assert list(range(N)) == _seqs(tail.lines)
        docs = _consume_all(url, N + 3)
        assert [0, 1, 2, *range(N)] == [d["seq"] for d in docs]

    def test_amqp_reconnects_after_a_broker_restart(
        self, rabbitmq: RabbitMQ, queue_name: str, tails: list[Tail]
    ) -> None:
        """The broker is killed under a running tail and started again: the tail says once
        that it lost the connection (naming the gap), reconnects by itself with a new tap
        queue, and shows the records published after that, each once, after the earlier ones."""
        url = f"{rabbitmq.amqp_url}?exchange={queue_name}-x&queue={queue_name}"
        _log(url, 1)
        tail = Tail(url, "--json", "--count", str(2 * N))
        tails.append(tail)
        tail.wait_ready()
        _log(url, N)
        wait_until(lambda: len(tail.lines) >= N, message=f"{N} records before the restart")
        rabbitmq.kill()
        assert "records published meanwhile are not shown" in tail.wait_notice("retrying")
        rabbitmq.start()
        assert "guest:guest" not in tail.wait_notice("reconnected", timeout=90)
        _log(url, N, first=N)
        assert tail.finish() == 0
        assert list(range(2 * N)) == _seqs(tail.lines)
        assert sum("retrying" in line for line in tail.notices) == 1

    def test_activemq_browser_reconnects_without_repeating(
        self, activemq: ActiveMQ, queue_name: str, tails: list[Tail]
    ) -> None:
        """ActiveMQ goes away under a browsing tail and comes back (the tail reaches it
        through :func:`harness.proxy.in_front`, cut and restored: every connection reset, new
        ones refused, then accepted): after reconnecting, the browser sees the queue's old
        messages again but shows only the new ones (the seen-set survives)."""
        url = f"{activemq.stomp_url}/queue/{queue_name}"
        proxy, tail_url = in_front(url, activemq.stomp_port)
        proxy.start()
        try:
            tail = Tail(tail_url, "--json", "--count", str(2 * N))
            tails.append(tail)
            tail.wait_ready()
            _log(url, N)
            wait_until(lambda: len(tail.lines) >= N, message=f"{N} records before the outage")
            proxy.cut()
            tail.wait_notice("retrying")
            proxy.restore()
            tail.wait_notice("reconnected", timeout=90)
            _log(url, N, first=N)
            assert tail.finish() == 0
        finally:
            proxy.close()
        assert list(range(2 * N)) == _seqs(tail.lines)
        assert [d["seq"] for d in _consume_all(url, 2 * N)] == list(range(2 * N))

    def test_local_spool_read_only(self, tmp_path: Path, tails: list[Tail]) -> None:
        """local://: the spool files are followed without claiming or committing anything;
        --backlog shows the waiting records first; the collector then gets every record."""
        url = f"local://{tmp_path / 'spool'}"
        _log(url, 5)
        tail = Tail(url, "--json", "--backlog", "--count", str(N + 5))
        tails.append(tail)
        assert "read-only" in tail.wait_ready()
        _log(url, N)
        assert tail.finish() == 0
        assert [*range(5), *range(N)] == _seqs(tail.lines)
        assert not list((tmp_path / "spool").glob("*.ack"))
        assert not list((tmp_path / "spool").glob("*.lock"))
        docs = _consume_all(url, N + 5)
        assert [*range(5), *range(N)] == [d["seq"] for d in docs]


class TestCommand:
    def test_filters_select_records(
        self, rabbitmq: RabbitMQ, queue_name: str, tails: list[Tail]
    ) -> None:
        """--level, --logger and --field (dotted, into ECS objects) combine; non-matching
        records are not printed."""
        url = f"{rabbitmq.amqp_url}?exchange={queue_name}-x&queue={queue_name}"
        tail = Tail(
            url, "--json", "--count", "3", "--level", "warning", "--logger", "billing",
            "--field", "service.name=shop", "--field", "user=bob",
        )  # fmt: skip
        tails.append(tail)
        tail.wait_ready()
        handler = MQHandler(url, spool=False, static_fields={"service": "shop"})
        for name in ("billing", "billing.db", "billingx", "other"):
            logger = logging.Logger(name)
            logger.addHandler(handler)
            for level in (logging.INFO, logging.WARNING, logging.ERROR):
                for user in ("bob", "eve"):
                    logger.log(level, "%s %s", name, level, extra={"user": user})
        handler.close()
        assert tail.finish() == 0
        shown = [(d["log"]["logger"], d["log"]["level"]) for d in map(json.loads, tail.lines)]
        assert shown == [("billing", "warning"), ("billing", "error"), ("billing.db", "warning")]

    def test_human_output_without_colour_when_piped(
        self, rabbitmq: RabbitMQ, queue_name: str, tails: list[Tail]
    ) -> None:
        """Not a terminal: no escape codes; level, logger, message, extras and the indented
        traceback are on the lines."""
        url = f"{rabbitmq.amqp_url}?exchange={queue_name}-x&queue={queue_name}"
        tail = Tail(url, "--count", "1")
        tails.append(tail)
        tail.wait_ready()
        handler = MQHandler(url, spool=False)
        logger = logging.Logger("app.pay")
        logger.addHandler(handler)
        try:
            raise ValueError("bad card")
        except ValueError:
            logger.exception("payment failed", extra={"order": 7})
        handler.close()
        assert tail.finish() == 0
        text = "\n".join(tail.lines)
        assert "\x1b[" not in text
        assert "ERROR    app.pay payment failed  order=7" in tail.lines[0]
        assert "    Traceback (most recent call last):" in tail.lines
        assert tail.lines[-1] == "    ValueError: bad card"

    @pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
    def test_interrupt_exits_zero(self, tmp_path: Path, tails: list[Tail], signum: int) -> None:
        """Ctrl-C (SIGINT) and SIGTERM end the tail with status 0 and no traceback."""
        (tmp_path / "spool").mkdir()
        tail = Tail(f"local://{tmp_path / 'spool'}")
        tails.append(tail)
        tail.wait_ready()
        tail.proc.send_signal(signum)
        assert tail.finish() == 0
        assert tail.proc.stderr is not None
        assert "Traceback" not in tail.proc.stderr.read()

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("amqp://guest:secret@127.0.0.1:{port}/?exchange=logs", "connection refused"),
            ("amqp://guest:secret@127.0.0.1:{port}/?exchange=&queue=q", "default exchange"),
            ("local:///nonexistent/spool", "does not exist"),
        ],
    )
    def test_errors_are_one_line(self, url: str, expected: str) -> None:
        """Unreachable brokers and untappable URLs: exit 2 with one line, no password."""
        result = subprocess.run(
            [sys.executable, "-m", "mqlogging", "tail", url.format(port=free_port())],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 2
        assert expected in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "secret" not in result.stderr

    def test_rabbitmq_stomp_queue_is_refused(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """A RabbitMQ /queue/ without --exchange cannot be copied: refused, and explained."""
        result = subprocess.run(
            [sys.executable, "-m", "mqlogging", "tail", f"{rabbitmq.stomp_url}/queue/{queue_name}"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 2
        assert "--exchange NAME" in result.stderr
        assert not rabbitmq.queue_exists(queue_name)


def _doc(schema: str, **kwargs: Any) -> bytes:
    formatter = JsonFormatter(schema=schema, static_fields={"service": "shop"})
    try:
        raise KeyError("sku")
    except KeyError:
        record = logging.LogRecord("app.cart", logging.ERROR, "cart.py", 3, "no %s", ("sku",),
                                   sys.exc_info())  # fmt: skip
    record.__dict__.update(kwargs)
    return formatter.format(record).encode()


class TestRendering:
    @pytest.mark.parametrize("schema", ["ecs", "logstash"])
    def test_schemas_normalise_alike(self, schema: str) -> None:
        """ECS and logstash documents map to the same time, level, logger, message, traceback
        and extras."""
        rec = normalise(_doc(schema, user="bob"))
        assert (
            rec.level, rec.levelno, rec.logger, rec.message,
        ) == ("ERROR", 40, "app.cart", "no sku")  # fmt: skip
        assert rec.trace.startswith("Traceback (most recent call last):")
        assert rec.trace.endswith("KeyError: 'sku'")
        assert rec.extras["user"] == "bob"
        assert datetime.fromisoformat(rec.time.replace("Z", "+00:00"))

    def test_flat_schema_traceback(self) -> None:
        """The flat schema's exc_info is shown as the traceback."""
        rec = normalise(_doc("flat"))
        assert rec.message == "no sku"
        assert rec.trace.endswith("KeyError: 'sku'")

    def test_colour_codes_follow_the_level(self) -> None:
        """With colour, the level is wrapped in its ANSI colour (red for ERROR)."""
        text = render(normalise(_doc("ecs")), colour=True)
        assert "\x1b[1;31mERROR" in text
        assert "\x1b[0m" in text

    def test_not_json_is_shown_not_fatal(self) -> None:
        """A body that is not JSON is shown as such and passes filters without a level."""
        rec = normalise(b"\xffplain text")
        assert "(not JSON)" in render(rec, colour=False)
        assert Filter()(rec)
        assert not Filter(level=logging.INFO)(rec)

    def test_truncated_records_are_marked(self) -> None:
        """A record the formatter truncated shows truncated=true among its extras."""
        formatter = JsonFormatter(max_bytes=2048)
        record = logging.LogRecord("a", logging.INFO, "", 0, "x" * 10_000, (), None)
        rec = normalise(formatter.format(record).encode())
        assert rec.extras.get("truncated") is True
        assert "truncated=true" in render(rec, colour=False)


def test_help_says_which_mode() -> None:
    """--help documents how each URL kind is tapped without stealing records."""
    result = subprocess.run(
        [sys.executable, "-m", "mqlogging", "tail", "--help"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "COLUMNS": "100"},
    )  # fmt: skip
    assert result.returncode == 0
    for words in ("exclusive, auto-delete", "NEW records", "queue browser", "read-only"):
        assert words in result.stdout


# -- issue #11 defect 10: record text never reaches the terminal as control sequences ----------

_HOSTILE_LOGGER = "app.\x1b]0;owned\x07"
_HOSTILE_MESSAGE = "evil \x1b[2J\x1b]0;title\x07 c1=\x9b31m cr=\rhidden del=\x7f"
_RAW_DOC = (
    b'{"@timestamp":"2026-01-01T00:00:00.000000Z","ecs":{"version":"8"},'
    b'"log":{"level":"info","logger":"raw"},'
    b'"message":"lone \\ud800 bidi \\u202e nel \\u0085 bell \\u0007"}'
)
_NOT_JSON = b"\x1b]0;not json\x07 \x1b[2J text"
_C1_UTF8 = re.compile(rb"\xc2[\x80-\x9f]")


def _raw_controls(data: bytes) -> list[bytes]:
    """Control characters in ``data`` that a terminal would act on (tab and LF are fine)."""
    c0 = [bytes([b]) for b in data if (b < 0x20 and b not in (0x09, 0x0A)) or b == 0x7F]
    return c0 + _C1_UTF8.findall(data)


def _feed_hostile_records(url: str, raw_url: str) -> None:
    """Records with ESC, BEL, CR, DEL and C1 in every field, a lone surrogate, and a body that
    is not JSON."""
    handler = MQHandler(url, spool=False, close_timeout=10)
    logger = logging.Logger(_HOSTILE_LOGGER, logging.DEBUG)
    logger.addHandler(handler)
    try:
        raise ValueError("boom \x1b[5m\x07")
    except ValueError:
        logger.exception(_HOSTILE_MESSAGE, extra={"k\x1bey": "v\x07al\x85ue"})
    handler.close()
    assert handler.stats()["confirmed"] == 1
    with open_producer(raw_url) as producer:
        producer.publish_batch([Message(new_id(), _RAW_DOC), Message(new_id(), _NOT_JSON)])


def _run_tail_bytes(url: str, raw_url: str, *args: str) -> bytes:
    """Run a real tail on ``url``, feed it the hostile records and return its stdout bytes."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mqlogging", "tail", url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()
        assert banner.startswith(b"mqlogging tail:"), banner + proc.stderr.read()
        _feed_hostile_records(url, raw_url)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err.decode("utf-8", "replace")
    return out


class TestControlCharacters:
    def test_human_output_escapes_every_field(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """Through a real tail on RabbitMQ: ESC/BEL/CR/DEL/C1 in the logger name, message,
        extra key and value and exception text, a lone surrogate, and a non-JSON body all
        arrive (3 records shown) and the output bytes hold no raw control character; the
        escapes are visible instead."""
        url = f"{rabbitmq.amqp_url}?exchange={queue_name}-x&queue={queue_name}"
        out = _run_tail_bytes(url, url, "--count", "3", "--no-color")
        assert _raw_controls(out) == []
        text = out.decode("utf-8")
        assert "app.\\x1b]0;owned\\x07" in text
        assert "evil \\x1b[2J\\x1b]0;title\\x07 c1=\\x9b31m cr=\\x0dhidden del=\\x7f" in text
        assert "k\\x1bey=v\\x07al\\x85ue" in text
        assert "ValueError: boom \\x1b[5m\\x07" in text
        assert "lone \\ud800 bidi \\u202e nel \\x85 bell \\x07" in text
        assert "(not JSON) \\x1b]0;not json\\x07 \\x1b[2J text" in text

    def test_json_output_stays_json_and_escaped(self, rabbitmq: RabbitMQ, queue_name: str) -> None:
        """``--json``: one valid JSON line per JSON record, equal to the document sent, with
        DEL, C1, bidi controls and the lone surrogate as ``\\u`` escapes, never raw."""
        url = f"{rabbitmq.amqp_url}?exchange={queue_name}-x&queue={queue_name}"
        out = _run_tail_bytes(url, url, "--count", "2", "--json")
        assert _raw_controls(out) == []
        docs = [json.loads(line) for line in out.decode("utf-8").splitlines()]
        assert [_HOSTILE_MESSAGE, json.loads(_RAW_DOC)["message"]] == [d["message"] for d in docs]
        assert "\\u0085" in out.decode("utf-8")

    def test_colour_codes_are_the_only_escapes(self) -> None:
        """With colour on, the only ESC characters in a hostile record's rendering are the
        tail's own colour codes."""
        formatter = JsonFormatter()
        record = logging.LogRecord(
            _HOSTILE_LOGGER, logging.ERROR, "", 0, _HOSTILE_MESSAGE, (), None
        )
        text = render(normalise(formatter.format(record).encode()), colour=True)
        without_ours = re.sub(r"\x1b\[[0-9;]*m", "", text)
        assert _raw_controls(without_ours.encode()) == []


# -- the steps of the tail on their own: follow (a tap), select (normalise + filter), Printer --


class ScriptedTap(Tap):
    """An in-memory tap (as httpx's MockTransport): each poll returns or raises the next item."""

    mode = "scripted"

    def __init__(self, *script: list[bytes] | Exception) -> None:
        self._script = list(script)
        self.polls = 0

    def poll(self, timeout: float) -> list[bytes]:
        self.polls += 1
        item = self._script.pop(0) if self._script else []
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self._script.clear()


def _ecs(level: int, message: str = "m", logger: str = "app") -> bytes:
    record = logging.LogRecord(logger, level, "", 0, message, (), None)
    return JsonFormatter().format(record).encode()


class TestFollow:
    def test_a_lost_connection_is_reported_once_then_the_reconnect(self) -> None:
        """Polls that fail are retried; the loss is announced once (naming the gap), the
        reconnect once, and every body before and after comes through in order."""
        lost = ConnectError("connection lost", endpoint="amqp://h/")
        tap = ScriptedTap([b"1"], lost, lost, lost, [b"2", b"3"])
        notes: list[str] = []
        bodies = follow(tap, where="amqp://h/", notify=notes.append, retry_delay=0)
        assert list(islice(bodies, 3)) == [b"1", b"2", b"3"]
        assert notes == [
            "connection lost (amqp://h/); retrying every 0s "
            "(records published meanwhile are not shown)",
            "reconnected to amqp://h/",
        ]

    def test_a_configuration_error_is_not_retried(self) -> None:
        """A tap that cannot work as configured ends the tail instead of retrying forever."""
        tap = ScriptedTap(ConfigurationError("--exchange works on RabbitMQ only"))
        with pytest.raises(ConfigurationError, match="RabbitMQ only"):
            next(follow(tap, where="x", notify=print, retry_delay=0))
        assert tap.polls == 1


class TestSelectAndPrint:
    def test_select_normalises_and_filters(self) -> None:
        """Only the records the filter keeps come out, normalised, in order."""
        bodies = [_ecs(logging.INFO, "a"), _ecs(logging.ERROR, "b"), b"junk", _ecs(40, "c")]
        shown = [rec.message for rec in select(bodies, Filter.parse("warning"))]
        assert shown == ["b", "c"]

    def test_json_lines_skip_what_is_not_json_and_count_only_printed(self) -> None:
        """--json: a body that is not JSON is counted, not printed, and not counted towards
        --count; printing stops at the limit without reading further records."""
        out = io.StringIO()
        printer = Printer(out, as_json=True, colour=False)
        records = select([_ecs(20, "a"), b"junk", _ecs(20, "b"), _ecs(20, "c")], Filter())
        assert printer.print_all(records, limit=2) == 2
        assert [json.loads(line)["message"] for line in out.getvalue().splitlines()] == ["a", "b"]
        assert printer.skipped == 1
        assert next(records).message == "c"

    def test_human_lines_show_what_is_not_json(self) -> None:
        """Without --json every record is printed, a body that is not JSON as text."""
        out = io.StringIO()
        printer = Printer(out, as_json=False, colour=False)
        assert printer.print_all(select([b"junk", _ecs(20, "a")], Filter())) == 2
        assert out.getvalue().startswith("(not JSON) junk\n")
        assert printer.skipped == 0


class TestFilterParse:
    def test_levels_by_name_or_number(self) -> None:
        """A level name in any case or a number; an empty logger means any logger."""
        assert Filter.parse("Warning", "") == Filter(level=30)
        assert Filter.parse("15", "app", ["a.b=c=d"]) == Filter(15, "app", (("a.b", "c=d"),))

    @pytest.mark.parametrize(
        ("level", "fields", "expected"),
        [
            ("loud", [], "unknown level 'loud' for --level (known: DEBUG, INFO,"),
            (None, ["service.name"], "--field 'service.name': write KEY=VALUE"),
            (None, ["=x"], "--field '=x': write KEY=VALUE"),
        ],
    )
    def test_bad_flags_are_one_line_errors(
        self, level: str | None, fields: list[str], expected: str
    ) -> None:
        """An unknown level or a field without KEY= is refused in one line saying the form."""
        with pytest.raises(ConfigurationError) as info:
            Filter.parse(level, None, fields)
        assert str(info.value).startswith(expected)
        assert "\n" not in str(info.value)


class TestHostileBodies:
    def test_a_deeply_nested_body_is_text_not_a_crash(self) -> None:
        """A body nested beyond the interpreter's recursion limit is shown as text."""
        raw = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
        rec = normalise(raw)
        assert rec.doc is None
        assert render(rec, colour=False).startswith("(not JSON) {")

    def test_a_user_field_does_not_change_the_schema(self) -> None:
        """A ``flat`` record is read as flat even when a user field is called ``@version``
        (the logstash marker): its time is not repeated among the extras."""
        record = logging.LogRecord("a", logging.INFO, "", 0, "hi", (), None)
        record.__dict__["@version"] = "7"
        rec = normalise(JsonFormatter(schema="flat").format(record).encode())
        assert rec.time
        assert "timestamp" not in rec.extras
