"""Files: atomic writes (torch objects and text) and torch files read without running code."""

from __future__ import annotations

import glob
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

__all__ = ["atomic_torch_save", "remove_stale_temporaries", "check_writable_path", "write_atomically", "write_text_atomically", "read_torch_file", "load_without_code", "unreadable_reason"]


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


_PREFIX_CHARS = 64  # of the target's name in the temporary file's, so a long name still fits NAME_MAX


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: ``path`` is old or complete, never partial.

    Raises:
        ValueError: ``path`` cannot name a file (see :func:`check_writable_path`).
        OSError: the write failed (no space, no permission); the message names ``path``.
    """
    return write_atomically(check_writable_path(path), lambda handle: torch.save(obj, handle))


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files a killed writer of ``path`` left beside it; returns them.

    :func:`atomic_torch_save` removes its temporary file on any Python error, but a process killed
    mid-write (SIGKILL, out of memory) cannot. Call this where no write of ``path`` can be running,
    e.g. when a process starts checkpointing to it.
    """
    path = Path(path)
    pattern = f".{glob.escape(path.name[:_PREFIX_CHARS])}.*.tmp"  # the temporary names of write_atomically
    stale = sorted(path.parent.glob(pattern)) if path.parent.is_dir() else []
    for leftover in stale:
        leftover.unlink(missing_ok=True)
    return stale


def _naming(path: Path, error: OSError) -> OSError:
    """Return ``error`` restated about ``path`` (the user's file), not the temporary file beside it."""
    if error.errno is None:
        return OSError(f"cannot write {os.fspath(path)!r}: {error}")
    return OSError(error.errno, f"cannot write {os.fspath(path)!r}: {error.strerror}")


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
        raise _naming(path, error) from error
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
            raise _naming(path, error) from error
        raise
    return path


def write_text_atomically(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` with :func:`write_atomically`."""
    return write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


# Sentences of torch's refusal text that advise loading the file anyway (weights_only=False, allowlisting
# the global "if you trust the source") or point to its docs: a refusal must never repeat them.
_ADVICE = re.compile(r"weights.only|trust|allowlist|safe_globals|can still be loaded|file an issue|documentation",
                     re.IGNORECASE)
# What torch names when a pickle asks for a function or class beyond tensors and plain containers.
_CODE = re.compile(r"GLOBAL (\S+?)\.?(?:\s|$)|unrecognized function (.+?)(?: which belongs|$)|"
                   r"allowlisted via `add_safe_globals`,? but got (.+)$", re.MULTILINE)


def read_torch_file(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu",
                    what: str = "torch file") -> object:
    """Return the content of a file written by ``torch.save``, read with ``weights_only=True`` (no code runs).

    Args:
        path: The file.
        map_location: Device the tensors are loaded to.
        what: What the file should be, for messages (e.g. ``"source-model checkpoint"``).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If ``path`` is a folder, or its content is truncated, corrupt, not a torch file, or
            holds objects other than tensors and plain containers (which would run code to unpickle);
            the message is one line naming the file.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; pass the file itself")
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        return load_without_code(path, map_location=map_location)
    except Exception as error:  # noqa: BLE001 - malformed bytes surface as any of a dozen types (OSError, KeyError, ...)
        raise ValueError(f"{what} {path} is not readable: {unreadable_reason(error)}") from error


def load_without_code(path: Path, *, map_location: str | torch.device = "cpu") -> object:
    """Return ``torch.load(path, weights_only=True)``; raises what torch raises (see :func:`unreadable_reason`)."""
    with warnings.catch_warnings():  # torch warns about a plain pickle's protocol before refusing it
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location=map_location, weights_only=True)


def unreadable_reason(error: Exception) -> str:
    """Return one line saying why ``torch.load(weights_only=True)`` refused a file, without torch's advice."""
    text = _without_ansi(str(error))
    code = _CODE.search(text)
    if isinstance(error, pickle.UnpicklingError) and code is not None:
        found = next(group for group in code.groups() if group).strip()
        return (f"it holds code or objects other than tensors and plain containers ({found}), which are refused: "
                "not a checkpoint readable without executing code")
    detail = _detail(text)
    if isinstance(error, (OSError, RuntimeError, EOFError)):
        return f"truncated or not a file written by torch.save ({type(error).__name__}: {detail})"
    return f"corrupt or not a file written by torch.save ({type(error).__name__}: {detail})"


def _without_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _detail(text: str) -> str:
    """Return the first informative sentence of torch's message: its advice paragraphs come before it."""
    _, marker, rest = text.partition("WeightsUnpickler error:")
    lines = (line.strip() for line in (rest if marker else text).splitlines())
    sentences = (s.strip() for line in lines for s in re.split(r"(?<=\.)\s+", line))
    informative = [s for s in sentences if s and not _ADVICE.search(s)]
    return informative[0] if informative else "no detail"
