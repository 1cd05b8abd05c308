"""The harness package's own seams (``harness/``): how it is found, and its new public helpers.

The rest of the suite, the benchmarks and ``make faults`` rely on these: the harness imports
from the repository root with no ``sys.path`` edits and without pytest, ``reserve_port`` keeps
broker ports out of the ephemeral range, and ``drain_amqp`` counts every delivery (duplicates
included) and acknowledges everything it returns.
"""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.brokers import RabbitMQ, reserve_port
from harness.drain import drain_amqp, seqs
from harness.proxy import in_front

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["brokers", "collector", "drain", "faults", "helpers", "tls", "tls_brokers"]


def _from_root(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python *args`` in the repository root with no PYTHONPATH: only what Python puts
    on ``sys.path`` by itself (the root, for ``-c`` and ``-m``) may find the harness."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, *args],
        cwd=str(ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestFoundFromTheRoot:
    def test_every_module_imports_without_pytest(self) -> None:
        """Each harness module imports from the repository root, and none of them pulls in
        pytest (the benchmarks and ``make faults`` run without it)."""
        imports = "; ".join(f"import harness.{name}" for name in MODULES)
        code = f"import sys; {imports}; print('pytest' in sys.modules, harness.__file__)"
        proc = _from_root("-c", code)
        assert proc.returncode == 0, proc.stderr
        uses_pytest, where = proc.stdout.split()
        assert uses_pytest == "False"
        assert Path(where).parent == ROOT / "harness"  # this checkout's, not another one's

    @pytest.mark.parametrize("module", ["benchmarks.run", "harness.faults"])
    def test_runners_start_as_modules(self, module: str) -> None:
        """``python -m benchmarks.run`` (``make bench``) and ``python -m harness.faults``
        (``make faults``) start from the root: their imports resolve (``--help`` exits 0)."""
        proc = _from_root("-m", module, "--help")
        assert proc.returncode == 0, proc.stderr
        assert "usage:" in proc.stdout

    def test_no_sys_path_edits(self) -> None:
        """Neither the harness nor the benchmarks edit ``sys.path`` to find each other."""
        offenders = []
        for path in sorted([*ROOT.glob("harness/*.py"), *ROOT.glob("benchmarks/*.py")]):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Attribute) and ast.unparse(node) == "sys.path":
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
        assert offenders == []


class TestReservePort:
    def test_port_is_free_below_the_ephemeral_range_and_not_taken(self) -> None:
        """A reserved port can be bound now, lies below the kernel's ephemeral range (so no
        outgoing connection takes it while a broker restarts) and avoids ``taken``."""
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        first = reserve_port()
        second = reserve_port({first})
        assert first != second
        for port in (first, second):
            assert port < low
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))


class TestFreeze:
    def test_frozen_broker_accepts_but_never_answers_until_thawed(self, rabbitmq: RabbitMQ) -> None:
        """``freeze()`` black-holes the broker: TCP connects, the AMQP protocol header gets no
        answer; after ``thaw()`` the same handshake is answered (Connection.Start)."""
        header = b"AMQP\x00\x00\x09\x01"
        rabbitmq.freeze()
        try:
            with socket.create_connection(("127.0.0.1", rabbitmq.amqp_port), timeout=5) as sock:
                sock.sendall(header)
                sock.settimeout(1.0)
                with pytest.raises(TimeoutError):
                    sock.recv(1)
        finally:
            rabbitmq.thaw()
        with socket.create_connection(("127.0.0.1", rabbitmq.amqp_port), timeout=5) as sock:
            sock.sendall(header)
            sock.settimeout(10.0)
            assert sock.recv(1) == b"\x01"  # a method frame: the broker speaks again
        rabbitmq.thaw()  # idempotent


class TestInFront:
    def test_refused_until_started_then_the_broker_answers(self, rabbitmq: RabbitMQ) -> None:
        """``in_front`` gives a URL whose port refuses connections (a broker that is down)
        until ``start()``; then the real broker behind it answers the AMQP handshake."""
        proxy, url = in_front(f"{rabbitmq.amqp_url}?queue=q", rabbitmq.amqp_port)
        try:
            assert url == f"amqp://guest:guest@127.0.0.1:{proxy.port}/?queue=q"
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", proxy.port), timeout=5).close()
            proxy.start()
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                sock.settimeout(10.0)
                assert sock.recv(1) == b"\x01"  # Connection.Start, from the broker
        finally:
            proxy.close()

    def test_a_url_to_another_port_is_refused(self) -> None:
        """A URL that does not go to the given port would make an "outage" that is none: a
        ValueError, not a silently healthy endpoint."""
        with pytest.raises(ValueError, match=r"does not go to 127\.0\.0\.1:5673"):
            in_front("amqp://guest:guest@127.0.0.1:5672/", 5673)


def _publish(rabbitmq: RabbitMQ, queue: str, numbers: list[int]) -> None:
    """Publish one persistent JSON document ``{"seq": n}`` per number, in order."""
    import pika

    with rabbitmq.amqp_channel() as ch:
        ch.queue_declare(queue, durable=True)
        ch.confirm_delivery()
        for n in numbers:
            body = json.dumps({"seq": n}).encode()
            props = pika.BasicProperties(message_id=f"m{n}", delivery_mode=2)
            ch.basic_publish("", queue, body, props)


class TestDrainAmqp:
    def test_returns_every_delivery_and_acknowledges_them(
        self, rabbitmq: RabbitMQ, queue_name: str
    ) -> None:
        """Draining by a set of ``seq`` values returns every message, the duplicate sent after
        them too (the idle phase), spanning more than one acknowledgement batch, and leaves
        the queue empty with nothing unacknowledged (a new consumer gets nothing back)."""
        wanted = list(range(1_200))
        _publish(rabbitmq, queue_name, [*wanted, 7])
        docs = drain_amqp(rabbitmq, queue_name, set(wanted), timeout=30)
        assert sorted(seqs(docs)) == sorted([*wanted, 7])
        assert {d["_mid"] for d in docs} == {f"m{n}" for n in wanted}
        assert rabbitmq.queue_depth(queue_name) == 0  # unacked ones would be back by now

    def test_missing_records_fail_at_the_deadline(
        self, rabbitmq: RabbitMQ, queue_name: str
    ) -> None:
        """Fewer records than expected: an AssertionError naming the count and the queue once
        the timeout passes (not a hang, not a silent short list)."""
        _publish(rabbitmq, queue_name, [0, 1, 2])
        started = time.monotonic()
        with pytest.raises(AssertionError, match=rf"3 records arrived in {queue_name}.*2 missing"):
            drain_amqp(rabbitmq, queue_name, {0, 1, 2, 3, 4}, timeout=1.0)
        assert time.monotonic() - started < 15  # generous: the deadline was 1 s
