"""Help output of the subcommands: every flag's default is shown in ``tta <command> --help``."""

from __future__ import annotations

import argparse

__all__ = ["DefaultsHelpFormatter", "show_defaults"]


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Append ``(default: X)`` to a flag's help when it has a default worth reading (not ``None`` or ``False``)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        hidden = any(action.default is value for value in (None, False, argparse.SUPPRESS)) or action.default == []
        if "%(default)" in text or not action.option_strings or hidden:
            return text
        return f"{text} (default: %(default)s)"


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Make ``parser``'s help show each flag's default (called by every subcommand's ``add_arguments``)."""
    parser.formatter_class = DefaultsHelpFormatter
