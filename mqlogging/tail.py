"""``mqlogging tail URL``: a live, coloured view of the records flowing through a queue or spool.

The tail never takes records away from the collector. How it gets its copy depends on the URL:

``amqp://`` / ``amqps://``
    A server-named, exclusive, auto-delete queue bound to the endpoint's ``exchange`` with its
    ``binding_key`` (``--binding`` overrides): the broker routes a *copy* of every new record
    to it. The backlog already waiting in the collector's queue is not shown. The tap queue is
    capped (``x-max-length``, oldest dropped) so a stalled terminal cannot fill the broker, and
    it disappears with the connection. URLs publishing through the default exchange
    (``exchange=``) route straight to one queue: there is no copy to take, the tail refuses.
``stomp://`` on RabbitMQ
    ``/topic/...`` and ``/exchange/...`` destinations are subscribed as they are (each
    subscriber gets its own copy). ``/queue/NAME`` goes through the default exchange, so a copy
    exists only if the producers publish to an exchange: ``--exchange NAME`` subscribes to
    ``/exchange/NAME/<binding>``; without it the tail refuses and says so.
``stomp://`` on ActiveMQ
    ``/topic/...``: a plain subscription (a copy). ``/queue/...``: a *queue browser*
    (``browser:true``) run again every half second, showing the records that appeared since the
    previous browse. Records the collector consumes between two browses are not seen, and
    ActiveMQ shows a browser at most its first ``maxBrowsePageSize`` (400) messages.
``local://DIR``
    The spool's segment files are read directly, read-only: no claim, no commit, so the
    collector's progress is untouched. Follows new lines like ``tail -f``; ``--backlog``
    first shows the records still waiting in the spool.

Output: one line per record (time, level, logger, message, key extra fields) and the traceback
under it, coloured when stdout is a terminal; ``--json`` prints the documents as JSON lines
for ``jq``. The schema (``ecs``, ``logstash``, ``flat``) is recognised per record.

Record text is untrusted: a message could carry ESC or BEL sequences that retitle or clear the
operator's terminal, or a CR that overwrites the line to hide what it says. Every field of the
human rendering is escaped (:func:`escape`): C0 controls except tab and the newlines that
separate traceback lines, DEL, C1 controls, lone surrogates and the bidirectional overrides
become visible ``\\xNN``/``\\uNNNN`` text. ``--json`` re-encodes each document on one line
with the same characters as JSON ``\\u`` escapes, so it stays valid JSON (issue #11, 10).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO, Any, Protocol

from .backends.endpoints import Endpoint
from .backends.local import LocalEndpoint
from .errors import BackendError, ConfigurationError, ConnectError, MQLoggingError
from .wire import read_meta

__all__ = [
    "Filter",
    "Record",
    "add_arguments",
    "escape",
    "json_line",
    "normalise",
    "render",
    "run_command",
]

_TAP_MAX_LENGTH = 100_000  # records a stalled tail may leave in its AMQP tap queue
_BROWSE_INTERVAL = 0.5
_SPOOL_POLL = 0.1
_RECONNECT_DELAY = 2.0
_EXTRA_VALUE_CHARS = 120

_LEVELS = {
    "TRACE": 5,
    "DEBUG": 10,
    "INFO": 20,
    "NOTICE": 25,
    "WARN": 30,
    "WARNING": 30,
    "ERROR": 40,
    "CRITICAL": 50,
    "FATAL": 50,
    "ALERT": 50,
    "EMERGENCY": 50,
}

# Fields of each schema's skeleton: not repeated among the "key extras" of a line.
_ECS_SKELETON = frozenset(
    ["@timestamp", "message", "log", "process", "host", "event", "ecs", "error", "mqlogging"]
)
_LOGSTASH_SKELETON = frozenset(
    [
        "@timestamp",
        "@version",
        "message",
        "source_host",
        "name",
        "args",
        "levelname",
        "levelno",
        "pathname",
        "filename",
        "module",
        "stack_info",
        "lineno",
        "funcName",
        "created",
        "msecs",
        "relativeCreated",
        "thread",
        "threadName",
        "processName",
        "process",
        "exception",
        "id",
        "taskName",
        "exc_info",
        "exc_text",
        "msg",
        "mqlogging",
        "type",
        "tags",
        "host",
        "path",
        "logger_name",
        "level",
    ]
)
_FLAT_SKELETON = _LOGSTASH_SKELETON | {"timestamp", "asctime"}


# -- normalising the three schemas -----------------------------------------------------------


@dataclass(slots=True)
class Record:
    """One received record, reduced to what a terminal line shows. ``doc`` is the document."""

    doc: Mapping[str, Any] | None
    raw: bytes
    time: str = ""
    level: str = ""
    levelno: int | None = None
    logger: str = ""
    message: str = ""
    trace: str = ""
    extras: dict[str, Any] = field(default_factory=dict)


def _get(doc: Mapping[str, Any], dotted: str) -> Any:
    value: Any = doc
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, default=str)


def _level_number(name: str, number: Any = None) -> int | None:
    if isinstance(number, int) and not isinstance(number, bool):
        return number
    return _LEVELS.get(name.upper()) if name else None


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = value


def normalise(raw: bytes) -> Record:
    """Parse one message body and map its schema (``ecs``/``logstash``/``flat``) to a Record.

    Never raises: a body that is not a JSON object becomes a record whose message is the body.
    """
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return Record(None, raw, message=raw.decode("utf-8", "replace"))
    extras: dict[str, Any] = {}
    meta = read_meta(doc)
    if meta.schema == "ecs" or (
        meta.schema is None and (isinstance(doc.get("log"), Mapping) or "ecs" in doc)
    ):
        level = _text(_get(doc, "log.level"))
        rec = Record(
            doc,
            raw,
            time=_text(meta.timestamp),
            level=level.upper(),
            levelno=_level_number(level),
            logger=_text(_get(doc, "log.logger")),
            message=_text(doc.get("message")),
            trace=_text(_get(doc, "error.stack_trace")),
        )
        if not rec.trace and _get(doc, "error.type"):
            rec.trace = f"{_text(_get(doc, 'error.type'))}: {_text(_get(doc, 'error.message'))}"
        skeleton = _ECS_SKELETON
    else:
        exception = doc.get("exception", doc.get("exc_info"))
        if isinstance(exception, list):
            trace = "".join(_text(x) for x in exception)
        else:
            trace = _text(exception)
        level = _text(doc.get("levelname", doc.get("level", "")))
        rec = Record(
            doc,
            raw,
            time=_text(meta.timestamp or doc.get("asctime")),
            level=level.upper(),
            levelno=_level_number(level, doc.get("levelno")),
            logger=_text(doc.get("name", doc.get("logger_name", ""))),
            message=_text(doc.get("message", doc.get("msg", ""))),
            trace=trace.rstrip("\n"),
        )
        skeleton = _LOGSTASH_SKELETON if "@version" in doc else _FLAT_SKELETON
    for key, value in doc.items():
        if key in skeleton:
            continue
        # ECS moves user fields that clash with its objects under `extra`: show them bare.
        _flatten("" if key == "extra" else key, value, extras)
    truncated = _get(doc, "mqlogging.truncated")
    if truncated:
        extras["truncated"] = True
    rec.extras = extras
    return rec


# -- filtering -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Filter:
    """Which records to show: minimum level, logger prefix, exact field values (all must hold).

    A record without a level passes only when no minimum level is set. ``fields`` keys are
    dotted paths into the document (``service.name``, ``labels.site``); a key not found at the
    top level is also looked up under ``extra`` (where the ECS schema keeps clashing fields).
    """

    level: int | None = None
    logger: str | None = None
    fields: tuple[tuple[str, str], ...] = ()

    def __call__(self, rec: Record) -> bool:
        if self.level is not None and (rec.levelno is None or rec.levelno < self.level):
            return False
        if self.logger is not None:
            name = rec.logger
            if not (name == self.logger or name.startswith(self.logger.rstrip(".") + ".")):
                return False
        for key, wanted in self.fields:
            if rec.doc is None:
                return False
            value = _get(rec.doc, key)
            if value is None:
                value = _get(rec.doc, f"extra.{key}")
            if value is None or _text(value) != wanted:
                return False
        return True


# -- rendering -------------------------------------------------------------------------------

_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_CYAN = "\x1b[36m"
_LEVEL_COLOURS = (
    (50, "\x1b[1;37;41m"),  # CRITICAL: white on red
    (40, "\x1b[1;31m"),  # ERROR: bold red
    (30, "\x1b[33m"),  # WARNING: yellow
    (20, "\x1b[32m"),  # INFO: green
    (0, "\x1b[34m"),  # DEBUG and below: blue
)


def _level_colour(levelno: int | None) -> str:
    if levelno is None:
        return ""
    return next(colour for floor, colour in _LEVEL_COLOURS if levelno >= floor)


def _short_time(value: str, now: datetime | None = None) -> str:
    """``HH:MM:SS.mmm`` in local time, prefixed by the date when it is not today."""
    if not value:
        return "-"
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    local = when.astimezone()
    today = (now or datetime.now().astimezone()).date()
    text = local.strftime("%H:%M:%S.") + f"{local.microsecond // 1000:03d}"
    return text if local.date() == today else f"{local:%Y-%m-%d} {text}"


def _escape_table(*, json_escapes: bool) -> dict[int, str]:
    """``str.translate`` table for the characters a terminal must never receive raw."""
    controls = [c for c in (*range(0x20), *range(0x7F, 0xA0)) if c not in (0x09, 0x0A)]
    wide = [*range(0xD800, 0xE000), 0x061C, 0x200E, 0x200F, 0x2028, 0x2029,
            *range(0x202A, 0x202F), *range(0x2066, 0x206A)]  # fmt: skip
    if json_escapes:
        # Only DEL, C1 and the wide ones can be left raw by json.dumps(ensure_ascii=False).
        return {c: f"\\u{c:04x}" for c in (*range(0x7F, 0xA0), *wide)}
    table = {c: f"\\x{c:02x}" for c in controls}
    table.update({c: f"\\u{c:04x}" for c in wide})
    return table


_ESCAPES = _escape_table(json_escapes=False)
_JSON_ESCAPES = _escape_table(json_escapes=True)


def escape(text: str) -> str:
    """``text`` with every terminal control character made visible (``\\x1b``, ``\\u009b``).

    Tab and newline are kept (callers indent or escape newlines themselves); CR is escaped,
    since it lets a record overwrite what the terminal just showed.
    """
    return text.translate(_ESCAPES)


def json_line(doc: Any) -> str:
    """``doc`` as one line of JSON that is safe on a terminal and still parses to ``doc``."""
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).translate(_JSON_ESCAPES)


def render(rec: Record, *, colour: bool, now: datetime | None = None) -> str:
    """The terminal text of one record: a line, then the indented traceback if any.

    Every piece of record text goes through :func:`escape`; only our own colour codes reach
    the terminal as control sequences.
    """
    if rec.doc is None:
        text = escape(rec.message.rstrip("\n"))
        return f"{_DIM}(not JSON){_RESET} {text}" if colour else f"(not JSON) {text}"
    level = escape(f"{rec.level or '-':<8}")
    stamp = escape(_short_time(rec.time, now))
    logger = escape(rec.logger or "-")
    extras = " ".join(
        f"{escape(key)}={escape(_clip(_text(value)))}" for key, value in rec.extras.items() if key
    )
    message = escape(rec.message).replace("\n", "\n    ")
    if colour:
        line = (
            f"{_DIM}{stamp}{_RESET} {_level_colour(rec.levelno)}{level}{_RESET} "
            f"{_CYAN}{logger}{_RESET} {message}"
        )
        if extras:
            line += f"  {_DIM}{extras}{_RESET}"
    else:
        line = f"{stamp} {level} {logger} {message}"
        if extras:
            line += f"  {extras}"
    if rec.trace:
        trace = "\n".join("    " + t for t in escape(rec.trace.rstrip("\n")).split("\n"))
        line += "\n" + (f"{_level_colour(rec.levelno)}{trace}{_RESET}" if colour else trace)
    return line


def _clip(text: str) -> str:
    text = text.replace("\n", "\\n")
    if " " in text:
        text = json.dumps(text, ensure_ascii=False)
    return text if len(text) <= _EXTRA_VALUE_CHARS else text[: _EXTRA_VALUE_CHARS - 1] + "…"


# -- taps: where the copies come from --------------------------------------------------------


class _Tap(Protocol):
    mode: str

    def poll(self, timeout: float) -> list[bytes]: ...

    def close(self) -> None: ...


def _open_tap(endpoint: Endpoint, args: argparse.Namespace) -> _Tap:
    if endpoint.transport == "amqp":
        return _amqp_tap(endpoint, binding=args.binding)
    if endpoint.transport == "stomp":
        return _stomp_tap(
            endpoint, exchange=args.exchange, binding=args.binding, backlog=args.backlog
        )
    return _SpoolTap(LocalEndpoint.from_url(endpoint).path, backlog=args.backlog)


def _amqp_tap(endpoint: Endpoint, *, binding: str | None) -> _Tap:
    from .backends.amqp import AMQPEndpoint, _AMQPClient

    endpoint = AMQPEndpoint.from_url(endpoint)

    if not endpoint.exchange:
        msg = (
            f"{endpoint.redacted()} publishes through the default exchange straight to queue "
            f"{endpoint.queue!r}: there is no copy to tap without taking records from the "
            "collector. Publish to a named exchange (the default, exchange=logs) and tail "
            "amqp://HOST/?exchange=logs"
        )
        raise ConfigurationError(msg)
    key = binding if binding is not None else endpoint.binding_key

    class AMQPTap(_AMQPClient):
        """An exclusive, auto-delete, server-named queue bound to the exchange; auto-ack."""

        _role = "tail"

        def __init__(self) -> None:
            super().__init__(endpoint)
            self.mode = ""
            self._bodies: list[bytes] = []

        def _declare(self, channel: Any) -> None:
            ep = self.endpoint
            errors = self._pika.exceptions
            try:
                channel.exchange_declare(
                    ep.exchange,
                    exchange_type=ep.exchange_type,
                    durable=True,
                    passive=not ep.declare,
                )
            except errors.ChannelClosedByBroker as exc:
                raise self._topology_error(exc, "exchange", ep.exchange) from exc
            result = channel.queue_declare(
                "",
                exclusive=True,
                auto_delete=True,
                arguments={"x-max-length": _TAP_MAX_LENGTH},
            )
            name = result.method.queue
            channel.queue_bind(name, ep.exchange, routing_key=key)
            self.mode = (
                f"copy of new records: exclusive queue {name} bound to exchange "
                f"{ep.exchange!r} with key {key!r} (the collector's queue is untouched)"
            )
            self._tap_queue = name

        def _setup(self, link: Any) -> None:
            def on_message(_ch: Any, _method: Any, _props: Any, body: bytes) -> None:
                self._bodies.append(body)

            link.channel.basic_consume(self._tap_queue, on_message, auto_ack=True)

        def poll(self, timeout: float) -> list[bytes]:
            link = self._ensure_link()
            if not self._bodies:
                with self._map_errors("receive"):
                    link.connection.process_data_events(time_limit=timeout)
            out, self._bodies = self._bodies, []
            return out

    tap = AMQPTap()
    try:
        tap.poll(0)  # connect now: errors are reported before "tailing ..." is printed
    except BaseException:
        tap.close()
        raise  # connect now: errors are reported before "tailing ..." is printed
    return tap


def _stomp_tap(
    endpoint: Endpoint, *, exchange: str | None, binding: str | None, backlog: bool
) -> _Tap:
    from .backends.stomp import STOMPConsumer, STOMPEndpoint, _frame

    endpoint = STOMPEndpoint.from_url(endpoint)
    dest = endpoint.destination
    key = binding or "#"

    class STOMPTap(STOMPConsumer):
        """A copy subscription (topic, exchange) or, on an ActiveMQ queue, a repeated browse."""

        def __init__(self) -> None:
            super().__init__(endpoint.with_options(ack="auto"))
            self.mode = ""
            self._browse = False
            self._browse_id = 0
            self._seen_before: set[str] = set()
            self._seen_now: set[str] = set()
            self._silent = not backlog
            self._next_browse: float | None = None

        def _subscribe(self, link: Any, destination: str, extra: dict[str, str]) -> None:
            self._browse_id += 1
            receipt = self._new_receipt(link)
            headers = {
                "destination": destination,
                "id": f"tail-{self._browse_id}",
                "ack": "auto",
                "receipt": receipt,
                **extra,
            }
            try:
                link.write(_frame("SUBSCRIBE", headers))
                self._await_receipt(link, receipt, f"SUBSCRIBE to {destination}")
            except BackendError as exc:
                raise ConnectError(str(exc)) from exc  # already names the endpoint

        def _after_connect(self, link: Any) -> None:
            broker = link.broker
            if dest.startswith(("/topic/", "/exchange/")):
                target = dest
                self.mode = f"copy of new records: own subscription to {target}"
            elif exchange:
                if broker != "rabbitmq":
                    msg = "--exchange works on RabbitMQ only (it names an AMQP exchange)"
                    raise ConfigurationError(msg)
                target = f"/exchange/{exchange}/{key}"
                self.mode = (
                    f"copy of new records: own subscription to {target} (the collector's "
                    "queue is untouched)"
                )
            elif broker == "activemq" and dest.startswith("/queue/"):
                # ActiveMQ message ids survive reconnects: the seen-sets are kept across them.
                self._browse = True
                self._seen_now = set()
                self._next_browse = None
                self._subscribe(link, dest, {"browser": "true"})
                self.mode = (
                    f"queue browser on {dest}, every {_BROWSE_INTERVAL:g}s: records the "
                    "collector takes between two browses are not shown"
                )
                return
            else:
                msg = (
                    f"cannot tap {dest} without taking records from the collector: on "
                    "RabbitMQ a /queue/ is fed through the default exchange. Publish to "
                    "/topic/... or /exchange/NAME/..., or if producers publish over AMQP to an "
                    "exchange, add --exchange NAME (or tail amqp://HOST/?exchange=NAME)"
                )
                raise ConfigurationError(msg)
            self._subscribe(link, target, {})

        def poll(self, timeout: float) -> list[bytes]:
            if self._browse and self._next_browse is not None:
                wait = self._next_browse - time.monotonic()
                if wait > 0:
                    time.sleep(min(wait, timeout))
                    return []
                link = self._ensure_link()  # a reconnect browses again by itself
                if self._next_browse is not None:
                    self._next_browse = None
                    try:
                        link.write(_frame("UNSUBSCRIBE", {"id": f"tail-{self._browse_id}"}))
                    except Exception as exc:  # OSError, stomp.py's NotConnectedException
                        self._drop_link()
                        msg = f"connection lost while browsing {dest}"
                        raise ConnectError(msg, endpoint=endpoint.redacted()) from exc
                    self._subscribe(link, dest, {"browser": "true"})
            out: list[bytes] = []
            for delivery in self.fetch(1000, timeout):
                if not self._browse:
                    out.append(delivery.body)
                    continue
                if delivery.headers.get("browser") == "end":
                    self._seen_before, self._seen_now = self._seen_now, set()
                    self._silent = False
                    self._next_browse = time.monotonic() + _BROWSE_INTERVAL
                    break
                mid = str(delivery.headers.get("message-id", delivery.id))
                if mid in self._seen_before or mid in self._seen_now:
                    self._seen_now.add(mid)
                    continue
                self._seen_now.add(mid)
                if not self._silent:
                    out.append(delivery.body)
            return out

    tap = STOMPTap()
    try:
        tap.poll(0)  # connect now: errors are reported before "tailing ..." is printed
    except BaseException:
        tap.close()
        raise
    return tap


_SEGMENT_RE = re.compile(r"^(\d{20}-\d+-[0-9a-f]{8})(?:\.open|\.\d+\.jsonl)$")  # spool.py names


class _SpoolTap:
    """Follows a spool directory's segments read-only (no flock claim, no ``.ack`` written).

    Segments are read in name (creation) order. A file descriptor is kept on every segment
    that may still grow, so a rename (sealing) or deletion (collected) never loses its tail.
    """

    def __init__(self, directory: str, *, backlog: bool) -> None:
        if not os.path.isdir(directory):
            msg = f"spool directory {directory!r} does not exist (yet); check the local:// path"
            raise ConfigurationError(msg)
        self.directory = directory
        self.mode = (
            "read-only follow of the spool files (no claim, no commit: the collector's "
            "progress is untouched)"
        )
        self._files: dict[str, tuple[int, int, bytes]] = {}  # stem -> (fd, offset, partial)
        self._done: set[str] = set()
        self._scan(initial=not backlog, backlog=backlog)

    def _scan(self, *, initial: bool = False, backlog: bool = False) -> None:
        try:
            names = sorted(os.listdir(self.directory))
        except OSError as exc:
            msg = f"cannot list spool directory {self.directory!r}: {exc.strerror}"
            raise ConnectError(msg) from exc
        present = set()
        for name in names:
            match = _SEGMENT_RE.match(name)
            if not match:
                continue
            stem = match[1]
            present.add(stem)
            if stem in self._files or stem in self._done:
                continue
            try:
                fd = os.open(os.path.join(self.directory, name), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # sealed or collected meanwhile: seen again at the next scan
            except OSError as exc:
                msg = f"cannot read spool segment {name!r}: {exc.strerror}"
                raise ConnectError(msg) from exc
            offset = 0
            if initial:
                offset = os.fstat(fd).st_size
            elif backlog:
                offset = _acked_offset(self.directory, stem)
            partial = b""
            if offset and os.pread(fd, 1, offset - 1) != b"\n":
                partial = b"\0"  # started inside a line: drop up to the next newline
            self._files[stem] = (fd, offset, partial)
        self._done &= present

    def poll(self, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            self._scan()
            out: list[bytes] = []
            for stem in sorted(self._files):
                self._read(stem, out)
            if out or time.monotonic() >= deadline:
                return out
            time.sleep(min(_SPOOL_POLL, max(0.0, deadline - time.monotonic())))

    def _read(self, stem: str, out: list[bytes]) -> None:
        fd, offset, partial = self._files[stem]
        while True:
            chunk = os.pread(fd, 1 << 20, offset)
            if not chunk:
                break
            offset += len(chunk)
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            if lines and lines[0].startswith(b"\0"):
                lines.pop(0)
            out.extend(line for line in lines if line.strip())
        sealed_or_gone = not os.path.exists(os.path.join(self.directory, stem + ".open"))
        if sealed_or_gone and not os.pread(fd, 1, offset):
            os.close(fd)
            del self._files[stem]
            self._done.add(stem)
            return
        self._files[stem] = (fd, offset, partial)

    def close(self) -> None:
        for fd, _, _ in self._files.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._files.clear()


def _acked_offset(directory: str, stem: str) -> int:
    """Where the collector's committed progress in a segment ends (0 when none)."""
    try:
        with open(os.path.join(directory, stem + ".ack"), "rb") as f:
            lines = f.read().split(b"\n")[:-1]
    except OSError:
        return 0
    for raw in reversed(lines):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return int(json.loads(raw)["offset"])
    return 0


# -- the command -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``mqlogging tail``'s arguments on ``parser``."""
    parser.add_argument("url", metavar="URL", help="amqp[s]://, stomp[+ssl]:// or local:// URL")
    parser.add_argument("--level", metavar="LEVEL", help="minimum level (DEBUG ... CRITICAL)")
    parser.add_argument("--logger", metavar="PREFIX", help="only this logger and its children")
    parser.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only records whose field equals VALUE; dotted keys reach into objects "
        "(service.name=billing); repeatable, all must match",
    )
    parser.add_argument("--json", action="store_true", help="print JSON lines (for jq)")
    colour = parser.add_mutually_exclusive_group()
    colour.add_argument(
        "--color",
        dest="color",
        action="store_true",
        default=None,
        help="colour even when stdout is not a terminal",
    )
    colour.add_argument(
        "--no-color",
        dest="color",
        action="store_false",
        help="no colour (also when NO_COLOR is set or stdout is not a terminal)",
    )
    parser.add_argument("--count", type=int, metavar="N", help="exit after N matching records")
    parser.add_argument(
        "--binding",
        metavar="KEY",
        help="binding key of the tap (AMQP: default the URL's binding_key; STOMP --exchange: #)",
    )
    parser.add_argument(
        "--exchange",
        metavar="NAME",
        help="STOMP on RabbitMQ: tap this AMQP exchange (/exchange/NAME/KEY) for a /queue/ URL",
    )
    parser.add_argument(
        "--backlog",
        action="store_true",
        help="local:// and ActiveMQ queues: first show the records already waiting",
    )


DESCRIPTION = """\
Show the records of a queue or spool as they arrive, without taking them from the collector.

How the copy is taken:
  amqp://         an exclusive, auto-delete, server-named queue bound to the URL's exchange
                  with its binding key: a copy of NEW records only (not the backlog waiting in
                  the collector's queue). URLs with exchange= (default exchange) are refused.
  stomp:// RabbitMQ   /topic/... and /exchange/... are subscribed as they are (a copy);
                  /queue/NAME needs --exchange NAME (subscribes /exchange/NAME/#).
  stomp:// ActiveMQ   /topic/...: a subscription (copy); /queue/...: a queue browser run
                  every 0.5 s (records the collector takes between browses are missed;
                  ActiveMQ browses at most the first 400 messages).
  local://DIR     the spool files, read-only (no claim, no commit), followed like tail -f.

Exit status: 0 on Ctrl-C or after --count records; 2 on a configuration or connection error.
"""


def run_command(args: argparse.Namespace) -> int:
    """Run ``mqlogging tail`` with parsed ``args``; see :data:`DESCRIPTION`."""
    endpoint = Endpoint.from_url(args.url)
    selector = _build_filter(args)
    out = sys.stdout
    colour = _want_colour(args.color, out)
    shown = 0
    skipped = 0
    # Ctrl-C and SIGTERM end the tail normally, even when started in the background (where
    # the shell leaves SIGINT ignored), and from the first moment on.
    previous = {
        signum: signal.signal(signum, _raise_interrupt)
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    tap: _Tap | None = None
    try:
        tap = _open_tap(endpoint, args)
        print(
            f"mqlogging tail: {endpoint.redacted()}: {tap.mode}; Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        for raw in _records(tap, endpoint):
            rec = normalise(raw)
            if not selector(rec):
                continue
            if args.json:
                if rec.doc is None:
                    skipped += 1
                    continue
                out.write(json_line(rec.doc) + "\n")
            else:
                out.write(render(rec, colour=colour) + "\n")
            out.flush()
            shown += 1
            if args.count is not None and shown >= args.count:
                break
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's exit flush quiet too.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if tap is not None:
            with contextlib.suppress(Exception):
                tap.close()
    if skipped:
        print(
            f"mqlogging tail: {skipped} message(s) were not JSON and not printed", file=sys.stderr
        )
    return 0


def _raise_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _records(tap: _Tap, endpoint: Endpoint) -> Iterator[bytes]:
    """Every body the tap yields; a lost connection is reported once and retried."""
    down = False
    while True:
        try:
            bodies = tap.poll(1.0)
        except ConfigurationError:
            raise
        except MQLoggingError as exc:
            if not down:
                print(
                    f"mqlogging tail: {exc}; retrying every {_RECONNECT_DELAY:g}s "
                    "(records published meanwhile are not shown)",
                    file=sys.stderr,
                )
                down = True
            time.sleep(_RECONNECT_DELAY)
            continue
        if down:
            print(f"mqlogging tail: reconnected to {endpoint.redacted()}", file=sys.stderr)
            down = False
        yield from bodies


def _build_filter(args: argparse.Namespace) -> Filter:
    level = None
    if args.level:
        level = _LEVELS.get(args.level.upper())
        if level is None:
            if not args.level.isdigit():
                known = "DEBUG, INFO, WARNING, ERROR, CRITICAL or a number"
                msg = f"unknown level {args.level!r} for --level (known: {known})"
                raise ConfigurationError(msg)
            level = int(args.level)
    fields: list[tuple[str, str]] = []
    for item in args.field:
        key, sep, value = item.partition("=")
        if not sep or not key:
            msg = f"--field {item!r}: write KEY=VALUE, e.g. --field service.name=billing"
            raise ConfigurationError(msg)
        fields.append((key, value))
    return Filter(level=level, logger=args.logger or None, fields=tuple(fields))


def _want_colour(flag: bool | None, stream: IO[str]) -> bool:
    if flag is not None:
        return flag
    if os.environ.get("NO_COLOR"):
        return False
    isatty: Callable[[], bool] | None = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
