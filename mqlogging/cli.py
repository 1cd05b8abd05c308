"""The ``mqlogging`` command: a thin layer over the public API.

Each subcommand is one ``_add_<name>`` function that registers its parser; the work itself lives
in the module the subcommand is about, so the CLI never grows logic of its own.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._version import __version__
from .errors import MQLoggingError

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mqlogging",
        description="Centralised structured logging over message brokers.",
    )
    parser.add_argument("--version", action="version", version=f"mqlogging {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


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
