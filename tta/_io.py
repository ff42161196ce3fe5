"""Atomic file writes shared by everything that saves torch objects (states, checkpoints)."""

from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_torch_save", "remove_stale_temporaries", "check_writable_path"]


def check_writable_path(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a ``Path`` if a file can be written there, else raise a ``ValueError`` naming it.

    The path must not be empty or an existing folder, and its nearest existing ancestor must be a
    folder (missing folders below it are created when writing).

    Raises:
        ValueError: ``path`` is empty, a folder, or lies under a file.
    """
    if os.fspath(path) == "":
        raise ValueError("cannot save to an empty path; pass a file path such as 'state.pt'")
    file = Path(path)
    if file.is_dir():
        raise ValueError(f"cannot save to {os.fspath(path)!r}: it is a folder; pass a file path such as "
                         f"{os.fspath(file / 'state.pt')!r}")
    for parent in file.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"cannot save to {os.fspath(path)!r}: {os.fspath(parent)!r} is a file, not a folder")
            break
    return file


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: ``path`` is old or complete, never partial.

    Raises:
        ValueError: ``path`` cannot name a file (see :func:`check_writable_path`).
        OSError: the write failed (no space, no permission); the message names ``path``.
    """
    path = check_writable_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise _naming(path, error) from error
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the rename, so a power loss leaves the old file or the new
        os.chmod(tmp, 0o644)  # mkstemp creates the file private (0600)
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _naming(path, error) from error
        raise
    return path


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files a killed writer of ``path`` left beside it; returns them.

    :func:`atomic_torch_save` removes its temporary file on any Python error, but a process killed
    mid-write (SIGKILL, out of memory) cannot. Call this where no write of ``path`` can be running,
    e.g. when a process starts checkpointing to it.
    """
    path = Path(path)
    stale = sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp")) if path.parent.is_dir() else []
    for leftover in stale:
        leftover.unlink(missing_ok=True)
    return stale


def _naming(path: Path, error: OSError) -> OSError:
    """Return ``error`` restated about ``path`` (the user's file), not the temporary file beside it."""
    if error.errno is None:
        return OSError(f"cannot write {os.fspath(path)!r}: {error}")
    return OSError(error.errno, f"cannot write {os.fspath(path)!r}: {error.strerror}")
