"""``mqlogging tail URL``: a live, coloured view of the records flowing through a queue or spool.

The tail never takes records away from the collector: it reads through the endpoint's *tap*
(:class:`mqlogging.backends.base.Tap`), a non-destructive live view that each transport
provides and documents — :class:`~mqlogging.backends.amqp.AMQPTap` (a capped, exclusive queue
of its own bound to the exchange), :class:`~mqlogging.backends.stomp.STOMPTap` (a subscription
of its own, or a repeated queue browser on ActiveMQ), and for ``local://`` the spool files
followed read-only. How the copy is taken is the transport's business; the tap's ``mode`` says
it in one line when the tail starts. :data:`DESCRIPTION` (``--help``) sums it up for users.

Over the bodies a tap yields, the tail is three steps, each usable and testable on its own:
:func:`normalise` (a body of any schema, ``ecs``/``logstash``/``flat``, recognised per record,
to a :class:`Record`; the time read by :func:`mqlogging.wire.read_meta`, the one rule every
reader shares), :class:`Filter` (which records to show) and :class:`Printer` (:func:`render`
or :func:`json_line`). :func:`follow` reads a tap and rides out lost connections.

Output: one line per record (time, level, logger, message, key extra fields) and the traceback
under it, coloured when stdout is a terminal; ``--json`` prints the documents as JSON lines
for ``jq``.

Record text is untrusted: a message could carry ESC or BEL sequences that retitle or clear the
operator's terminal, or a CR that overwrites the line to hide what it says. Every field of the
human rendering is escaped (:func:`escape`): C0 controls except tab and the newlines that
separate traceback lines, DEL, C1 controls, lone surrogates and the bidirectional overrides
become visible ``\\xNN``/``\\uNNNN`` text. ``--json`` re-encodes each document on one line
with the same characters as JSON ``\\u`` escapes, so it stays valid JSON (issue #11, 10).
A body nested too deeply to decode is shown as text, not JSON, instead of ending the tail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO, Any

from .backends.base import Tap, TapOptions
from .backends.endpoints import Endpoint
from .backends.registry import open_tap
from .errors import ConfigurationError, MQLoggingError
from .formatting import OTEL_ATTRIBUTES
from .wire import NAMESPACE, RecordMeta, read_meta

__all__ = [
    "Filter",
    "Printer",
    "Record",
    "add_arguments",
    "escape",
    "follow",
    "json_line",
    "normalise",
    "render",
    "run_command",
    "select",
]

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
    [
        "@timestamp",
        "message",
        "log",
        "process",
        "host",
        "event",
        "ecs",
        "error",
        "trace",
        "span",
        NAMESPACE,
    ]
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
        NAMESPACE,
        "type",
        "tags",
        "host",
        "path",
        "logger_name",
        "level",
        "message_template",
        "trace_id",
        "span_id",
        "trace_flags",
    ]
)
_FLAT_SKELETON = _LOGSTASH_SKELETON | {"timestamp", "asctime"}
_SKELETONS = {"ecs": _ECS_SKELETON, "logstash": _LOGSTASH_SKELETON, "flat": _FLAT_SKELETON}
# The otel schema's own attributes (OpenTelemetry semantic conventions), not shown as extras.
_OTEL_OWN_ATTRIBUTES = frozenset(OTEL_ATTRIBUTES)


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
    template: str = ""
    host: str = ""


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


def _decode(raw: bytes) -> Any:
    """The JSON value of ``raw``, ``None`` when it is not JSON.

    The stdlib's ``json``, not :func:`mqlogging.wire.decode`: orjson refuses the ``\\ud800``
    escapes Python's own ``json`` writes for a lone surrogate, and the tail must show such a
    record (escaped), not call it "not JSON". A body nested deeper than the interpreter's
    recursion limit is not JSON either: hostile input never ends the tail.
    """
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _guess_schema(doc: Mapping[str, Any]) -> str:
    """The layout of a document without ``mqlogging.schema`` (another producer's)."""
    if "severityNumber" in doc or "timeUnixNano" in doc:
        return "otel"
    if isinstance(doc.get("log"), Mapping) or "ecs" in doc:
        return "ecs"
    return "logstash" if "@version" in doc else "flat"


def _ecs_record(doc: Mapping[str, Any], raw: bytes, meta: RecordMeta) -> Record:
    level = _text(_get(doc, "log.level"))
    trace = _text(_get(doc, "error.stack_trace"))
    if not trace and _get(doc, "error.type"):
        trace = f"{_text(_get(doc, 'error.type'))}: {_text(_get(doc, 'error.message'))}"
    return Record(
        doc,
        raw,
        time=_text(meta.timestamp),
        level=level.upper(),
        levelno=_level_number(level),
        logger=_text(_get(doc, "log.logger")),
        message=_text(doc.get("message")),
        trace=trace,
        template=_text(_get(doc, "log.template")),
        host=_text(_get(doc, "host.hostname") or _get(doc, "host.name")),
    )


def _stdlib_record(doc: Mapping[str, Any], raw: bytes, meta: RecordMeta) -> Record:
    """``logstash`` and ``flat``: the ``LogRecord`` attribute names, flat."""
    exception = doc.get("exception", doc.get("exc_info"))
    if isinstance(exception, list):
        trace = "".join(_text(x) for x in exception)
    else:
        trace = _text(exception)
    level = _text(doc.get("levelname", doc.get("level", "")))
    return Record(
        doc,
        raw,
        time=_text(meta.timestamp or doc.get("asctime")),
        level=level.upper(),
        levelno=_level_number(level, doc.get("levelno")),
        logger=_text(doc.get("name", doc.get("logger_name", ""))),
        message=_text(doc.get("message", doc.get("msg", ""))),
        trace=trace.rstrip("\n"),
        template=_text(doc.get("message_template")),
        host=_text(doc.get("source_host") or doc.get("host")),
    )


def _otel_levelno(severity: Any) -> int | None:
    """A stdlib level for an OpenTelemetry severity number (DEBUG 5-8 -> 10, INFO 9-12 -> 20,
    WARN 13-16 -> 30, ERROR 17-20 -> 40, FATAL 21-24 -> 50, TRACE 1-4 -> 5)."""
    if not isinstance(severity, int) or isinstance(severity, bool) or not 1 <= severity <= 24:
        return None
    return 5 if severity <= 4 else ((severity - 1) // 4) * 10


def _otel_record(doc: Mapping[str, Any], raw: bytes, meta: RecordMeta) -> Record:
    """``otel``: OpenTelemetry's log data model (see :class:`mqlogging.JsonFormatter`)."""
    attributes = doc.get("attributes")
    attributes = attributes if isinstance(attributes, Mapping) else {}
    trace = _text(attributes.get("exception.stacktrace"))
    if not trace and attributes.get("exception.type"):
        message = _text(attributes.get("exception.message"))
        trace = f"{_text(attributes['exception.type'])}: {message}"
    resource = doc.get("resource")
    level = _text(doc.get("severityText"))
    levelno = _otel_levelno(doc.get("severityNumber"))
    return Record(
        doc,
        raw,
        time=_text(meta.timestamp),
        level=level.upper(),
        levelno=levelno if levelno is not None else _level_number(level),
        logger=_text(_get(doc, "scope.name")),
        message=_text(doc.get("body")),
        trace=trace.rstrip("\n"),
        template=_text(attributes.get("log.record.template")),
        host=_text(resource.get("host.name") if isinstance(resource, Mapping) else None),
    )


def _otel_extras(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The user's attributes (ours left out), flattened to dotted keys."""
    extras: dict[str, Any] = {}
    attributes = doc.get("attributes")
    if isinstance(attributes, Mapping):
        for key, value in attributes.items():
            if key not in _OTEL_OWN_ATTRIBUTES:
                _flatten("" if key == "extra" else str(key), value, extras)
    if _get(doc, f"{NAMESPACE}.truncated"):
        extras["truncated"] = True
    return extras


def _extras(doc: Mapping[str, Any], skeleton: frozenset[str]) -> dict[str, Any]:
    """The user's fields, flattened to dotted keys, and ``truncated`` if the formatter cut."""
    extras: dict[str, Any] = {}
    for key, value in doc.items():
        if key in skeleton:
            continue
        # ECS moves user fields that clash with its objects under `extra`: show them bare.
        _flatten("" if key == "extra" else key, value, extras)
    if _get(doc, f"{NAMESPACE}.truncated"):
        extras["truncated"] = True
    return extras


def normalise(raw: bytes) -> Record:
    """Parse one message body and map its schema (``ecs``/``logstash``/``flat``/``otel``) to a
    Record.

    The schema is the one the record names (``mqlogging.schema``), else guessed from its
    fields; the time is where :func:`mqlogging.wire.read_meta` finds it for that schema.
    Never raises: a body that is not a JSON object becomes a record whose message is the body.
    """
    doc = _decode(raw)
    if not isinstance(doc, dict):
        return Record(None, raw, message=raw.decode("utf-8", "replace"))
    meta = read_meta(doc)
    schema = meta.schema or _guess_schema(doc)
    if schema == "otel":
        rec = _otel_record(doc, raw, meta)
        rec.extras = _otel_extras(doc)
        return rec
    rec = _ecs_record(doc, raw, meta) if schema == "ecs" else _stdlib_record(doc, raw, meta)
    rec.extras = _extras(doc, _SKELETONS[schema])
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

    @classmethod
    def parse(
        cls, level: str | None = None, logger: str | None = None, fields: Iterable[str] = ()
    ) -> Filter:
        """A filter from the command line's text: ``--level``, ``--logger``, ``--field`` items.

        ``level`` is a level name (any case) or a number; each of ``fields`` is ``KEY=VALUE``.

        Raises:
            ConfigurationError: an unknown level or a field without ``=``, in one line.
        """
        pairs: list[tuple[str, str]] = []
        for item in fields:
            key, sep, value = item.partition("=")
            if not sep or not key:
                msg = f"--field {item!r}: write KEY=VALUE, e.g. --field service.name=billing"
                raise ConfigurationError(msg)
            pairs.append((key, value))
        return cls(level=_parse_level(level), logger=logger or None, fields=tuple(pairs))


def _parse_level(text: str | None) -> int | None:
    if not text:
        return None
    level = _LEVELS.get(text.upper())
    if level is not None:
        return level
    if not text.isdigit():
        known = "DEBUG, INFO, WARNING, ERROR, CRITICAL or a number"
        msg = f"unknown level {text!r} for --level (known: {known})"
        raise ConfigurationError(msg)
    return int(text)


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
    keep = Filter.parse(args.level, args.logger, args.field)
    options = TapOptions(binding=args.binding, exchange=args.exchange, backlog=args.backlog)
    printer = Printer(sys.stdout, as_json=args.json, colour=_want_colour(args.color, sys.stdout))
    tap: Tap | None = None
    try:
        with _signals_interrupt():
            tap = open_tap(endpoint, options)
            _notice(f"{endpoint.redacted()}: {tap.mode}; Ctrl-C to stop")
            bodies = follow(tap, where=endpoint.redacted(), notify=_notice)
            printer.print_all(select(bodies, keep), limit=args.count)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        _silence(sys.stdout)  # the reader went away (`| head`): stop quietly
    finally:
        if tap is not None:
            with contextlib.suppress(Exception):
                tap.close()
    if printer.skipped:
        _notice(f"{printer.skipped} message(s) were not JSON and not printed")
    return 0


def follow(
    tap: Tap,
    *,
    where: str,
    notify: Callable[[str], None],
    retry_delay: float = _RECONNECT_DELAY,
) -> Iterator[bytes]:
    """Every body ``tap`` yields, endlessly; a lost connection is reported once and retried.

    ``notify`` gets one line when the connection is lost (saying that records published
    meanwhile are not shown) and one when ``tap`` delivers again (naming ``where``). A
    :class:`~mqlogging.errors.ConfigurationError` is not retried: it ends the iteration.
    """
    down = False
    while True:
        try:
            bodies = tap.poll(1.0)
        except ConfigurationError:
            raise
        except MQLoggingError as exc:
            if not down:
                notify(
                    f"{exc}; retrying every {retry_delay:g}s "
                    "(records published meanwhile are not shown)"
                )
                down = True
            time.sleep(retry_delay)
            continue
        if down:
            notify(f"reconnected to {where}")
            down = False
        yield from bodies


def select(bodies: Iterable[bytes], keep: Callable[[Record], bool]) -> Iterator[Record]:
    """The records of ``bodies``, normalised, that ``keep`` (e.g. a :class:`Filter`) accepts."""
    for raw in bodies:
        rec = normalise(raw)
        if keep(rec):
            yield rec


class Printer:
    """Writes records to a text stream as they come: :func:`render` lines or JSON lines.

    Each record is flushed at once (a live view). With ``as_json`` a body that is not JSON
    cannot be printed as a document: it is left out and counted in :attr:`skipped`.
    """

    def __init__(self, out: IO[str], *, as_json: bool, colour: bool) -> None:
        self._out = out
        self._as_json = as_json
        self._colour = colour
        self.skipped = 0

    def write(self, rec: Record) -> bool:
        """Print ``rec``; ``False`` when it was skipped instead."""
        if not self._as_json:
            text = render(rec, colour=self._colour)
        elif rec.doc is None:
            self.skipped += 1
            return False
        else:
            text = json_line(rec.doc)
        self._out.write(text + "\n")
        self._out.flush()
        return True

    def print_all(self, records: Iterable[Record], *, limit: int | None = None) -> int:
        """Print ``records``; after ``limit`` printed ones (when given) stop. Returns how many."""
        shown = 0
        for rec in records:
            if self.write(rec):
                shown += 1
                if limit is not None and shown >= limit:
                    break
        return shown


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt, so the tail ends normally.

    Also when started in the background (where the shell leaves SIGINT ignored), and from the
    first moment on (connecting included). The previous handlers are restored on exit.
    """
    previous = {
        signum: signal.signal(signum, _raise_interrupt)
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _raise_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _notice(text: str) -> None:
    print(f"mqlogging tail: {text}", file=sys.stderr, flush=True)


def _silence(stream: IO[str]) -> None:
    """Point ``stream``'s descriptor at /dev/null, so Python's exit flush is quiet too."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def _want_colour(flag: bool | None, stream: IO[str]) -> bool:
    if flag is not None:
        return flag
    if os.environ.get("NO_COLOR"):
        return False
    isatty: Callable[[], bool] | None = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
