"""The collector: drain broker queues (and spool directories) into Elasticsearch, Logstash,
files — acking a message only once every sink has it.

Run it with ``mqlogging collect --config collector.toml`` or ``python -m mqlogging.collector``;
embed it with :func:`run` or :class:`CollectorService`. Configuration: :mod:`.config`.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, get_args

from .config import CollectorConfig, LogLevel, load_config, parse_config

if TYPE_CHECKING:
    from .service import CollectorService

__all__ = [
    "GC_YOUNG_THRESHOLD",
    "CollectorConfig",
    "CollectorService",
    "add_arguments",
    "load_config",
    "main",
    "parse_config",
    "run",
    "run_command",
    "tune_gc",
]

GC_YOUNG_THRESHOLD = 20_000
"""Container allocations between two young-generation collections in a collector process
(CPython's default: 700); see :func:`tune_gc`."""


def run(config: CollectorConfig) -> int:
    """Run the collector until SIGTERM/SIGINT; return the process exit code (0 on a clean stop).

    Must be called from the main thread for the signal handlers to be installed.
    """
    from .service import CollectorService

    return CollectorService(config).run()


def _run_own_process(config: CollectorConfig) -> int:
    """:func:`run` in a process that is the collector's own (``mqlogging collect``, ``python
    -m``): the GC is tuned for it (:func:`tune_gc`) once the service is built."""
    from .service import CollectorService

    service = CollectorService(config)
    tune_gc()
    return service.run()


def tune_gc() -> None:
    """Set CPython's cyclic garbage collector up for a collector process (issue #13).

    Called by the ``collect`` command (``mqlogging collect``, ``python -m
    mqlogging.collector``) once the service is built, so it applies to the process that runs
    the collector, not to an application that embeds it with :func:`run` or a
    :class:`CollectorService`: the GC is process-wide, and that is the application's call.

    Why: each record in flight is a few container objects (its delivery, its document, its
    pipeline state) that live for about one batch and never form reference cycles. With the
    default thresholds they outlive ~10 young collections, get promoted and are scanned again
    in every full collection together with everything the process imported: a quarter to a
    third of the CPU per record on packed input, measured. So everything alive after start-up
    (modules, config, clients) is frozen out of the collections (``gc.freeze``) and a young
    collection runs every :data:`GC_YOUNG_THRESHOLD` allocations, by when most records of a
    batch are gone.
    Reference counting still frees everything that is not a cycle at once; the rare cyclic
    garbage waits a little longer.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def __getattr__(name: str) -> Any:
    # The service pulls in prometheus-client and the sinks: import it only when used, so
    # ``mqlogging --help`` works without the [collector] extra.
    if name == "CollectorService":
        from .service import CollectorService

        return CollectorService
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``collect`` options (shared by ``mqlogging collect`` and ``python -m``)."""
    parser.add_argument(
        "--config",
        "-c",
        required=True,
        metavar="FILE",
        help="collector TOML file (see examples/collector-*.toml)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the configuration and exit (0 valid, 2 invalid)",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        choices=get_args(LogLevel),
        help="override [collector] log_level",
    )


def run_command(args: argparse.Namespace) -> int:
    """Execute parsed ``collect`` arguments. Raises ConfigurationError (the CLI: exit 2)."""
    config = load_config(args.config)
    if args.check:
        print(config.summary())
        return 0
    level = (args.log_level or config.collector.log_level).upper()
    logging.basicConfig(
        level=getattr(logging, level),
        stream=sys.stderr,
        format=f"%(asctime)s mqlogging-collector[{os.getpid()}] %(levelname)s %(message)s",
    )
    # The client libraries log every request/frame at INFO; our own lines say what matters.
    # httpx (OTLP sink) logs each POST with its full URL, a password in it included.
    for chatty in ("elastic_transport", "pika", "stomp.py", "httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))
    return _run_own_process(config)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mqlogging.collector``: like ``mqlogging collect``."""
    from ..errors import MQLoggingError

    parser = argparse.ArgumentParser(
        prog="python -m mqlogging.collector", description="Drain broker queues into sinks."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_command(args)
    except MQLoggingError as exc:
        print(f"mqlogging: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
