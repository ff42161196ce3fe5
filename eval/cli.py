"""The ``tta`` console script: argument parsing and wiring only; each subcommand is a module of eval.commands."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from eval.commands import COMMANDS
from eval.commands.errors import CLIError
from eval.commands.options import parse_options

__all__ = ["main", "build_parser", "parse_options", "CLIError"]


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the ``tta`` command with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="tta", description="Test-time adaptation: benchmark and tools.")
    names = ",".join(command.NAME for command in COMMANDS)
    sub = parser.add_subparsers(dest="command", metavar=f"{{{names}}}")
    for command in COMMANDS:
        command.add_arguments(sub.add_parser(command.NAME, help=command.HELP, description=command.HELP))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tta`` command; returns the exit code (2 for user errors, 130 when interrupted)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    command = next(c for c in COMMANDS if c.NAME == args.command)
    try:
        return int(command.run(args))
    except (CLIError, ValueError, FileNotFoundError, ImportError) as err:  # ImportError: a missing extra
        print(f"tta: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
