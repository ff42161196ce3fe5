"""Subcommands of the ``tta`` console script, one module each: ``NAME``, ``HELP``, ``add_arguments``, ``run``."""

from __future__ import annotations

from types import ModuleType

from eval.commands import bench, corrupt, dann, export, listing, report, train_diffusion, train_source

__all__ = ["COMMANDS"]

# The one place where subcommands are registered, in the order `tta --help` shows them.
COMMANDS: tuple[ModuleType, ...] = (bench, report, corrupt, export, train_source, train_diffusion, dann, listing)
