"""Safe reading of torch files: only tensors and plain containers, any unreadable file one clear error."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import torch

__all__ = ["read_torch_file"]


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
        with warnings.catch_warnings():  # torch warns about a plain pickle's protocol before refusing it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - malformed bytes surface as any of a dozen types (OSError, KeyError, ...)
        raise ValueError(f"{what} {path} is not readable: {_reason(error)}") from error


def _reason(error: Exception) -> str:
    """Return one line saying why ``torch.load(weights_only=True)`` refused a file."""
    detail = _detail(error)
    if isinstance(error, pickle.UnpicklingError) and detail.startswith("Unsupported global"):
        found = detail.split(" was not an allowed global", 1)[0]  # drop torch's advice to allowlist it
        return (f"it holds objects other than tensors and plain containers ({found}): not a checkpoint readable "
                "without executing code (torch.load with weights_only=True refused it)")
    if isinstance(error, (OSError, RuntimeError, EOFError)):
        return f"truncated or not a file written by torch.save ({type(error).__name__}: {detail})"
    return f"corrupt or not a file written by torch.save ({type(error).__name__}: {detail})"


def _detail(error: Exception) -> str:
    """Return the informative line of ``error``: torch's weights-only refusals put it after advice paragraphs."""
    text = str(error)
    _, marker, rest = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (rest if marker else text).splitlines() if line.strip()]
    return lines[0] if lines else "no detail"
