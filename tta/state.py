"""Save and load the complete adaptation state of a method to a file, atomically, for a new process."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tta._io import atomic_torch_save

if TYPE_CHECKING:
    from tta.base import TTAMethod

__all__ = ["save_state", "load_state", "STATE_FORMAT"]

STATE_FORMAT = 1


def _on_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(v) for v in value)
    return value


def save_state(adapter: TTAMethod, path: str | os.PathLike[str]) -> Path:
    """Write parameters, buffers, optimizer states and the reset snapshot to ``path`` (write, then rename).

    An interrupted save leaves the previous file intact. Load it with :func:`load_state` into the
    same method built on the same architecture, in this or another process.
    """
    record = {
        "format": STATE_FORMAT,
        "method": type(adapter).__name__,
        "module": _on_cpu(adapter.state_dict()),
        "optimizers": [_on_cpu(opt.state_dict()) for opt in adapter.optimizers],
        "snapshot": _on_cpu(adapter._snapshot),
    }
    return atomic_torch_save(record, path)


def load_state(adapter: TTAMethod, path: str | os.PathLike[str]) -> TTAMethod:
    """Restore a state written by :func:`save_state` into ``adapter``, bit for bit; returns ``adapter``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not an adaptation state, or belongs to another method or architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no adaptation state at {path}")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for foreign or damaged files
        raise ValueError(f"{path} is not a readable adaptation state: {error}") from error
    if not isinstance(record, dict) or record.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not an adaptation state (format {STATE_FORMAT}) written by save_state")
    if record["method"] != type(adapter).__name__:
        raise ValueError(f"{path} holds the state of {record['method']}, not of {type(adapter).__name__}")
    if len(record["optimizers"]) != len(adapter.optimizers):
        raise ValueError(f"{path} has {len(record['optimizers'])} optimizer state(s); the method has {len(adapter.optimizers)}")
    try:
        adapter.load_state_dict(record["module"])
    except RuntimeError as error:
        raise ValueError(f"{path} does not fit this model: {error}") from error
    for opt, opt_state in zip(adapter.optimizers, record["optimizers"]):
        opt.load_state_dict(opt_state)
    device = next((t.device for t in adapter.state_dict().values()), torch.device("cpu"))
    state, optimizer_states = record["snapshot"]
    adapter._snapshot = ({k: v.to(device) for k, v in state.items()}, optimizer_states)
    return adapter
