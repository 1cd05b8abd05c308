"""``MQHandler``: the stdlib handler that ships JSON records to message brokers."""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from .. import _fork
from .._types import Message
from ..backends.endpoints import Endpoint
from ..errors import ConfigurationError, MQLoggingError
from ..formatting import JsonFormatter
from ..wire import DroppedRange, new_producer_id
from ._complain import Complainer
from ._config import HandlerConfig, ignored_roots
from ._markers import marker_record, marker_stamp
from ._sender import Pipeline

__all__ = ["MQHandler"]

_DEFAULT = HandlerConfig  # the class attributes are the options' defaults


# What Filterer.filter returns for a record every filter passed (3.12+: the record).
_FILTER_RETURNS_RECORD = sys.version_info >= (3, 12)

#: The drop reason of a record neither formatted nor made into a fallback record.
UNFORMATTABLE = "unformattable"


class _Unmade(Exception):
    """prepare() could not make a message, and counted and announced the record as dropped:
    emit() has nothing more to report (no traceback)."""


class MQHandler(logging.Handler):
    """Publish every record as one JSON document to message brokers, without blocking.

    ``emit()`` formats the record on the caller's thread (so ``args``, ``exc_info`` and
    context variables are captured as they were) and appends the encoded bytes to a bounded
    in-memory queue; a sender thread (one per handler, started on the first record, or at
    once when the spool holds records an earlier run left) batches them, publishes each batch
    with broker confirmation, fails over between endpoints, spools to disk when no endpoint
    takes a batch, and replays the spool FIFO once one does.

    Everything is a plain keyword value, so :func:`logging.config.dictConfig` (and YAML/JSON
    files loaded into it) can build it::

        "handlers": {"mq": {"class": "mqlogging.MQHandler",
                            "endpoints": ["amqps://broker1/", "stomp+ssl://broker2/queue/logs"],
                            "static_fields": {"service": "billing"}}}

    Args:
        endpoints: One URL or a list (``amqp[s]://``, ``stomp[+ssl]://``, ``local://``,
            ``elasticsearch+https://``...), see :class:`~mqlogging.backends.Endpoint`.
        strategy: ``"failover"`` (the first healthy endpoint in list order; the earlier ones are
            probed again with capped, jittered backoff and take over when they recover),
            ``"roundrobin"`` (batches alternate among healthy endpoints) or ``"all"`` (every
            record to every endpoint; each endpoint has its own spool, so a down endpoint gets
            its copies later while the others go on).
        spool: Spool directory; ``None`` (default) uses ``$XDG_STATE_HOME/mqlogging/spool/<id>``
            (``~/.local/state/...``; ``<id>`` is derived from the endpoints; if that cannot be
            created, ``<tmp>/mqlogging-<uid>/spool/<id>``, said once on stderr), ``False``
            disables the spool (undeliverable batches are then dropped and counted as
            ``unsent``). If the spool fails later (disk full, directory gone), records go on to
            the broker from memory; only those that can be neither sent nor held are dropped,
            counted as ``spool_error``; ``durability="spool"`` then degrades to memory mode.
        schema: ``"ecs"`` (default), ``"logstash"``, ``"flat"`` or ``"otel"``: see
            :class:`~mqlogging.JsonFormatter`.
        static_fields: Fields added to every record (service, site...).
        max_record_bytes: Largest record; longer ones are truncated and marked (256 KiB).
        batch_size: Records per publish (a batch is confirmed as a whole).
        flush_interval: Seconds a record may wait for its batch to fill.
        queue_size: Records the in-memory queue holds before the ``overflow`` policy applies.
        overflow: When the queue is full: ``"spool"`` (default: move the queue and the record
            to the spool, on the caller's thread — the only path where a caller writes to disk),
            ``"drop"`` (drop the new record) or ``"block"`` (wait up to ``block_timeout``, then
            drop). Drops are counted in :meth:`stats`.
        block_timeout: Longest wait of ``overflow="block"``, in seconds.
        spool_max_bytes: Bound of the spool directory; beyond it the oldest records are dropped
            (counted as ``spool_full``).
        spool_options: Other :class:`~mqlogging.spool.Spool` options (``segment_bytes``,
            ``fsync``...).
        durability: ``"auto"`` (default: ``"memory"``, except in ``multiprocessing``/billiard
            children, which write ahead: see *Fork safety*), ``"memory"`` (everywhere) or
            ``"spool"`` (write-ahead everywhere: see below).
        close_timeout: :meth:`close` (hence :func:`logging.shutdown` at exit) delivers what it
            can within this many seconds -- retrying a failed endpoint until then -- then spools
            the rest and returns; it returns as soon as everything is confirmed.
        retry_max: Cap of the backoff between attempts on a failed endpoint, in seconds.
        connect_timeout: Override every endpoint's connect timeout (seconds).
        timeout: Override every endpoint's confirm timeout (seconds).
        level: The handler's level.

    Delivery guarantees:
        At-least-once per endpoint lane: a record leaves memory or the spool only once a broker
        confirmed it; a batch whose confirmation was lost is sent again (same record ids).
        Order: records of one handler (in one process) arrive at each endpoint in emit order,
        spool replay included. With ``durability="memory"``, a ``kill -9`` of the process loses
        at most the records still in memory: ``queue_size + batch_size`` (the queue and the
        batch being published). With ``durability="spool"`` every record is written to the spool
        (one ``write(2)``, no fsync by default: it survives the process, not a power cut) before
        ``emit()`` returns, and the sender publishes from the spool, so ``kill -9`` of the
        application loses nothing ``emit()`` returned from: the next run of the application (or
        ``mqlogging spool replay DIR --to URL``) delivers it.

    Caller cost and blocking:
        The caller formats the record and appends it to a deque; it waits on neither the network
        nor the disk, except on ``overflow="spool"`` (a bounded write), ``overflow="block"`` (at
        most ``block_timeout``) and ``durability="spool"`` (one write per record).

    Formatter:
        The wire format is one JSON document carrying the record id, so the formatter must be a
        :class:`~mqlogging.JsonFormatter` (configure its schema and fields there, e.g. with a
        dictConfig ``formatter`` entry); :meth:`setFormatter` raises
        :class:`~mqlogging.ConfigurationError` for any other formatter instead of silently
        sending something else.

    Fork safety:
        In a forked child (multiprocessing, gunicorn/celery prefork) the handler starts over:
        empty queue, new locks, new connections, sender started on the child's first record; the
        parent's queued records are the parent's to send, never resent by the child. In a
        child of ``multiprocessing`` or billiard (``Pool`` workers, Celery prefork children),
        with ``durability="auto"`` (the default), the handler writes every record to the spool
        before ``emit()`` returns, as with ``durability="spool"``: such children end with
        ``os._exit()`` or SIGTERM, where no exit hook runs, and what they could not ship is
        then shipped from the spool by the other processes sharing it (the parent, sibling or
        next children, the next run). An explicit ``durability="memory"`` is honoured there
        too: faster, and a terminated child may then lose what it held in memory.

    Recursion:
        Records from the ``mqlogging`` loggers and from the client library of every registered
        transport (``pika``, ``stomp``, ``elasticsearch``...: ``Transport.loggers``), and any
        record emitted by the sender thread, are ignored (counted as ``ignored``). The
        handler's own troubles go to stderr, at most once per 30 s per kind, and to
        :meth:`stats`.

    Thread-safety: every method may be called from any thread.
    """

    def __init__(
        self,
        endpoints: str | Endpoint | Sequence[str | Endpoint],
        *,
        strategy: str = _DEFAULT.strategy,
        spool: str | os.PathLike[str] | bool | None = None,
        schema: str = _DEFAULT.schema,
        static_fields: Mapping[str, Any] | None = _DEFAULT.static_fields,
        max_record_bytes: int | None = _DEFAULT.max_record_bytes,
        batch_size: int = _DEFAULT.batch_size,
        flush_interval: float = _DEFAULT.flush_interval,
        queue_size: int = _DEFAULT.queue_size,
        overflow: str = _DEFAULT.overflow,
        block_timeout: float = _DEFAULT.block_timeout,
        spool_max_bytes: int | str = _DEFAULT.spool_max_bytes,
        spool_options: Mapping[str, Any] | None = None,
        durability: str = _DEFAULT.durability,
        close_timeout: float = _DEFAULT.close_timeout,
        retry_max: float = _DEFAULT.retry_max,
        connect_timeout: float | None = _DEFAULT.connect_timeout,
        timeout: float | None = _DEFAULT.timeout,
        level: int | str = logging.NOTSET,
    ) -> None:
        complain = Complainer()
        config = HandlerConfig.from_options(
            endpoints,
            spool=spool,
            spool_options=spool_options,
            complain=complain,
            strategy=strategy,
            schema=schema,
            static_fields=static_fields,
            max_record_bytes=max_record_bytes,
            batch_size=batch_size,
            flush_interval=flush_interval,
            queue_size=queue_size,
            overflow=overflow,
            block_timeout=block_timeout,
            spool_max_bytes=spool_max_bytes,
            durability=durability,
            close_timeout=close_timeout,
            retry_max=retry_max,
            connect_timeout=connect_timeout,
            timeout=timeout,
        )
        formatter = JsonFormatter(
            schema=config.schema,
            static_fields=config.static_fields,
            max_bytes=config.max_record_bytes,
        )
        try:  # before Handler.__init__: a refused handler must not join logging's shutdown list
            pipe = Pipeline(config, complain, self._make_marker)
        except MQLoggingError as exc:
            msg = f"MQHandler: {exc}"
            raise ConfigurationError(msg) from exc
        super().__init__(level)
        self.config = config
        self._ignored_roots = ignored_roots()
        # In a pool child: hook SIGTERM again on the first record (billiard installs its own
        # handler after the fork; see _fork.close_on_sigterm).
        self._hook_sigterm = False
        self._new_producer()
        self._complain = complain
        self._format_errors = 0  # records shipped as fallback records (stats: format_errors)
        self._format_errors_lock = threading.Lock()
        self.setFormatter(formatter)
        self._pipe = pipe
        _fork.register(self)
        if _fork.in_pool_child():  # built in a pool worker: the care an inherited one gets
            self._in_process_child()
        self._pipe.start_if_spooled()

    def __repr__(self) -> str:
        names = ", ".join(ep.redacted() for ep in self.config.endpoints)
        level = logging.getLevelName(self.level)
        return f"<MQHandler [{names}] strategy={self.config.strategy} ({level})>"

    # -- formatter ------------------------------------------------------------------------------

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        """Use ``fmt`` (a :class:`~mqlogging.JsonFormatter`); ``None`` restores the default.

        Raises:
            ConfigurationError: ``fmt`` is not a :class:`~mqlogging.JsonFormatter`.
        """
        if fmt is None:
            fmt = JsonFormatter()
        if not isinstance(fmt, JsonFormatter):
            msg = (
                f"MQHandler needs a mqlogging.JsonFormatter, not {type(fmt).__name__}: records "
                "go on the wire as JSON with an id; configure the schema with "
                "'()': 'mqlogging.JsonFormatter' or leave the formatter out"
            )
            raise ConfigurationError(msg)
        self.formatter = fmt
        self._format_message = fmt.format_message
        self._fallback_message = fmt.fallback_message

    # -- the caller's path ----------------------------------------------------------------------

    def handle(self, record: logging.LogRecord) -> bool | logging.LogRecord:  # type: ignore[override]
        """Filter, then :meth:`emit` — without the handler lock: :meth:`enqueue` is thread-safe
        and the formatter keeps no state, so concurrent callers never wait for each other."""
        if not self.filters:  # the usual case: no filter call, no loop (issue #13)
            self.emit(record)
            return record if _FILTER_RETURNS_RECORD else True
        rv = self.filter(record)
        if isinstance(rv, logging.LogRecord):  # Python 3.12+: a filter may return a new record
            record = rv
        if rv:
            self.emit(record)
        return rv

    def emit(self, record: logging.LogRecord) -> None:
        """Format ``record`` and queue it; never raises (errors go to :meth:`handleError`)."""
        try:
            root = record.name.partition(".")[0]
        except Exception:  # a name a filter or record factory broke: a fallback record's
            root = None
        if root in self._ignored_roots or threading.get_ident() == self._pipe.sender_ident:
            self._pipe.ignore()
            return
        try:
            self.enqueue(self.prepare(record))
        except _Unmade:  # counted, and announced by a marker
            pass
        except Exception:
            self.handleError(record)

    def prepare(self, record: logging.LogRecord) -> Message:
        """Turn ``record`` into its wire message on the caller's thread (override to enrich).

        The record gets this handler's producer id and the next sequence number
        (:mod:`mqlogging.wire`): ``next()`` of an :func:`itertools.count` is atomic, so
        concurrent callers never share or skip a number.

        A record the formatter cannot format (a filter or record factory broke one of its
        attributes) ships as the formatter's fallback record with the same number, counted
        in ``stats()["format_errors"]`` and said once per 30 s on stderr: a traceback per
        record and a gap in the sequence would be worse.
        """
        stamp = {"producer": self.producer, "seq": next(self._seq)}
        try:
            return self._format_message(record, stamp)
        except Exception as exc:
            return self._format_failed(record, stamp, exc)

    def _format_failed(
        self, record: logging.LogRecord, stamp: dict[str, Any], error: Exception
    ) -> Message:
        """The fallback message of a record whose formatting raised ``error``.

        Raises:
            _Unmade: not even the fallback could be made (it should never happen): the record
                is counted as dropped (``unformattable``) and its seq announced by a marker.
        """
        with self._format_errors_lock:
            self._format_errors += 1
        complain = self._complain
        kind = f"{type(error).__name__}: {error}"
        try:
            message = self._fallback_message(record, stamp, error)
        except Exception as exc:
            seq = stamp["seq"]
            self._pipe.drop_unmade(DroppedRange(stamp["producer"], seq, seq, UNFORMATTABLE))
            complain(
                UNFORMATTABLE,
                f"cannot format a record ({kind}) nor its fallback ({exc!r}); dropped it, "
                f"counted in stats()['dropped'][{UNFORMATTABLE!r}]",
            )
            raise _Unmade from exc
        complain(
            "format_error",
            f"cannot format a record ({kind}); shipped a fallback record with "
            "mqlogging.format_error instead (counted in stats()['format_errors'])",
        )
        return message

    def _new_producer(self) -> None:
        """A new producer identity (host, pid, random part) whose sequence starts at 1."""
        #: This handler's producer id in this process (``mqlogging.producer`` of its records).
        self.producer = new_producer_id()
        self._seq = itertools.count(1)

    def _make_marker(self, ranges: Sequence[DroppedRange]) -> Message:
        """The record announcing that ``ranges`` were dropped by policy (:mod:`mqlogging.wire`).

        Built by the handler because it owns the formatter, the producer id and the sequence:
        the marker is a WARNING record of logger ``mqlogging`` with this producer's next seq,
        so a lost marker is itself a visible gap.
        """
        stamp = marker_stamp(self.producer, next(self._seq), ranges)
        return self._format_message(marker_record(ranges), stamp)

    def enqueue(self, message: Message) -> None:
        """Hand ``message`` to the pipeline (one call: a deque append in the normal path)."""
        if self._hook_sigterm:
            self._hook_sigterm = False
            _fork.close_on_sigterm(self)
        self._pipe.offer(message)

    # -- lifecycle ------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:  # type: ignore[override]
        """Wait until the records emitted so far are confirmed by a broker, retrying failed
        endpoints meanwhile; at most ``timeout`` seconds (default ``close_timeout``).

        Returns False if the time ran out first (nothing is lost: the records stay queued or
        spooled). After :meth:`close` it returns at once (everything left is in the spool).
        """
        return self._pipe.flush(self.config.close_timeout if timeout is None else timeout)

    def close(self) -> None:
        """Deliver what is queued within ``close_timeout``, spool the rest, stop the sender.

        Idempotent; also called by :func:`logging.shutdown` at interpreter exit. Never waits
        longer than ``close_timeout`` (plus a bounded spool write), even if a broker accepts
        connections and never answers. Records emitted after ``close()`` go to the spool.
        """
        try:
            self._pipe.close(self.config.close_timeout)
        finally:
            super().close()

    def after_fork_in_child(self) -> None:
        """Fresh pipeline in a forked child; the parent's is kept, untouched (see _fork)."""
        self._new_producer()  # the child is a producer of its own: its numbers start at 1
        self._complain = Complainer()
        self._format_errors = 0
        self._format_errors_lock = threading.Lock()
        self._pipe = self._pipe.reset_after_fork()
        mp_util = sys.modules.get("multiprocessing.util")
        if mp_util is not None:  # billiard (Celery prefork) shares this registry
            mp_util.register_after_fork(self, MQHandler._in_process_child)

    def _in_process_child(self) -> None:
        """Called by ``multiprocessing``'s (or billiard's) ``Process._bootstrap`` in a child
        it forked: such a child ends with ``os._exit()``, or is terminated by SIGTERM
        (``Pool.terminate()``, Celery's recycled and warm-shut-down children: issue #11,
        defects 4 and 16), where no exit hook runs. The pipeline writes ahead to the spool
        there, so whatever ends the child, the next process sharing the spool ships it; and
        where SIGTERM has its default action, it first delivers what it can within a bound
        (fewer records shipped twice, no wait for another process to adopt the rest)."""
        if self.config.durability == "auto":
            self._pipe.write_ahead_in_child()
        _fork.close_on_sigterm(self)
        self._hook_sigterm = True

    def close_before_exit(self, timeout: float) -> None:
        """Deliver or spool within ``timeout`` (SIGTERM in a pool child: see ``_fork``)."""
        self._pipe.finish(min(self.config.close_timeout, timeout))

    # -- observability --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters and health, with stable names (for the metrics exporter).

        ``queued`` (in memory now), ``sent`` (records handed to a broker, retries included),
        ``confirmed`` (records a broker confirmed), ``spooled`` (records written to the spool),
        ``replayed`` (spooled records confirmed later), ``dropped`` (by reason: ``overflow``,
        ``spool_full``, ``spool_error``, ``spool_expired``, ``spool_corrupt``,
        ``spool_deleted`` (the spool directory was deleted under its writer), ``unsent``,
        ``closed``; each drop is announced by a marker record, see :mod:`mqlogging.wire`),
        ``markers`` (``sent``: marker records published or spooled; ``unattributed``: dropped
        bodies without a producer/seq, e.g. torn spool lines; ``unannounced``: drops beyond
        the bounded ledger),
        ``ignored`` (records refused by the recursion guard), ``format_errors`` (records the
        formatter could not format, shipped as fallback records with
        ``mqlogging.format_error``; one neither formatted nor made into a fallback is dropped
        as ``unformattable``), ``endpoints``
        (redacted URL -> ``healthy``, ``last_error``, ``last_error_at``, ``sent``,
        ``confirmed``, ``failures``) and ``spool`` (``bytes``, ``records``, ``directories``).
        """
        stats = self._pipe.stats()
        stats["format_errors"] = self._format_errors
        return stats
