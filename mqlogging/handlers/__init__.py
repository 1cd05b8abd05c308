"""Logging handlers: :class:`MQHandler` publishes records to message brokers.

Implementation lives in private modules: ``_handler`` (the ``logging.Handler``: prepare,
enqueue, flush, close), ``_config`` (``HandlerConfig``: every option, its type and default),
``_sender`` (the ``Pipeline``: queue, sender thread, batch, confirm, spill and replay; its one
state in ``_state``), ``_lanes`` (per-endpoint sending and the strategy), ``_spools`` (writes to the
lanes' spools and the count of what they do not take), ``_spooldir`` (where a lane's spool
lives and what it is bound to), ``_markers`` (drop markers) and ``_complain`` (troubles on
stderr); the at-fork reset registry is :mod:`mqlogging._fork`. Shipping a spool directory to
an endpoint (``mqlogging spool replay``) is a tool of the CLI layer: :mod:`mqlogging.cli.spool`.
"""

from __future__ import annotations

import warnings
from typing import Any

from ._handler import MQHandler

__all__ = ["MQHandler"]

_MOVED = {"ReplayResult", "replay_spool"}


def __getattr__(name: str) -> Any:
    """``replay_spool`` and ``ReplayResult`` moved to :mod:`mqlogging.cli.spool` (issue #12);
    the old names keep working, with a DeprecationWarning, without this package importing the
    CLI layer."""
    if name in _MOVED:
        warnings.warn(
            f"mqlogging.handlers.{name} moved to mqlogging.cli.spool.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        from ..cli import spool

        return getattr(spool, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
