"""Atomic writes of the files commands produce (tables, JSON reports, plots): old or complete, never partial.

The bytes go to a temporary file beside the target, are flushed to disk, then renamed over it; a failed
or interrupted write removes the temporary file and leaves the target as it was. Torch objects use
:func:`tta._io.atomic_torch_save`, which works the same way.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["write_atomically", "write_text_atomically"]

_PREFIX_CHARS = 64  # of the target's name in the temporary file's, so a long name still fits NAME_MAX


def write_atomically(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write`` on a temporary binary file beside ``path``, then rename it to ``path``.

    Missing folders are created; the file gets mode ``0o644`` (the temporary file is private until renamed).

    Raises:
        OSError: The write failed (no space, no permission, a name too long); the message names ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:_PREFIX_CHARS]}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise _about(path, error) from error
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the rename, so a power loss leaves the old file or the new
        os.chmod(tmp, 0o644)  # mkstemp creates the file private (0600)
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _about(path, error) from error
        raise
    return path


def write_text_atomically(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` with :func:`write_atomically`."""
    return write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def _about(path: Path, error: OSError) -> OSError:
    """Return ``error`` restated about ``path`` (the user's file), not the temporary file beside it."""
    return OSError(error.errno, f"cannot write {os.fspath(path)!r}: {error.strerror or error}")
