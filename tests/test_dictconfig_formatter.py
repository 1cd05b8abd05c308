"""JsonFormatter configured through logging.config.dictConfig, in both of its forms."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator
from typing import Any

import pytest

import mqlogging
from mqlogging.errors import ConfigurationError
from mqlogging.formatting import JsonFormatter

# The short path is what users write; it resolves once mqlogging/__init__.py re-exports it.
PATHS = ["mqlogging.formatting.JsonFormatter", "mqlogging.JsonFormatter"]


@pytest.fixture
def logger_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A logger of the test's own, stripped of the handlers dictConfig gave it."""
    name = f"tests.dictconfig.{request.node.name}"
    yield name
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def configure(logger_name: str, formatter: dict[str, Any]) -> tuple[logging.Logger, io.StringIO]:
    """dictConfig a logger with one StreamHandler using ``formatter``; return it and its stream."""
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"json": formatter},
            "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "json"}},
            "loggers": {logger_name: {"handlers": ["out"], "level": "DEBUG", "propagate": False}},
        }
    )
    logger = logging.getLogger(logger_name)
    stream = io.StringIO()
    handler = logger.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    return logger, stream


def resolve(path: str) -> None:
    if path == "mqlogging.JsonFormatter" and not hasattr(mqlogging, "JsonFormatter"):
        pytest.skip("mqlogging/__init__.py does not re-export JsonFormatter yet")


@pytest.mark.parametrize("path", PATHS)
def test_factory_form_passes_every_option(path: str, logger_name: str) -> None:
    """The ``()`` form reaches schema, static_fields and max_bytes."""
    resolve(path)
    logger, stream = configure(
        logger_name,
        {"()": path, "schema": "logstash", "static_fields": {"site": "CERN"}, "max_bytes": 2048},
    )
    formatter = logger.handlers[0].formatter
    assert isinstance(formatter, JsonFormatter)
    assert (formatter.schema, formatter.max_bytes) == ("logstash", 2048)
    logger.info("hello %s", "world", extra={"user_id": 7})
    logger.info("x" * 10_000)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (first["message"], first["site"], first["user_id"]) == ("hello world", "CERN", 7)
    assert first["@version"] == 1
    assert second["mqlogging"]["truncated"] is True


def test_factory_form_accepts_format_for_flat(logger_name: str) -> None:
    """A ``format`` key in the ``()`` form becomes fmt (dictConfig's own retry) for 'flat'."""
    logger, stream = configure(
        logger_name,
        {
            "()": "mqlogging.formatting.JsonFormatter",
            "schema": "flat",
            "format": "%(levelname)s %(message)s",
        },
    )
    logger.warning("careful")
    doc = json.loads(stream.getvalue())
    assert (doc["levelname"], doc["message"]) == ("WARNING", "careful")


@pytest.mark.parametrize("path", PATHS)
def test_class_form_gives_the_default_ecs_formatter(path: str, logger_name: str) -> None:
    """The ``class`` form (no options reach the formatter) gives ECS with default options."""
    resolve(path)
    logger, stream = configure(logger_name, {"class": path})
    logger.error("failed", extra={"order": 1})
    doc = json.loads(stream.getvalue())
    assert (doc["message"], doc["log"]["level"], doc["order"]) == ("failed", "error", 1)
    assert doc["event"]["id"]


def test_class_form_with_a_format_is_a_clear_error(logger_name: str) -> None:
    """A ``format`` in the class form would be silently ignored by ECS: it is refused."""
    with pytest.raises(ValueError, match="formatter 'json'") as info:
        configure(logger_name, {"class": PATHS[0], "format": "%(message)s"})
    assert isinstance(info.value.__cause__, ConfigurationError)
    assert "schema='flat'" in str(info.value.__cause__)


def test_factory_form_with_a_bad_schema_is_a_clear_error(logger_name: str) -> None:
    """A bad schema name fails dictConfig, with our one-line error as the cause."""
    with pytest.raises(ValueError, match="formatter 'json'") as info:
        configure(logger_name, {"()": PATHS[0], "schema": "gelf"})
    assert isinstance(info.value.__cause__, ConfigurationError)
    assert "unknown schema 'gelf'" in str(info.value.__cause__)
