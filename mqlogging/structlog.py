"""structlog straight into :class:`~mqlogging.MQHandler`, without stdlib ``logging`` loggers.

structlog hands the event dict of each call to its *logger* (the last processor's return
value: a dict is passed as keyword arguments). :class:`MQLogger` is such a logger: it makes one
:class:`logging.LogRecord` whose message is the event dict and gives it to the handler, so every
key arrives as a structured field (the ``event`` is the ``message``), with the handler's usual
rules: formatted on the caller's thread (context variables, ``exc_info`` captured as they were),
never blocking, a user key that would shadow one of ours moved under ``extra``. It skips the
stdlib machinery (logger lookup, ``Logger.makeRecord``, handler lock, propagation)::

    import structlog
    from mqlogging import MQHandler
    from mqlogging.structlog import configure

    handler = MQHandler("amqp://broker/?exchange=logs", static_fields={"service": "api"})
    configure(handler)                      # or structlog.configure(...) yourself, see below
    structlog.get_logger("api.db").info("query done", table="users", rows=3)

:func:`configure` is ``structlog.configure(processors=[merge_contextvars], wrapper_class=
make_filtering_bound_logger(level), logger_factory=MQLoggerFactory(handler))``; with your own
chain, just do not end it with a renderer (a string would arrive as a plain message).

Through structlog's stdlib integration instead (the records also reach other stdlib handlers):
end the chain with ``structlog.stdlib.render_to_log_kwargs`` and use
``structlog.stdlib.LoggerFactory()``: the event dict becomes ``extra``, hence fields. There,
keys named like ``LogRecord`` attributes (``name``, ``message``, ``args``...) make stdlib raise
``KeyError``; :class:`MQLogger` has no such restriction.

This module does not import structlog except in :func:`configure`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["MQLogger", "MQLoggerFactory", "configure"]

_EXTRA = "extra"  # where the formatter keeps user fields that collided with its own
_MISSING: Any = object()


def _exc_info(value: Any) -> Any:
    """structlog's ``exc_info``: True (the current exception), an exception, or a tuple."""
    if value is True:
        return sys.exc_info()
    if isinstance(value, BaseException):
        return (type(value), value, value.__traceback__)
    if isinstance(value, tuple):
        return value
    return None


def _set_aside(event_dict: dict[str, Any], key: str, value: Any) -> None:
    """Keep a user field that would shadow one of ours under ``extra``, as the formatter
    keeps colliding fields (merged into an ``extra`` dict, beside a non-dict ``extra``), so
    it arrives as ``extra.<key>`` in every schema instead of being lost."""
    current = event_dict.get(_EXTRA, _MISSING)
    if isinstance(current, dict):
        aside = dict(current)
    else:
        aside = {} if current is _MISSING else {_EXTRA: current}
    aside[key] = value
    event_dict[_EXTRA] = aside


class MQLogger:
    """A structlog logger writing to one :class:`logging.Handler` (an ``MQHandler``).

    ``name`` is the record's logger name (``log.logger`` in ECS). Records below the handler's
    level are skipped; the handler's filters apply. Thread-safe as the handler is.
    """

    __slots__ = ("_handler", "name")

    def __init__(self, handler: logging.Handler, name: str = "structlog") -> None:
        self._handler = handler
        self.name = name

    def __repr__(self) -> str:
        return f"MQLogger({self.name!r})"

    def log_event(self, level: int, event_dict: dict[str, Any]) -> None:
        """Send one event dict at ``level``: ``event`` becomes the message, ``exc_info`` the
        record's exception, every other key a field."""
        if level < self._handler.level:
            return
        exc_info = _exc_info(event_dict.pop("exc_info", None))
        event = event_dict.pop("event", "")
        if "message" in event_dict:  # a user field; the dict message's "message" is the event
            _set_aside(event_dict, "message", event_dict.pop("message"))
        event_dict["message"] = event if isinstance(event, str) else str(event)
        record = logging.LogRecord(self.name, level, "", 0, event_dict, None, exc_info)
        self._handler.handle(record)

    def _log(self, level: int, args: tuple[Any, ...], event_dict: dict[str, Any]) -> None:
        if args:  # a renderer ended the chain: keep its text as the message
            event_dict.setdefault("event", " ".join(map(str, args)))
        self.log_event(level, event_dict)

    # The methods structlog's bound loggers call, by level name.
    def debug(self, *args: Any, **event_dict: Any) -> None:
        self._log(logging.DEBUG, args, event_dict)

    def info(self, *args: Any, **event_dict: Any) -> None:
        self._log(logging.INFO, args, event_dict)

    msg = info

    def warning(self, *args: Any, **event_dict: Any) -> None:
        self._log(logging.WARNING, args, event_dict)

    warn = warning

    def error(self, *args: Any, **event_dict: Any) -> None:
        self._log(logging.ERROR, args, event_dict)

    def exception(self, *args: Any, **event_dict: Any) -> None:
        event_dict.setdefault("exc_info", True)
        self._log(logging.ERROR, args, event_dict)

    def critical(self, *args: Any, **event_dict: Any) -> None:
        self._log(logging.CRITICAL, args, event_dict)

    fatal = critical


class MQLoggerFactory:
    """structlog ``logger_factory``: ``get_logger("name")`` -> ``MQLogger(handler, "name")``."""

    __slots__ = ("_handler",)

    def __init__(self, handler: logging.Handler) -> None:
        self._handler = handler

    def __call__(self, *args: Any) -> MQLogger:
        name = args[0] if args and isinstance(args[0], str) else "structlog"
        return MQLogger(self._handler, name)


def configure(
    handler: logging.Handler,
    *,
    level: int = logging.INFO,
    processors: Sequence[Callable[..., Any]] | None = None,
) -> None:
    """Configure structlog to log through ``handler`` directly (see the module docstring).

    ``processors`` default to ``[structlog.contextvars.merge_contextvars]``; the chain must
    return the event dict (no renderer at the end).
    """
    import structlog

    chain = (
        list(processors) if processors is not None else [structlog.contextvars.merge_contextvars]
    )
    structlog.configure(
        processors=chain,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=MQLoggerFactory(handler),
        cache_logger_on_first_use=True,
    )
