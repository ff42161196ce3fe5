"""Subcommands of the ``tta`` console script, one module each: ``NAME``, ``HELP``, ``add_arguments``, ``run``."""

from __future__ import annotations

from types import ModuleType

__all__ = ["COMMANDS"]


def __getattr__(name: str) -> tuple[ModuleType, ...]:
    """Return ``COMMANDS``, importing the subcommands (and torch) on first use, not with :mod:`eval.commands.errors`."""
    if name != "COMMANDS":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from eval.commands import bench, corrupt, dann, export, listing, report, train_diffusion, train_source

    # The one place where subcommands are registered, in the order `tta --help` shows them.
    return (bench, report, corrupt, export, train_source, train_diffusion, dann, listing)
