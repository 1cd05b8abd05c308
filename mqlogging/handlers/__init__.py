"""Logging handlers: :class:`MQHandler` publishes records to message brokers.

Implementation lives in private modules: ``_handler`` (the ``logging.Handler``: prepare,
enqueue, flush, close), ``_sender`` (queue, lanes, sender thread: batch, confirm, failover,
spool and replay) and ``_fork`` (the at-fork reset registry). ``replay_spool`` ships a spool
directory to an endpoint (``mqlogging spool replay``).
"""

from __future__ import annotations

from ._handler import MQHandler
from ._replay import ReplayResult, replay_spool

__all__ = ["MQHandler", "ReplayResult", "replay_spool"]
