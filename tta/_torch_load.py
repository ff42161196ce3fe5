"""Safe reading of torch files: only tensors and plain containers, any unreadable file one clear error."""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path

import torch

__all__ = ["read_torch_file", "load_without_code", "unreadable_reason"]

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
