"""The ``mqlogging`` command: a thin layer over the public API.

Each subcommand is one ``_add_<name>`` function that registers its parser; the work itself lives
in the module the subcommand is about (``mqlogging spool``'s in :mod:`mqlogging.cli.spool`), so
this module never grows logic of its own.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._version import __version__
from ..errors import MQLoggingError

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mqlogging",
        description="Centralised structured logging over message brokers.",
    )
    parser.add_argument("--version", action="version", version=f"mqlogging {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_collect(subparsers)
    _add_spool(subparsers)
    _add_rabbitmq(subparsers)
    _add_tail(subparsers)
    _add_run(subparsers)
    _add_audit(subparsers)
    _add_errors(subparsers)
    return parser


def _add_collect(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``mqlogging collect --config FILE [--check]``: run (or validate) the collector."""
    parser = subparsers.add_parser(
        "collect",
        help="drain broker queues into Elasticsearch / Logstash / files",
        description="Run the collector service (SIGTERM: drain and exit 0; SIGHUP: reopen files).",
    )

    def run(args: argparse.Namespace) -> int:
        from ..collector import run_command

        return run_command(args)

    from ..collector import add_arguments

    add_arguments(parser)
    parser.set_defaults(run=run)


def _add_spool(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``mqlogging spool inspect|export|replay DIR``: look at or ship a handler's spool."""
    parser = subparsers.add_parser(
        "spool",
        help="inspect, export or replay a spool directory (records kept while brokers were down)",
        description="Work on a spool directory offline: copy it anywhere and replay it from there.",
    )
    actions = parser.add_subparsers(dest="spool_command", metavar="ACTION", required=True)

    inspect = actions.add_parser("inspect", help="records, bytes, oldest/newest, corrupt lines")
    inspect.add_argument("directory", metavar="DIR")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")

    export = actions.add_parser("export", help="write the records to stdout as JSON lines")
    export.add_argument("directory", metavar="DIR")

    replay = actions.add_parser(
        "replay",
        help="publish the records to a broker, deleting only what it confirmed",
        description="Publish the records to a broker, deleting only what it confirmed. "
        "Exit 0: all confirmed; 1: the replay stopped (run it again, it resumes); 3: done, "
        "but the destination refused some records for good (e.g. above the broker's message "
        "size limit): their ids and reason are on stderr, they are no longer in the spool.",
    )
    replay.add_argument("directory", metavar="DIR")
    replay.add_argument(
        "--to",
        required=True,
        metavar="URL",
        help="endpoint URL to publish to (any URL: the DESTINATION file is not checked)",
    )
    replay.add_argument("--batch-size", type=int, default=500, metavar="N")
    replay.add_argument("--quiet", action="store_true", help="no progress on stderr")

    def run(args: argparse.Namespace) -> int:
        from . import spool

        if args.spool_command == "inspect":
            return spool.inspect_command(args.directory, as_json=args.json)
        if args.spool_command == "export":
            return spool.export_command(args.directory)
        return spool.replay_command(
            args.directory, args.to, batch_size=args.batch_size, quiet=args.quiet
        )

    parser.set_defaults(run=run)


def _add_rabbitmq(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``mqlogging rabbitmq setup --url URL ...``: least-privilege topology and users."""
    parser = subparsers.add_parser(
        "rabbitmq",
        help="set up RabbitMQ for logging: exchange, queues, least-privilege users",
        description="Administer RabbitMQ through its management HTTP API.",
    )
    actions = parser.add_subparsers(dest="rabbitmq_command", metavar="ACTION", required=True)
    setup = actions.add_parser(
        "setup",
        help="declare exchange, queue, dead-letter exchange/queue, producer and collector users",
        description=(
            "Idempotently declare the logging topology and two users: a producer that can only "
            "publish to the exchange and a collector that can only consume the queue. Clients "
            "must then use declare=false. Passwords are read from files or environment "
            "variables, never from the command line."
        ),
    )
    from ..rabbitmq_setup import add_arguments

    add_arguments(setup)

    def run(args: argparse.Namespace) -> int:
        from ..rabbitmq_setup import run_command

        return run_command(args)

    parser.set_defaults(run=run)


def _add_tail(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``mqlogging tail URL``: a live view of a queue or spool that takes nothing away."""
    from .. import tail

    parser = subparsers.add_parser(
        "tail",
        help="live, coloured view of the records of a queue or spool (takes nothing away)",
        description=tail.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tail.add_arguments(parser)
    parser.set_defaults(run=tail.run_command)


def _add_run(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``mqlogging run -- CMD ...``: ship a command's output lines as records."""
    from .. import run

    parser = subparsers.add_parser(
        "run",
        help="run a command and ship each line of its stdout/stderr as a log record",
        usage="%(prog)s [OPTIONS] -- CMD [ARGS...]",
        description=run.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_arguments(parser)
    parser.set_defaults(run=run.run_command)


def _add_audit(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``mqlogging audit --es URL --index P | --file PATH | --spool DIR``: prove no loss."""
    from .. import audit

    parser = subparsers.add_parser(
        "audit",
        help="per producer: records, gaps (lost), ranges dropped by policy, duplicates",
        description=audit.DESCRIPTION,
        epilog="Exit status: 0 no unexplained gap, 1 an unexplained gap, 2 usage or source error.",
    )
    audit.add_arguments(parser)
    parser.set_defaults(run=audit.run_command)


def _add_errors(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``mqlogging errors --es URL --index P | --file PATH [--since 1h]``: what broke."""
    from . import errors

    parser = subparsers.add_parser(
        "errors",
        help="top error/warning groups of a time window, by message template",
        description=errors.DESCRIPTION,
    )
    errors.add_arguments(parser)
    parser.set_defaults(run=errors.run_command)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        code: int = args.run(args)
    except MQLoggingError as exc:
        print(f"mqlogging: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
