"""The ``tta`` console script: argument parsing and wiring only; each subcommand is a module of eval.commands.

The subcommands (and torch with them) are imported inside :func:`main`, so an interrupt at any point of
start-up is answered like one during a run: one line and exit code 130.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys
from collections.abc import Sequence
from typing import Any

from eval.commands.errors import CLIError

__all__ = ["main", "build_parser"]

_USER_ERRORS = (CLIError, ValueError, OSError, ImportError, sqlite3.Error)
"""What a command reports as ``tta: error: ...`` with exit 2: bad input, a file it cannot read or write
(any ``OSError``: permissions, a full disk, a name too long), a store SQLite refuses, a missing extra."""


def __getattr__(name: str) -> Any:
    """Re-export :func:`eval.commands.options.parse_options` without importing torch with this module."""
    if name == "parse_options":
        from eval.commands.options import parse_options

        return parse_options
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the ``tta`` command with every registered subcommand."""
    from eval.commands import COMMANDS

    parser = argparse.ArgumentParser(prog="tta", description="Test-time adaptation: benchmark and tools.")
    names = ",".join(command.NAME for command in COMMANDS)
    sub = parser.add_subparsers(dest="command", metavar=f"{{{names}}}")
    for command in COMMANDS:
        command.add_arguments(sub.add_parser(command.NAME, help=command.HELP, description=command.HELP))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tta`` command; returns the exit code (2 for user errors, 130 when interrupted)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(argv)
    except KeyboardInterrupt:  # while starting (imports, checks) or in a command that does not handle it itself
        print("tta: interrupted; nothing more was done", file=sys.stderr)
        return 130
    except _USER_ERRORS as err:
        print(f"tta: error: {error_message(err)}", file=sys.stderr)
        return 2


def _run(argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and run the chosen subcommand."""
    from eval.commands import COMMANDS

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    command = next(c for c in COMMANDS if c.NAME == args.command)
    return int(command.run(args))


def error_message(err: BaseException) -> str:
    """Return ``err`` as one line: an ``OSError`` as ``what: file`` without its ``[Errno N]`` prefix."""
    text = str(err)
    if isinstance(err, OSError) and err.strerror:
        text = err.strerror + (f": {err.filename}" if err.filename else "")
    return " ".join(text.split("\n"))


if __name__ == "__main__":
    sys.exit(main())
