"""structlog through mqlogging (issue #16): the event dict's keys arrive as structured fields,
both through structlog's stdlib integration and through :mod:`mqlogging.structlog` directly,
against the private RabbitMQ node."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from typing import Any

import pytest
import structlog

from harness.drain import amqp_url, drain_amqp
from mqlogging import JsonFormatter, MQHandler, bound_context
from mqlogging.formatting import SCHEMAS
from mqlogging.structlog import MQLogger


@pytest.fixture
def handler(rabbitmq: Any, queue_name: str) -> Any:
    h = MQHandler(amqp_url(rabbitmq, queue_name), spool=False, static_fields={"service": "sl"})
    yield h
    h.close()


def _by_message(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["message"]: d for d in docs}


def test_direct_logger_fields_levels_exceptions(
    handler: MQHandler, rabbitmq: Any, queue_name: str
) -> None:
    """MQLogger: keys are fields (not JSON inside ``message``), positional args formatted, the
    logger name and level kept, ``exception()`` carries the traceback captured on the caller,
    mqlogging context captured on the caller, records below the filtering level skipped, and
    keys that shadow ours (``event``-like ``message``, ``log``) moved under ``extra``."""
    log = structlog.wrap_logger(
        MQLogger(handler, "api.db"),
        processors=[structlog.contextvars.merge_contextvars],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    with bound_context(request_id="r-1"):
        log.info("query %s done", "q1", table="users", rows=3)
    log.debug("hidden", x=1)
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed", job=7)
    log.bind(user_id=5).warning("bound", log="shadow")
    docs = _by_message(drain_amqp(rabbitmq, queue_name, 3))
    assert {"query q1 done", "failed", "bound"} == set(docs)
    first = docs["query q1 done"]
    assert (first["table"], first["rows"], first["request_id"]) == ("users", 3, "r-1")
    assert (first["log"]["logger"], first["log"]["level"]) == ("api.db", "info")
    assert docs["failed"]["error"]["type"] == "ValueError"
    assert docs["failed"]["job"] == 7
    assert docs["bound"]["user_id"] == 5
    assert docs["bound"]["extra"]["log"] == "shadow"


def test_stdlib_integration(handler: MQHandler, rabbitmq: Any, queue_name: str) -> None:
    """structlog's stdlib path (``render_to_log_kwargs`` -> a stdlib logger with MQHandler):
    the event dict becomes extras, hence top-level fields."""
    logger = logging.getLogger(f"sl.{queue_name}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    log = structlog.wrap_logger(
        logger,
        processors=[
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.render_to_log_kwargs,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    log.info("job %d done", 4, queue="default", ms=12.5)
    (doc,) = drain_amqp(rabbitmq, queue_name, 1)
    assert (doc["message"], doc["queue"], doc["ms"]) == ("job 4 done", "default", 12.5)
    logger.removeHandler(handler)


def test_import_does_not_pull_structlog() -> None:
    """``import mqlogging.structlog`` does not import structlog (only ``configure`` does)."""
    code = "import sys, mqlogging.structlog; assert 'structlog' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


class _Formatted(logging.Handler):
    """Keeps each record as the JSON document its formatter makes (no broker: this is about
    the record MQLogger builds)."""

    def __init__(self, schema: str) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter(schema=schema))
        self.docs: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.docs.append(json.loads(self.format(record)))


@pytest.mark.parametrize("schema", SCHEMAS)
def test_a_user_message_key_is_kept_under_extra(schema: str) -> None:
    """A ``message=`` key of the event dict was overwritten by the event (the field was lost):
    it is kept as ``extra.message`` in every schema, beside an ``extra`` dict the user gave
    (merged) or a non-dict one (kept as ``extra.extra``), while the event stays the message."""
    handler = _Formatted(schema)
    log = MQLogger(handler, "api")
    log.info("evt", message="user text", rows=3)
    log.info("evt", message="user text", extra={"a": 1})
    log.info("evt", message="user text", extra="x")
    text = "body" if schema == "otel" else "message"
    assert [doc[text] for doc in handler.docs] == ["evt"] * 3
    extras = [(d["attributes"] if schema == "otel" else d)["extra"] for d in handler.docs]
    assert extras == [
        {"message": "user text"},
        {"a": 1, "message": "user text"},
        {"extra": "x", "message": "user text"},
    ]
