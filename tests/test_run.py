"""``mqlogging run -- CMD``: a command's output lines become records; the job itself is unchanged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.brokers import RabbitMQ
from harness.drain import amqp_url, drain_amqp
from harness.helpers import free_port, wait_until


def _run(*args: str, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "mqlogging", "run", *args],
        capture_output=True, timeout=timeout, check=False, **kwargs,
    )  # fmt: skip


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


CHILD = r"""
import sys
for i in range(200):
    print(f"out {i}", flush=True)
    if i % 50 == 0:
        print(f"err {i}", file=sys.stderr, flush=True)
sys.exit(3)
"""


def test_lines_shipped_passed_through_and_exit_status(rabbitmq: RabbitMQ, queue_name: str) -> None:
    """Every stdout line is an INFO record and every stderr line a WARNING record, in order per
    stream, with the static fields, ``stream``, ``child.pid`` and ``command``; the output is
    passed through byte for byte; the exit status is the command's; one last ERROR record
    reports it."""
    url = amqp_url(rabbitmq, queue_name)
    result = _run("--to", url, "--static", "site=CERN", "--static", "labels.job=42",
                  "--logger", "pilot", "--", *_py(CHILD))  # fmt: skip
    assert result.returncode == 3
    assert result.stdout == b"".join(b"out %d\n" % i for i in range(200))
    assert result.stderr == b"".join(b"err %d\n" % i for i in range(0, 200, 50))
    docs = drain_amqp(rabbitmq, queue_name, 205)
    assert len(docs) == 205
    outs = [d for d in docs if d.get("stream") == "stdout"]
    errs = [d for d in docs if d.get("stream") == "stderr"]
    assert [f"out {i}" for i in range(200)] == [d["message"] for d in outs]
    assert {"info"} == {d["log"]["level"] for d in outs}
    assert [f"err {i}" for i in range(0, 200, 50)] == [d["message"] for d in errs]
    assert {"warning"} == {d["log"]["level"] for d in errs}
    last = docs[-1]
    assert (last["log"]["level"], last["exit_code"]) == ("error", 3)
    pids = {d["child"]["pid"] for d in docs}
    assert len(pids) == 1
    assert pids != {d["process"]["pid"] for d in docs}
    for doc in docs:
        assert doc["site"] == "CERN"
        assert doc["labels"] == {"job": "42"}
        assert doc["log"]["logger"] == "pilot"
        assert doc["command"].startswith(sys.executable)
    assert len({d["event"]["id"] for d in docs}) == 205


def test_binary_and_very_long_lines(rabbitmq: RabbitMQ, queue_name: str) -> None:
    """Non-UTF-8 bytes become U+FFFD in the record (the terminal gets the raw bytes); a 2 MB
    line is one record, cut to the record limit and marked; the line after it is intact."""
    code = (
        "import sys; w = sys.stdout.buffer.write; w(b'caf\\xe9 \\xff\\xfe ok\\n');"
        "w(b'x' * 2_000_000 + b'\\n'); w(b'after\\n'); w(b'no newline at the end')"
    )
    result = _run("--to", amqp_url(rabbitmq, queue_name), "--max-record-bytes", "65536",
                  "--", *_py(code))  # fmt: skip
    assert result.returncode == 0
    expected = b"caf\xe9 \xff\xfe ok\n" + b"x" * 2_000_000 + b"\nafter\nno newline at the end"
    assert result.stdout == expected
    docs = drain_amqp(rabbitmq, queue_name, 5)
    assert len(docs) == 5
    assert docs[0]["message"] == "caf\ufffd \ufffd\ufffd ok"
    long_doc = docs[1]
    assert long_doc["mqlogging"]["truncated"] is True
    assert len(json.dumps(long_doc)) <= 65536 + 1000
    assert long_doc["line_bytes_dropped"] > 0
    assert [d["message"] for d in docs[2:4]] == ["after", "no newline at the end"]


def test_offline_spools_then_replays(rabbitmq: RabbitMQ, queue_name: str, tmp_path: Path) -> None:
    """With no broker reachable the records go to the spool within the close deadline, the
    command's status is kept, stderr says how to replay, and `spool replay` ships every record
    once."""
    spool = tmp_path / "spool"
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/?exchange=&queue={queue_name}"
    result = _run("--to", dead, "--spool", str(spool), "--close-timeout", "1",
                  "--", *_py("for i in range(30): print(i)"))  # fmt: skip
    assert result.returncode == 0
    assert result.stdout == b"".join(b"%d\n" % i for i in range(30))
    assert b"31 record(s) kept in" in result.stderr
    assert b"mqlogging spool replay" in result.stderr
    replay = subprocess.run(
        [sys.executable, "-m", "mqlogging", "spool", "replay", str(spool),
         "--to", amqp_url(rabbitmq, queue_name)],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    docs = drain_amqp(rabbitmq, queue_name, 31)
    assert [str(i) for i in range(30)] == [d["message"] for d in docs[:30]]
    assert docs[30]["exit_code"] == 0


def test_sigterm_is_forwarded(rabbitmq: RabbitMQ, queue_name: str) -> None:
    """SIGTERM to `mqlogging run` reaches the command, whose handler's output is still shipped;
    the exit status is the one the command chose."""
    code = (
        "import signal, sys, time\n"
        "def bye(*_):\n    print('got TERM', flush=True); sys.exit(7)\n"
        "signal.signal(signal.SIGTERM, bye)\nprint('ready', flush=True)\n"
        "while True: time.sleep(0.05)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "mqlogging", "run", "--to", amqp_url(rabbitmq, queue_name),
         "--", *_py(code)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 7
        assert proc.stdout.read() == b"got TERM\n"
    finally:
        if proc.poll() is None:
            proc.kill()
    docs = drain_amqp(rabbitmq, queue_name, 3)
    assert [d["message"] for d in docs[:2]] == ["ready", "got TERM"]
    assert docs[2]["exit_code"] == 7


def test_killed_command_reports_signal(rabbitmq: RabbitMQ, queue_name: str) -> None:
    """A command killed by a signal exits `mqlogging run` with 128+N, as a shell reports it."""
    result = _run("--to", amqp_url(rabbitmq, queue_name),
                  "--", *_py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))  # fmt: skip
    assert result.returncode == 128 + signal.SIGKILL
    docs = drain_amqp(rabbitmq, queue_name, 1)
    assert "killed by signal 9" in docs[0]["message"]


def test_url_from_environment_and_usage_errors(rabbitmq: RabbitMQ, queue_name: str) -> None:
    """MQLOGGING_URL is the default endpoint; a missing command, endpoint or program is one
    clear line (127 for a program that does not exist, like a shell)."""
    env = {**os.environ, "MQLOGGING_URL": amqp_url(rabbitmq, queue_name)}
    assert _run("--", "true", env=env).returncode == 0
    wait_until(lambda: rabbitmq.queue_depth(queue_name) == 1, message="exit record")
    env.pop("MQLOGGING_URL")
    missing = _run("--", "true", env=env)
    assert (missing.returncode, missing.stderr.count(b"\n")) == (2, 1)
    assert b"MQLOGGING_URL" in missing.stderr
    assert _run("--to", amqp_url(rabbitmq, queue_name)).returncode == 2
    absent = _run("--to", amqp_url(rabbitmq, queue_name), "--", "/nonexistent/program")
    assert absent.returncode == 127
    assert b"cannot run /nonexistent/program" in absent.stderr
