"""``mqlogging run -- CMD ARGS...``: ship a command's output as log records.

The way a batch job or a grid pilot gets its bootstrap output into the central store before any
Python code of its own exists: every line the command writes to stdout becomes an INFO record,
every line on stderr a WARNING record (``--stderr-level``), published through an
:class:`~mqlogging.MQHandler` — so with the handler's guarantees: confirmed delivery, spooled to
disk when no broker is reachable, replayed later by the next handler on that spool or by
``mqlogging spool replay``.

What the user of the command sees does not change: the bytes are passed through to this
process's stdout and stderr as they arrive (no line buffering is added, progress bars still
work) and ``mqlogging run`` exits with the command's exit status (``128 + N`` when it was killed
by signal N, as shells report it).

Records carry the static field ``command`` (the command line), ``stream`` (``stdout`` or
``stderr``) and ``child.pid``; ``--static KEY=VALUE`` adds more (dotted keys make objects:
``labels.site=CERN``). A last record says how the command ended (``exit_code``, duration):
INFO for status 0, ERROR otherwise.

Lines are split on ``\\n``; bytes that are not UTF-8 become U+FFFD; a line longer than the
record limit is cut there (the rest of it is passed through but not shipped, and the record is
marked truncated by the formatter). SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 are forwarded to the
command; SIGINT is not (the terminal already delivers Ctrl-C to the command, which runs in the
same process group), and ``mqlogging run`` waits for the command to end. After it ended, the
handler gets ``--close-timeout`` seconds to deliver, then spools the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import selectors
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

from .errors import ConfigurationError
from .formatting import DEFAULT_MAX_RECORD_BYTES, SCHEMAS
from .handlers._config import HandlerConfig, ignored_roots

__all__ = ["add_arguments", "run_command"]

URL_ENV = "MQLOGGING_URL"
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_FORWARDED = ("SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2")
_CHUNK = 65536
# A job's output may be large and its node about to be reclaimed: more time than the handler's
# own default to deliver before spooling.
_CLOSE_TIMEOUT = 10.0


class _LineShipper:
    """Splits one stream's bytes into lines, passes the bytes through, logs each line."""

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        stream: str,
        *,
        passthrough: IO[bytes] | None,
        extra: Mapping[str, Any],
        max_line: int,
    ) -> None:
        self.logger = logger
        self.level = level
        self.passthrough = passthrough
        self.extra = {**extra, "stream": stream}
        self.max_line = max_line
        self.buffer = bytearray()
        self.overflow = 0  # bytes of the current line beyond max_line (passed through only)
        self.lines = 0

    def feed(self, data: bytes) -> None:
        self._pass(data)
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._keep(data[start:])
                return
            self._keep(data[start:end])
            self._ship()
            start = end + 1

    def finish(self) -> None:
        if self.buffer or self.overflow:
            self._ship()

    def _keep(self, part: bytes) -> None:
        room = self.max_line - len(self.buffer)
        if len(part) > room:
            self.overflow += len(part) - max(room, 0)
            part = part[: max(room, 0)]
        self.buffer += part

    def _ship(self) -> None:
        line = bytes(self.buffer).removesuffix(b"\r").decode("utf-8", "replace")
        extra = self.extra
        if self.overflow:
            extra = {**extra, "line_bytes_dropped": self.overflow}
        self.buffer.clear()
        self.overflow = 0
        self.lines += 1
        self.logger.log(self.level, "%s", line, extra=extra)

    def _pass(self, data: bytes) -> None:
        out = self.passthrough
        if out is None:
            return
        try:
            out.write(data)
            out.flush()
        except (OSError, ValueError):
            self.passthrough = None  # our terminal is gone: keep shipping, stop echoing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``mqlogging run``'s arguments on ``parser``."""
    parser.add_argument(
        "--to",
        action="append",
        default=[],
        metavar="URL",
        help=f"endpoint URL (repeat for failover); default: ${URL_ENV}",
    )
    parser.add_argument(
        "--static",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a field added to every record (dotted keys make objects: labels.site=CERN)",
    )
    parser.add_argument(
        "--logger", metavar="NAME", help="logger name of the records (default: the command's name)"
    )
    parser.add_argument(
        "--spool",
        metavar="DIR",
        help="spool directory while brokers are down (default: per user state)",
    )
    parser.add_argument("--stdout-level", default="INFO", type=str.upper, choices=_LEVELS)
    parser.add_argument("--stderr-level", default="WARNING", type=str.upper, choices=_LEVELS)
    parser.add_argument("--schema", default=HandlerConfig.schema, choices=SCHEMAS)
    parser.add_argument(
        "--close-timeout",
        type=float,
        default=_CLOSE_TIMEOUT,
        metavar="SECONDS",
        help="after the command ended, deliver for at most this long, then spool "
        f"(default {_CLOSE_TIMEOUT:g})",
    )
    parser.add_argument(
        "--max-record-bytes",
        type=int,
        default=DEFAULT_MAX_RECORD_BYTES,
        metavar="N",
        help="longer lines are truncated in the record "
        f"(default {DEFAULT_MAX_RECORD_BYTES // 1024} KiB)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...")


DESCRIPTION = """\
Run CMD, pass its output through unchanged, and ship every line as a log record: stdout lines
at INFO, stderr lines at WARNING (see --stdout-level/--stderr-level), plus a last record with
the exit status. Records are spooled on disk while no broker answers and delivered later.
Exits with CMD's exit status. SIGTERM/SIGHUP/SIGUSR1/SIGUSR2 are forwarded to CMD.

Example: mqlogging run --to amqp://broker/ --static site=CERN -- ./pilot.sh --queue long
"""


def run_command(args: argparse.Namespace) -> int:
    """Run ``mqlogging run`` with parsed ``args``; returns the command's exit status."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        msg = "no command given; write: mqlogging run [OPTIONS] -- CMD ARGS..."
        raise ConfigurationError(msg)
    endpoints = list(args.to) or [u for u in [os.environ.get(URL_ENV, "")] if u]
    if not endpoints:
        msg = f"no endpoint: give --to URL or set {URL_ENV}"
        raise ConfigurationError(msg)
    static = _static_fields(args.static)
    static.setdefault("command", shlex.join(command))
    name = args.logger or os.path.basename(command[0]) or "run"
    if name.partition(".")[0] in ignored_roots():
        msg = f"--logger {name!r}: records of that logger are ignored by MQHandler; choose another"
        raise ConfigurationError(msg)

    from .handlers import MQHandler

    handler = MQHandler(
        endpoints,
        spool=args.spool,
        schema=args.schema,
        static_fields=static,
        max_record_bytes=args.max_record_bytes,
        close_timeout=args.close_timeout,
    )
    logger = logging.Logger(name, logging.DEBUG)  # not in the hierarchy: no root handlers
    logger.addHandler(handler)
    try:
        return _supervise(command, logger, args)
    finally:
        handler.close()
        _report(handler)


def _supervise(command: Sequence[str], logger: logging.Logger, args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        text = f"cannot run {shlex.join(command)}: {exc.strerror or exc}"
        logger.error(text, extra={"exit_code": 127})
        print(f"mqlogging run: {text}", file=sys.stderr)
        return 127
    extra = {"child": {"pid": child.pid}}
    max_line = max(1024, args.max_record_bytes)
    assert child.stdout is not None
    assert child.stderr is not None
    shippers = {
        child.stdout.fileno(): _LineShipper(
            logger,
            getattr(logging, args.stdout_level),
            "stdout",
            passthrough=_binary(sys.stdout),
            extra=extra,
            max_line=max_line,
        ),
        child.stderr.fileno(): _LineShipper(
            logger,
            getattr(logging, args.stderr_level),
            "stderr",
            passthrough=_binary(sys.stderr),
            extra=extra,
            max_line=max_line,
        ),
    }
    previous = _forward_signals(child)
    try:
        with selectors.DefaultSelector() as selector:
            for fd in shippers:
                selector.register(fd, selectors.EVENT_READ)
            while selector.get_map():
                for key, _ in selector.select():
                    fd = int(key.fd)
                    data = os.read(fd, _CHUNK)
                    if data:
                        shippers[fd].feed(data)
                    else:
                        selector.unregister(fd)
                        shippers[fd].finish()
        status = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        child.stdout.close()
        child.stderr.close()
    code = 128 - status if status < 0 else status
    how = f"killed by signal {-status}" if status < 0 else f"exited with status {status}"
    lines = sum(s.lines for s in shippers.values())
    logger.log(
        logging.INFO if status == 0 else logging.ERROR,
        "%s %s after %.1fs (%d lines)",
        shlex.join(command)[:200],
        how,
        time.monotonic() - started,
        lines,
        extra={**extra, "exit_code": code, "duration_s": round(time.monotonic() - started, 3)},
    )
    return code


def _forward_signals(child: subprocess.Popen[bytes]) -> dict[int, Any]:
    previous: dict[int, Any] = {}

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for name in _FORWARDED:
        signum = getattr(signal, name, None)
        if signum is not None:
            previous[signum] = signal.signal(signum, forward)
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    return previous


def _binary(stream: Any) -> IO[bytes] | None:
    buffer = getattr(stream, "buffer", None)
    return buffer if buffer is not None else None


def _static_fields(items: Sequence[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or "" in key.split("."):
            msg = f"--static {item!r}: write KEY=VALUE, e.g. --static site=CERN"
            raise ConfigurationError(msg)
        *parents, leaf = key.split(".")
        node = fields
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                msg = f"--static {item!r}: {part!r} is already a value, not an object"
                raise ConfigurationError(msg)
            node = child
        node[leaf] = value
    return fields


def _report(handler: Any) -> None:
    """One line on stderr when records did not reach a broker (spooled or dropped)."""
    stats = handler.stats()
    dropped = sum(stats.get("dropped", {}).values())
    spooled = int(stats.get("spool", {}).get("records", 0))
    spool_dir = handler.config.spool_dir
    if spooled > 0 and spool_dir:
        urls = " ".join(ep.redacted() for ep in handler.config.endpoints)
        print(
            f"mqlogging run: {spooled} record(s) kept in {spool_dir} (no broker confirmed them);"
            f" they are sent by the next run with this spool, or: mqlogging spool replay "
            f"{spool_dir} --to {urls}",
            file=sys.stderr,
        )
    if dropped:
        print(
            f"mqlogging run: {dropped} record(s) dropped: {stats.get('dropped')}", file=sys.stderr
        )
