"""Fixtures for the collector tests: an in-process service runner and an ES client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mqlogging.collector.config import parse_config
from mqlogging.collector.service import CollectorService


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Callable[..., CollectorService]]:
    """``service(sources=[...], sinks=[...], **tables)`` starts a CollectorService in this
    process (HTTP on a free port; ``state_dir``, hence the default dead-letter spool, under
    ``tmp_path/state``); every service is closed (drained) at teardown."""
    started: list[CollectorService] = []

    def make(**tables: Any) -> CollectorService:
        tables.setdefault("http", {"listen": "127.0.0.1:0"})
        tables.setdefault(
            "pipeline", {"batch_max_wait": 0.2, "retry_initial": 0.1, "retry_max": 1.0}
        )
        tables["collector"] = {
            "shutdown_timeout": 5.0,
            "state_dir": str(tmp_path / "state"),
            **tables.get("collector", {}),
        }
        svc = CollectorService(parse_config(tables, env={}))
        svc.start()
        started.append(svc)
        return svc

    yield make
    for svc in started:
        svc.close()
