"""Checks of the files a command will write, made before any work so a bad path costs nothing."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from eval.commands.errors import CLIError

__all__ = ["check_output_file", "check_not_shipped"]


def check_output_file(path: Path, flag: str, *, suffixes: Collection[str] | None = None) -> None:
    """Raise if ``path`` cannot be written as a file; nothing is created.

    Args:
        path: The file the command will write (its missing folders are created then).
        flag: The option that gave it, for the message (e.g. ``--out``).
        suffixes: The accepted extensions, lower case with the dot (``None``: any).

    Raises:
        CLIError: If ``path`` is a folder, a folder above it is a file or not writable, a name in it is
            longer than the file system takes, or its extension is not one of ``suffixes``.
    """
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise CLIError(f"{flag} {path}: unsupported extension {path.suffix or '(none)'!r}; "
                       f"use one of {', '.join(sorted(suffixes))}")
    try:
        _check_parents(path, flag)
    except OSError as error:  # e.g. a name too long, a loop of links: what stat says, about the user's path
        raise CLIError(f"{flag} {path}: {error.strerror or error}") from None


def _check_parents(path: Path, flag: str) -> None:
    """Raise ``CLIError`` unless a file can be created at ``path`` below its nearest existing folder."""
    if path.is_dir():
        raise CLIError(f"{flag} {path} is a folder; pass a file path")
    absolute = path.absolute()
    for parent in absolute.parents:  # the nearest existing folder is where files get created
        if not parent.exists():
            continue
        if not parent.is_dir():
            raise CLIError(f"{flag} {path}: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise CLIError(f"{flag} {path}: cannot write in {parent} (permission denied)")
        _check_name_lengths(absolute.relative_to(parent).parts, parent, flag, path)
        return


def _check_name_lengths(names: tuple[str, ...], folder: Path, flag: str, path: Path) -> None:
    """Raise ``CLIError`` if a name to create under ``folder`` is longer than its file system takes."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # not reported (or not POSIX): the usual limit
        limit = 255
    for name in names:
        if len(os.fsencode(name)) > limit:
            raise CLIError(f"{flag} {path}: file name too long ({len(os.fsencode(name))} bytes, the file system "
                           f"takes at most {limit}); pass a shorter name")


def check_not_shipped(path: Path, flag: str, *, overwrite_shipped: bool) -> None:
    """Raise if ``path`` lies in the package's shipped assets (``eval/assets``) and overwriting them was not asked for.

    The shipped checkpoints are what ``tta bench`` and DDA use by default; a retrained model goes elsewhere
    unless ``--overwrite-shipped`` says to replace them.
    """
    from eval.models.source import DEFAULT_CHECKPOINT

    assets = DEFAULT_CHECKPOINT.parent.resolve()
    if not overwrite_shipped and path.resolve().is_relative_to(assets):
        raise CLIError(f"{flag} {path} is a shipped asset in {assets}; pass another path, or add "
                       "--overwrite-shipped to replace it")
