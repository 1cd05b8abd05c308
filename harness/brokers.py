"""Private broker processes for the test suite and the benchmarks.

Each class runs one broker on free loopback ports inside its own temporary directory, so several
pytest sessions (or a benchmark next to a test run) can share a machine without touching each
other or the system brokers on the default ports:

- :class:`RabbitMQ` — a RabbitMQ node (AMQP 0-9-1 plus the STOMP plugin, optionally management),
- :class:`ActiveMQ` — an ActiveMQ 5 broker with a STOMP connector and a KahaDB store,
- :class:`NoidaES` — the noida-db Elasticsearch stand-in.

Guarantees:

- ``start()`` blocks until the broker really serves clients (a real AMQP/STOMP/HTTP handshake),
  or raises :class:`BrokerStartError` with the tail of the broker's log after a deadline.
- ``kill()`` SIGKILLs the broker's whole process group (no ``beam.smp``/``erl_child_setup``
  survives) and returns once every listening port is free again.
- ``start()`` after ``stop()``/``kill()`` reuses the same ports and data directory, so durable
  queues and persistent messages survive a restart.
- Broker processes never outlive the Python process that started them: they are stopped at
  interpreter exit (``atexit``), and a small supervisor that leads the broker's process group
  SIGKILLs the group as soon as its owner's pipe closes — even when the test run itself is
  SIGKILLed. (A child forked from the owner inherits the pipe and delays that until it exits.)

This module deliberately does not import pytest (the benchmarks import it) and imports the
client libraries (pika) lazily. Instances are not thread-safe: drive each one from one thread.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "HOST",
    "ActiveMQ",
    "Broker",
    "BrokerNotInstalled",
    "BrokerStartError",
    "NoidaES",
    "NoidaServer",
    "RabbitMQ",
    "noida_binary",
    "reserve_port",
]

HOST = "127.0.0.1"
RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
ACTIVEMQ_HOME = Path("/usr/share/activemq")
ACTIVEMQ_JAR = ACTIVEMQ_HOME / "bin" / "activemq.jar"
INSTALL_HINT = "run scripts/install-brokers.sh (or `make brokers`)"

# Ports for brokers are drawn below the kernel's ephemeral range (32768-60999 on Linux) so an
# outgoing client connection cannot grab a broker's port while the broker is down for a restart.
_PORT_RANGE = (20000, 32000)

# Leads the broker's process group. Forwards SIGTERM to the broker, exits with its status, and
# SIGKILLs the whole group when stdin (a pipe whose write end only the owner holds) reaches EOF:
# the owner closed it or died. Being a live group member, it keeps the pgid from being reused
# before the group is killed.
_SUPERVISOR = """
import os, signal, subprocess, sys, threading
child = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)
def _watch():
    try:
        sys.stdin.buffer.read()
    finally:
        os.killpg(0, signal.SIGKILL)
threading.Thread(target=_watch, daemon=True).start()
signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
signal.signal(signal.SIGINT, signal.SIG_IGN)
sys.exit(child.wait())
"""


class BrokerNotInstalled(RuntimeError):
    """The broker's binary is missing; the message says how to install it."""


class BrokerStartError(RuntimeError):
    """The broker did not become ready before the deadline (message has the log tail)."""

    def __init__(self, msg: str, *, exited: bool = False) -> None:
        super().__init__(msg)
        #: True when the process exited by itself (e.g. a port was taken), False on timeout.
        self.exited = exited


# --------------------------------------------------------------------------------------------
# process plumbing


def reserve_port(taken: set[int] | None = None) -> int:
    """Pick a random port outside the ephemeral range that can be bound right now.

    Public because broker variants with extra listeners (the TLS ones in
    :mod:`harness.tls_brokers`) need ports with the same guarantee: no outgoing client
    connection grabs them while the broker is down for a restart. *taken*: ports to avoid.
    """
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(*_PORT_RANGE)
        if taken and port in taken:
            continue
        if _port_free(port):
            return port
    msg = f"no free TCP port found in {_PORT_RANGE} on {HOST}"
    raise RuntimeError(msg)


def _port_free(port: int) -> bool:
    """True when a server could bind *port* now (SO_REUSEADDR, like the brokers bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _port_open(port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on *port*."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _group_members(pgid: int) -> list[int]:
    """PIDs (zombies excluded) whose process group is *pgid*, read from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 3 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def _wait(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


_LIVE: weakref.WeakSet[Broker] = weakref.WeakSet()
_DIR_PREFIX = "mqlt-"
_OWNER_FILE = ".mqlt-owner"


def _sweep_stale_dirs() -> None:
    """Delete broker directories left in the temp dir by runs that were SIGKILLed.

    A directory is stale when the PID in its owner file no longer exists (its brokers died
    with their owner, see ``_SUPERVISOR``). Directories without an owner file are left alone
    unless older than a day (another session may be creating one right now).
    """
    root = Path(tempfile.gettempdir())
    for path in root.glob(f"{_DIR_PREFIX}*"):
        try:
            owner = int((path / _OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > 86400 and path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
            continue
        if not Path(f"/proc/{owner}").exists():
            shutil.rmtree(path, ignore_errors=True)


def _cleanup_at_exit() -> None:
    for broker in list(_LIVE):
        # A forked child (multiprocessing, os.fork in a test) inherits _LIVE but must never
        # stop its parent's brokers.
        if broker._owner_pid == os.getpid():
            with contextlib.suppress(Exception):
                broker.close()


atexit.register(_cleanup_at_exit)


# --------------------------------------------------------------------------------------------
# base class


class Broker:
    """One private broker process in its own temporary directory.

    Subclasses set :attr:`name`, allocate ports in ``__init__``, and implement
    :meth:`_command`, :meth:`_env` and :meth:`_ready`.
    """

    name = "broker"
    #: Seconds ``start()`` waits for readiness before giving up.
    start_timeout = 60.0
    #: Seconds ``stop()`` waits for a graceful exit before it SIGKILLs.
    stop_timeout = 30.0

    def __init__(self, base_dir: str | os.PathLike[str] | None = None) -> None:
        self._owner_pid = os.getpid()
        self._own_dir = base_dir is None
        if self._own_dir and sys.platform == "linux":
            _sweep_stale_dirs()
        self.dir = Path(
            tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{self.name}-") if base_dir is None else base_dir
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._own_dir:
            (self.dir / _OWNER_FILE).write_text(f"{os.getpid()}\n")
        self.log_path = self.dir / f"{self.name}.out"
        self._proc: subprocess.Popen[bytes] | None = None
        self._lifeline: int | None = None
        self._started_once = False
        self.last_start_seconds: float | None = None
        _LIVE.add(self)

    # -- to override -------------------------------------------------------------------------

    @property
    def ports(self) -> tuple[int, ...]:
        """Every port the broker listens on (checked free after kill)."""
        raise NotImplementedError

    def _check_installed(self) -> None:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write config files; called before every start."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _ready(self) -> bool:
        """One cheap probe: True once clients can use the broker."""
        raise NotImplementedError

    def _reallocate_ports(self) -> None:
        """Choose new ports (only before the first successful start)."""
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> None:
        """Start the broker if it is not running and block until it serves clients.

        Idempotent. Before the first successful start, a port stolen by another process is
        handled by retrying on fresh ports; afterwards ports are fixed (restarts keep them).

        Raises:
            BrokerNotInstalled: the binary is missing.
            BrokerStartError: not ready within *timeout* (default :attr:`start_timeout`).
        """
        if self.is_running():
            return
        self._check_installed()
        attempts = 1 if self._started_once else 3
        began = time.monotonic()
        for attempt in range(attempts):
            if not all(_port_free(p) for p in self.ports):
                if self._started_once:
                    self._wait_ports_free(15.0)
                else:
                    self._reallocate_ports()
                    continue
            try:
                self._spawn_and_wait(timeout if timeout is not None else self.start_timeout)
            except BrokerStartError as exc:
                # Only an early exit can be a port race with another session; a timeout
                # would just repeat.
                if not exc.exited or attempt + 1 >= attempts:
                    raise
                self._reallocate_ports()
            else:
                break
        self._started_once = True
        self.last_start_seconds = time.monotonic() - began

    def _spawn_and_wait(self, timeout: float) -> None:
        self._prepare()
        log = self.log_path.open("ab")
        log.write(f"\n===== {time.strftime('%H:%M:%S')} starting {self.name}\n".encode())
        log.flush()
        lifeline_r, lifeline_w = os.pipe()  # both non-inheritable: no broker sees them
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _SUPERVISOR, *self._command()],
                cwd=self.dir,
                env=self._env(),
                stdin=lifeline_r,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            os.close(lifeline_w)
            raise
        finally:
            os.close(lifeline_r)
            log.close()
        self._lifeline = lifeline_w
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._close_lifeline()
                self._reap_group()
                msg = f"{self.name} exited with status {code} while starting"
                raise BrokerStartError(self._with_log(msg), exited=True)
            # Any probe failure (refused, reset, AMQP error) just means "not ready yet".
            with contextlib.suppress(Exception):
                if self._ready():
                    return
            if time.monotonic() >= deadline:
                self.kill()
                msg = f"{self.name} not ready after {timeout:.0f}s (ports {self.ports})"
                raise BrokerStartError(self._with_log(msg))
            time.sleep(0.1)

    def ensure_running(self, timeout: float = 10.0) -> None:
        """Make sure the broker serves clients: start it if down, restart it if it is wedged.

        A process that is alive but fails the readiness probe for *timeout* seconds (e.g. a
        test SIGSTOPped it, or it is still shutting down) is killed and started again.
        """
        if not self.is_running():
            self.start()
            return

        def healthy() -> bool:
            with contextlib.suppress(Exception):
                return self._ready()
            return False

        if not _wait(healthy, timeout, interval=0.1):
            self.kill()
            self.start()

    def is_running(self) -> bool:
        """True while the broker process is alive (it may still be booting or shutting down)."""
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully (SIGTERM, as an init system would); SIGKILL after *timeout*.

        Idempotent. Returns once the processes are gone and the ports are free.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout if timeout is not None else self.stop_timeout)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the broker's whole process group, as a crash or an OOM kill would.

        Idempotent. Returns once no process of the group is left and every port is free.
        Nothing is flushed: only what the broker had already made durable survives.
        """
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self._close_lifeline()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10.0)
        self._reap_group()
        self._wait_ports_free(15.0)

    def freeze(self) -> None:
        """SIGSTOP the broker's whole process group: a black-holed broker. The kernel still
        completes TCP handshakes on its ports, but nothing answers until :meth:`thaw`.

        :meth:`kill` and :meth:`close` work on a frozen broker (SIGKILL needs no resume).
        """
        self._signal_group(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT the process group after :meth:`freeze`. Idempotent; a no-op when the broker
        is not running (a scenario's clean-up may call it after a kill)."""
        self._signal_group(signal.SIGCONT)

    def _signal_group(self, signum: signal.Signals) -> None:
        # The supervisor leads the group, so its pid is the pgid of every broker process.
        if self.is_running():
            assert self._proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signum)

    def _close_lifeline(self) -> None:
        if self._lifeline is not None:
            with contextlib.suppress(OSError):
                os.close(self._lifeline)
            self._lifeline = None

    def _reap_group(self) -> None:
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid

        def gone() -> bool:
            members = _group_members(pgid)
            for pid in members:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            return not members

        if not _wait(gone, 10.0):
            msg = f"{self.name}: processes {_group_members(pgid)} survived SIGKILL"
            raise RuntimeError(msg)

    def _wait_ports_free(self, timeout: float) -> None:
        if not _wait(lambda: all(_port_free(p) for p in self.ports), timeout):
            busy = [p for p in self.ports if not _port_free(p)]
            msg = f"{self.name}: ports {busy} still in use {timeout:.0f}s after the broker died"
            raise RuntimeError(msg)

    def close(self) -> None:
        """Stop the broker and delete its temporary directory. Idempotent.

        A broker in a directory this instance created is SIGKILLed (its data is deleted next,
        so a graceful shutdown would only cost seconds); one in a caller's ``base_dir`` is
        stopped gracefully so the data stays consistent for the next run.
        """
        try:
            if self._own_dir:
                self.kill()
            else:
                self.stop(timeout=10.0)
        finally:
            if self._own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)
            _LIVE.discard(self)

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def log_tail(self, lines: int = 40) -> str:
        """The last *lines* lines of the broker's console output (plus its own log, if any)."""
        chunks = []
        for path in self._log_files():
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()
                chunks.append(f"--- {path} (last {lines} lines)\n" + "\n".join(text[-lines:]))
        return "\n".join(chunks)

    def _log_files(self) -> list[Path]:
        return [self.log_path]

    def _with_log(self, msg: str) -> str:
        return f"{msg}; data dir {self.dir}\n{self.log_tail()}"

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<{type(self).__name__} {state} ports={self.ports} dir={self.dir}>"


# --------------------------------------------------------------------------------------------
# STOMP probe shared by RabbitMQ and ActiveMQ


def _stomp_handshake(port: int, login: str, passcode: str, vhost: str, timeout: float) -> bool:
    """Open a raw STOMP 1.2 session; True when the broker answers CONNECTED."""
    frame = (
        f"CONNECT\naccept-version:1.2\nhost:{vhost}\nlogin:{login}\npasscode:{passcode}\n"
        "heart-beat:0,0\n\n\0"
    ).encode()
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(frame)
        data = b""
        while b"\0" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return False
            data += chunk
        ok = data.lstrip(b"\r\n").startswith(b"CONNECTED")
        if ok:
            with contextlib.suppress(OSError):
                sock.sendall(b"DISCONNECT\n\n\0")
        return ok


# --------------------------------------------------------------------------------------------
# RabbitMQ


class RabbitMQ(Broker):
    """A private RabbitMQ node with AMQP, STOMP and (on request) the management plugin.

    The node name is unique per instance (``mqlt-<pid>-<hex>@localhost``), its Erlang cookie
    lives in a private ``HOME``, and Mnesia/log directories are inside :attr:`dir`, so
    concurrent sessions never see each other's node. Users: ``guest``/``guest`` (loopback).

    Args:
        extra_erl_args: appended to ``RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS``, e.g. TLS
            listeners ``-rabbit ssl_listeners [PORT] -rabbit ssl_options [...]``. Words are
            split on whitespace by the start script, so Erlang terms must contain no spaces.
        extra_config: lines appended to the node's ``rabbitmq.conf`` (new-style config).
        management_port: enable ``rabbitmq_management`` on this loopback port (0 picks one).
    """

    name = "rabbitmq"
    start_timeout = 90.0

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        extra_erl_args: str = "",
        extra_config: str = "",
        management_port: int | None = None,
    ) -> None:
        super().__init__(base_dir)
        self.host = HOST
        self.nodename = f"mqlt-{os.getpid()}-{uuid.uuid4().hex[:8]}@localhost"
        self.extra_erl_args = extra_erl_args
        self.extra_config = extra_config
        self._want_management = management_port is not None
        self._fixed_management = management_port or None
        self.management_port: int | None = None
        self._allocate()

    def _allocate(self) -> None:
        taken: set[int] = {self._fixed_management} if self._fixed_management else set()

        def pick() -> int:
            port = reserve_port(taken)
            taken.add(port)
            return port

        self.amqp_port = pick()
        self.stomp_port = pick()
        self.dist_port = pick()
        if self._want_management:
            self.management_port = self._fixed_management or pick()

    def _reallocate_ports(self) -> None:
        self._allocate()

    @property
    def ports(self) -> tuple[int, ...]:
        extra = (self.management_port,) if self.management_port else ()
        return (self.amqp_port, self.stomp_port, self.dist_port, *extra)

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.amqp_port}/"

    @property
    def stomp_url(self) -> str:
        return f"stomp://guest:guest@{self.host}:{self.stomp_port}"

    @property
    def management_url(self) -> str | None:
        if not self.management_port:
            return None
        return f"http://guest:guest@{self.host}:{self.management_port}/"

    def _check_installed(self) -> None:
        if not os.access(RABBITMQ_SERVER, os.X_OK) or shutil.which("erl") is None:
            msg = f"RabbitMQ is not installed ({RABBITMQ_SERVER} missing); {INSTALL_HINT}"
            raise BrokerNotInstalled(msg)

    def _prepare(self) -> None:
        home = self.dir / "home"
        home.mkdir(exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o600)
        for sub in ("mnesia", "log", "conf"):
            (self.dir / sub).mkdir(exist_ok=True)
        plugins = ["rabbitmq_stomp"]
        if self.management_port:
            plugins.append("rabbitmq_management")
        (self.dir / "conf" / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
        # A full disk must not make the broker block publishers in the middle of a test.
        conf = ["disk_free_limit.absolute = 1MB", "log.file.level = info"]
        if self.extra_config:
            conf.append(self.extra_config)
        (self.dir / "conf" / "rabbitmq.conf").write_text("\n".join(conf) + "\n")
        (self.dir / "conf" / "rabbitmq-env.conf").write_text("# private test node\n")

    def _erl_args(self) -> str:
        args = [
            f'-rabbitmq_stomp tcp_listeners [{{"{HOST}",{self.stomp_port}}}]',
        ]
        if self.management_port:
            args.append(
                f'-rabbitmq_management tcp_config [{{port,{self.management_port}}},{{ip,"{HOST}"}}]'
            )
        if self.extra_erl_args:
            args.append(self.extra_erl_args)
        return " ".join(args)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HOME=str(self.dir / "home"),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS=HOST,
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_PID_FILE=str(self.dir / "rabbitmq.pid"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "conf" / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(self.dir / "conf" / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.dir / "conf" / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "conf" / "rabbitmq-env.conf"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=self._erl_args(),
        )
        for var in ("RABBITMQ_ALLOW_INPUT", "NOTIFY_SOCKET", "RABBITMQ_ERLANG_COOKIE"):
            env.pop(var, None)
        return env

    def _command(self) -> list[str]:
        return [str(RABBITMQ_SERVER)]

    def _ready(self) -> bool:
        if not (_port_open(self.amqp_port) and _port_open(self.stomp_port)):
            return False
        if self.management_port and not _port_open(self.management_port):
            return False
        with self.amqp_channel():
            pass
        return _stomp_handshake(self.stomp_port, "guest", "guest", "/", timeout=5.0)

    def _log_files(self) -> list[Path]:
        return [self.log_path, self.dir / "log" / f"{self.nodename}.log"]

    def rabbitmqctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n <this node> ARGS`` with this node's cookie (slow: 1-3 s)."""
        ctl = RABBITMQ_SERVER.with_name("rabbitmqctl")
        return subprocess.run(
            [str(ctl), "-n", self.nodename, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def sync_definitions(self) -> None:
        """Make Mnesia write its log to disk now (``mnesia:sync_log()``; 1-3 s).

        RabbitMQ 3.10 keeps a fresh queue's or exchange's definition in Mnesia's in-memory log
        for a moment; a SIGKILL within it loses the queue, and with it messages the broker had
        confirmed (seen in full-suite runs seconds after the declare). A deployment declares
        its queues long before a crash, so a test that kills the broker to check *our* recovery
        calls this after the queue exists: the test is about that recovery, not that window.
        """
        result = self.rabbitmqctl("eval", "mnesia:sync_log().")
        if result.returncode != 0:
            msg = f"mnesia:sync_log() failed on {self.nodename}: {result.stdout}{result.stderr}"
            raise RuntimeError(msg)

    # -- AMQP helpers for tests (fast: one short connection each) ------------------------------

    @contextlib.contextmanager
    def amqp_channel(self) -> Iterator[Any]:
        """A pika ``BlockingChannel`` on a fresh connection, closed afterwards."""
        import pika

        params = pika.URLParameters(
            f"{self.amqp_url}?connection_attempts=1&socket_timeout=5&blocked_connection_timeout=10"
        )
        conn = pika.BlockingConnection(params)
        try:
            yield conn.channel()
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def queue_depth(self, name: str) -> int:
        """Ready messages in queue *name* (passive declare); 0 if the queue does not exist.

        Unacknowledged deliveries held by a consumer are not counted.
        """
        import pika.exceptions

        try:
            with self.amqp_channel() as ch:
                result = ch.queue_declare(queue=name, passive=True)
                return int(result.method.message_count)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return 0
            raise

    def queue_exists(self, name: str) -> bool:
        """True when queue *name* exists on the node."""
        import pika.exceptions

        try:
            with self.amqp_channel() as ch:
                ch.queue_declare(queue=name, passive=True)
                return True
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return False
            raise

    def purge_queue(self, name: str) -> int:
        """Drop every ready message in queue *name*; returns how many were dropped."""
        with self.amqp_channel() as ch:
            result = ch.queue_purge(queue=name)
            return int(result.method.message_count)

    def delete_queue(self, name: str) -> None:
        """Delete queue *name* (no error if it does not exist)."""
        with self.amqp_channel() as ch:
            ch.queue_delete(queue=name)


# --------------------------------------------------------------------------------------------
# ActiveMQ

_ACTIVEMQ_XML = """\
<beans xmlns="http://www.springframework.org/schema/beans"
       xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
       xsi:schemaLocation="http://www.springframework.org/schema/beans
         http://www.springframework.org/schema/beans/spring-beans.xsd
         http://activemq.apache.org/schema/core
         http://activemq.apache.org/schema/core/activemq-core.xsd">
  <bean class="org.springframework.beans.factory.config.PropertyPlaceholderConfigurer"/>
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="mqlt"
          persistent="true" useJmx="false" dataDirectory="${activemq.data}">
    <persistenceAdapter>
      <kahaDB directory="${activemq.data}/kahadb"/>
    </persistenceAdapter>
    <systemUsage>
      <systemUsage>
        <memoryUsage><memoryUsage percentOfJvmHeap="60"/></memoryUsage>
        <storeUsage><storeUsage limit="2 gb"/></storeUsage>
        <tempUsage><tempUsage limit="1 gb"/></tempUsage>
      </systemUsage>
    </systemUsage>
    <!--mqlt:extra_xml-->
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:${stomp.port}"/>
      <!--mqlt:extra_connectors-->
    </transportConnectors>
  </broker>
</beans>
"""

_LOG4J2 = """\
rootLogger.level=INFO
rootLogger.appenderRef.console.ref=Console
appender.console.type=Console
appender.console.name=Console
appender.console.layout.type=PatternLayout
appender.console.layout.pattern=%d{HH:mm:ss,SSS} %-5p %c{1} - %m%n
logger.spring.name=org.springframework
logger.spring.level=WARN
logger.xbean.name=org.apache.xbean
logger.xbean.level=WARN
"""


class ActiveMQ(Broker):
    """A private ActiveMQ 5 broker: one STOMP connector on loopback, KahaDB persistence.

    Any login is accepted. Persistent messages (``persistent:true``) survive ``kill()``.

    Args:
        extra_xml: elements inserted into ``<broker>`` before ``<transportConnectors>``, e.g.
            an ``<sslContext>`` with key and trust stores.
        extra_connectors: ``<transportConnector .../>`` elements added after the STOMP one,
            e.g. ``stomp+ssl://127.0.0.1:PORT``.
        extra_ports: the ports those connectors listen on (fixed by the caller), so that
            ``kill()`` waits for them to be free too.
    """

    name = "activemq"
    start_timeout = 60.0

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        extra_xml: str = "",
        extra_connectors: str = "",
        extra_ports: tuple[int, ...] = (),
    ) -> None:
        super().__init__(base_dir)
        self.host = HOST
        self.extra_xml = extra_xml
        self.extra_connectors = extra_connectors
        self.extra_ports = tuple(extra_ports)
        self.stomp_port = reserve_port(set(self.extra_ports))

    def _reallocate_ports(self) -> None:
        self.stomp_port = reserve_port(set(self.extra_ports))

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.stomp_port, *self.extra_ports)

    @property
    def stomp_url(self) -> str:
        return f"stomp://guest:guest@{self.host}:{self.stomp_port}"

    def _check_installed(self) -> None:
        if not ACTIVEMQ_JAR.is_file() or shutil.which("java") is None:
            msg = f"ActiveMQ is not installed ({ACTIVEMQ_JAR} or java missing); {INSTALL_HINT}"
            raise BrokerNotInstalled(msg)

    def _prepare(self) -> None:
        for sub in ("conf", "data", "tmp"):
            (self.dir / sub).mkdir(exist_ok=True)
        xml = _ACTIVEMQ_XML.replace("<!--mqlt:extra_xml-->", self.extra_xml).replace(
            "<!--mqlt:extra_connectors-->", self.extra_connectors
        )
        (self.dir / "conf" / "activemq.xml").write_text(xml)
        (self.dir / "conf" / "log4j2.properties").write_text(_LOG4J2)

    def _command(self) -> list[str]:
        d = self.dir
        return [
            "java",
            "-Xms64m",
            "-Xmx512m",
            "-XX:+UseSerialGC",
            f"-Djava.io.tmpdir={d / 'tmp'}",
            f"-Dactivemq.home={ACTIVEMQ_HOME}",
            f"-Dactivemq.base={d}",
            f"-Dactivemq.conf={d / 'conf'}",
            f"-Dactivemq.data={d / 'data'}",
            f"-Dlog4j2.configurationFile={d / 'conf' / 'log4j2.properties'}",
            f"-Dstomp.port={self.stomp_port}",
            "-jar",
            str(ACTIVEMQ_JAR),
            "start",
            f"xbean:file:{d / 'conf' / 'activemq.xml'}",
        ]

    def _ready(self) -> bool:
        return _port_open(self.stomp_port) and _stomp_handshake(
            self.stomp_port, "guest", "guest", "localhost", timeout=5.0
        )

    def queue_depth(self, name: str, timeout: float = 10.0) -> int:
        """Messages currently in queue *name*, counted by a STOMP queue browser.

        ActiveMQ answers a ``browser:true`` subscription with a copy of every queued message
        and then an empty MESSAGE carrying ``browser:end``; nothing is consumed. Browsing
        pages through the store, so keep it to test-sized queues (thousands, not millions).
        """
        frames = _stomp_browse(self.stomp_port, f"/queue/{name}", timeout)
        return frames


def _stomp_browse(port: int, destination: str, timeout: float) -> int:
    connect = (
        "CONNECT\naccept-version:1.2\nhost:localhost\nlogin:guest\npasscode:guest\n"
        "heart-beat:0,0\n\n\0"
    )
    subscribe = f"SUBSCRIBE\nid:browse\ndestination:{destination}\nack:auto\nbrowser:true\n\n\0"
    count = 0
    deadline = time.monotonic() + timeout
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall((connect + subscribe).encode())
        buf = b""
        while True:
            if time.monotonic() >= deadline:
                msg = f"browsing {destination} did not finish within {timeout:.0f}s"
                raise TimeoutError(msg)
            chunk = sock.recv(65536)
            if not chunk:
                msg = f"broker closed the connection while browsing {destination}"
                raise ConnectionError(msg)
            buf += chunk
            while True:
                frame, buf = _split_frame(buf)
                if frame is None:
                    break
                command, _, rest = frame.partition(b"\n")
                if command == b"ERROR":
                    msg = f"browsing {destination} failed: {frame[:300]!r}"
                    raise ConnectionError(msg)
                if command != b"MESSAGE":
                    continue
                headers = rest.split(b"\n\n", 1)[0].split(b"\n")
                if b"browser:end" in headers:
                    with contextlib.suppress(OSError):
                        sock.sendall(b"DISCONNECT\n\n\0")
                    return count
                count += 1


def _split_frame(buf: bytes) -> tuple[bytes | None, bytes]:
    """Cut one STOMP frame off *buf*, honouring ``content-length``; (None, buf) if incomplete."""
    buf = buf.lstrip(b"\r\n")
    head_end = buf.find(b"\n\n")
    if head_end < 0:
        return None, buf
    length = None
    for line in buf[:head_end].split(b"\n")[1:]:
        if line.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
            break
    body_start = head_end + 2
    if length is not None:
        end = body_start + length
        if len(buf) <= end:
            return None, buf
    else:
        end = buf.find(b"\0", body_start)
        if end < 0:
            return None, buf
    return buf[:end], buf[end + 1 :]


# --------------------------------------------------------------------------------------------
# noida-db (Elasticsearch stand-in)


def noida_binary() -> Path | None:
    """The real noida-db executable (the console script is a Python wrapper around it).

    Starting the binary directly saves a Python wrapper process and lets SIGTERM reach the
    server itself.
    """
    with contextlib.suppress(Exception):
        from importlib.resources import files

        path = Path(str(files("noida_db").joinpath("noida-db")))
        if path.is_file():
            if not os.access(path, os.X_OK):
                path.chmod(0o755)
            return path
    script = Path(sys.prefix) / "bin" / "noida-db"
    if script.is_file():
        return script
    found = shutil.which("noida-db")
    return Path(found) if found else None


class NoidaServer(Broker):
    """A private noida-db server running one of its services (``service``) on a free loopback
    port; the data directory survives restarts. Subclasses say which service and when it is
    ready."""

    service: str = ""
    start_timeout = 30.0
    stop_timeout = 15.0

    def __init__(self, base_dir: str | os.PathLike[str] | None = None) -> None:
        super().__init__(base_dir)
        self.host = HOST
        self.port = reserve_port()

    def _reallocate_ports(self) -> None:
        self.port = reserve_port()

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port,)

    def _check_installed(self) -> None:
        if noida_binary() is None:
            msg = "noida-db is not installed; run `make .venv/.dev` (pip install noida-db)"
            raise BrokerNotInstalled(msg)

    def _command(self) -> list[str]:
        binary = noida_binary()
        assert binary is not None
        (self.dir / "data").mkdir(exist_ok=True)
        return [
            str(binary),
            "start",
            "--only",
            self.service,
            "--host",
            HOST,
            f"--{self.service}-port",
            str(self.port),
            "--data-dir",
            str(self.dir / "data"),
        ]


class NoidaES(NoidaServer):
    """A private noida-db server speaking the Elasticsearch REST API (reports 8.15.3).

    ``url`` has no credentials; the data directory survives restarts. It keeps what it was
    sent only once it is quiet: documents it answered ``201`` for in its last moments before
    :meth:`stop` can be gone after the restart (a real Elasticsearch syncs its translog before
    it answers), so outages while writes are in flight are a cut
    :class:`~harness.proxy.TcpProxy` in front of it.
    """

    name = "noida-es"
    service = "elasticsearch"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _ready(self) -> bool:
        if not _port_open(self.port):
            return False
        with urllib.request.urlopen(self.url + "/", timeout=5.0) as resp:
            return bool(resp.status == 200)
