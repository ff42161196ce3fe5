"""``tta list``: the registered methods with their options, the corruptions and the protocols."""

from __future__ import annotations

import argparse

import tta
from eval.corruptions import list_corruptions
from eval.protocols.registry import list_protocols
from eval.commands.help import show_defaults
from eval.commands.output import print_output

NAME = "list"
HELP = "list methods (with options), corruptions and protocols"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``tta list`` takes no flags."""
    show_defaults(p)


def run(args: argparse.Namespace) -> int:
    """Print what can be run."""
    lines = ["methods:"]
    for name in tta.list_methods():
        opts = ", ".join(f"{k}={option.default!r}" for k, option in tta.method_options(name).items())
        lines.append(f"  {name:8s} {opts}")
    lines.append("  (also: installed tta.methods entry points, and module:Class naming a tta.TTAMethod subclass)")
    lines.append(f"corruptions (implemented): {', '.join(list_corruptions('available'))}")
    lines.append(f"protocols: {', '.join(list_protocols())}")
    print_output("\n".join(lines))
    return 0
