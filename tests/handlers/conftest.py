"""Fixtures for the MQHandler tests. The URL and drain helpers they use are
:mod:`harness.drain`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.proxy import Outage, TcpProxy, in_front


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


@pytest.fixture
def outage() -> Iterator[Outage]:
    """``outage(url, port)``: :func:`harness.proxy.in_front`, the proxies closed afterwards."""
    proxies: list[TcpProxy] = []

    def make(url: str, port: int) -> tuple[TcpProxy, str]:
        proxy, proxied = in_front(url, port)
        proxies.append(proxy)
        return proxy, proxied

    yield make
    for proxy in proxies:
        proxy.close()
