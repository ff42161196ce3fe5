"""``tta list``: the registered methods with their options, the corruptions and the protocols."""

from __future__ import annotations

import argparse

import tta
from eval.corruptions import list_corruptions
from eval.protocols.registry import list_protocols

NAME = "list"
HELP = "list methods (with options), corruptions and protocols"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``tta list`` takes no flags."""


def run(args: argparse.Namespace) -> int:
    """Print what can be run."""
    print("methods:")
    for name in tta.list_methods():
        opts = ", ".join(f"{k}={option.default!r}" for k, option in tta.method_options(name).items())
        print(f"  {name:8s} {opts}")
    print("corruptions (implemented):", ", ".join(list_corruptions("available")))
    print("protocols:", ", ".join(list_protocols()))
    return 0
