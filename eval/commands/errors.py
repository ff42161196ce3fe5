"""The error type every subcommand raises for user mistakes (reported as ``tta: error: ...``, exit 2)."""

from __future__ import annotations

__all__ = ["CLIError"]


class CLIError(Exception):
    """A user error reported as ``tta: error: ...`` with exit code 2."""
