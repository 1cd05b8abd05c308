"""Logging handlers: :class:`MQHandler` publishes records to message brokers.

Implementation lives in private modules: ``_handler`` (the ``logging.Handler``: prepare,
enqueue, flush, close), ``_config`` (``HandlerConfig``: every option, its type and default),
``_sender`` (the ``Pipeline``: queue, sender thread, batch, confirm, spill and replay; its one
state in ``_state``), ``_lanes`` (per-endpoint sending and the strategy), ``_spools`` (writes to the
lanes' spools and the count of what they do not take), ``_spooldir`` (where a lane's spool
lives and what it is bound to), ``_markers`` (drop markers), ``_complain``
(troubles on stderr) and ``_fork`` (the at-fork reset registry). ``replay_spool`` ships a spool
directory to an endpoint (``mqlogging spool replay``).
"""

from __future__ import annotations

from ._handler import MQHandler
from ._replay import ReplayResult, replay_spool

__all__ = ["MQHandler", "ReplayResult", "replay_spool"]
