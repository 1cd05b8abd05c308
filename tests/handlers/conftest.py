"""Fixtures for the MQHandler tests. The URL and drain helpers they use are
:mod:`harness.drain`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def app_logger(request: pytest.FixtureRequest) -> Iterator[logging.Logger]:
    """A fresh, non-propagating logger; its handlers are closed and removed afterwards."""
    logger = logging.getLogger(f"app.{request.node.name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
