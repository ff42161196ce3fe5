"""Save and load the complete adaptation state of a method to a file, atomically, for a new process.

The file carries a digest of its whole content and the method's settings: a damaged file, or a state
of the same method built with other options, is refused before anything is loaded.

A state can also be saved relative to the method's source: tensors that still equal the reset
snapshot, and the snapshot itself, are left out and replaced by a fingerprint of the snapshot. Such a
file loads only into an adapter wrapped around the same source model (checked), and is much smaller
when adaptation touches few tensors (Tent: the normalization affines) or keeps frozen copies (CoTTA's anchor).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tta._io import atomic_torch_save
from tta._torch_load import load_without_code, unreadable_reason
from tta.snapshot import restore_snapshot, take_snapshot
from tta.state_record import (
    RELATIVE_STATE_FORMAT, STATE_FORMAT, check_fits, check_intact, check_method_settings, check_optimizers,
    check_record, content_digest, method_settings, on_cpu, optimizer_settings, with_digest,
)

if TYPE_CHECKING:
    from tta.base import TTAMethod
    from tta.snapshot import Snapshot

__all__ = ["save_state", "load_state", "STATE_FORMAT", "RELATIVE_STATE_FORMAT"]


def save_state(adapter: TTAMethod, path: str | os.PathLike[str], *, relative_to_source: bool = False) -> Path:
    """Write parameters, buffers, optimizer states and the reset snapshot to ``path`` (write, then rename).

    An interrupted save leaves the previous file intact. Load it with :func:`load_state` into the
    same method built on the same architecture, in this or another process.

    Args:
        adapter: The method whose state is written.
        path: The file to write.
        relative_to_source: Leave out the snapshot and every tensor still equal to it, and write a
            fingerprint of the snapshot instead: the file then loads only into the same method wrapped
            around the same source model (as a resumed benchmark stream is).
    """
    if adapter._snapshot is None:
        raise RuntimeError(f"{type(adapter).__name__} has no snapshot to save: call self.snapshot() in __init__")
    module = adapter.state_dict()
    record: dict[str, Any] = {
        "format": STATE_FORMAT,
        "method": type(adapter).__name__,
        "optimizers": [on_cpu(opt.state_dict()) for opt in adapter.optimizers],
        "optimizer_settings": [optimizer_settings(opt) for opt in adapter.optimizers],
        "method_settings": method_settings(adapter),
    }
    if relative_to_source:
        source, source_optimizers = adapter._snapshot
        unchanged = [k for k, v in module.items() if k in source and _same(v, source[k])]
        kept = set(unchanged)
        changed = {k: v for k, v in module.items() if k not in kept}
        record |= {"format": RELATIVE_STATE_FORMAT, "source": _fingerprint(adapter._snapshot),
                   "module": on_cpu(changed), "unchanged": unchanged, "snapshot": (None, on_cpu(source_optimizers))}
    else:
        record |= {"module": on_cpu(module), "snapshot": on_cpu(adapter._snapshot)}
    return atomic_torch_save(with_digest(record), path)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` hold the same values, bit for bit (so NaN never equals NaN, and is kept)."""
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


def _fingerprint(snapshot: Snapshot) -> str:
    """Return a digest of the snapshot: its tensors' names, dtypes, shapes and bytes, and its optimizer states."""
    return content_digest(snapshot, digest_size=20, framed=False)


def load_state(adapter: TTAMethod, path: str | os.PathLike[str]) -> TTAMethod:
    """Restore a state written by :func:`save_state` into ``adapter``, bit for bit; returns ``adapter``.

    All or nothing: a file that is refused, or a load that fails half-way, leaves the adapter's
    parameters, buffers, optimizer states and reset snapshot exactly as they were.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is damaged (its content does not match its digest, or it is truncated), is
            not an adaptation state, holds code or objects other than tensors and plain containers, or
            belongs to another method, architecture, method settings (``stats``, ``steps``, ...),
            optimizer class or optimizer settings (learning rate, betas, ...).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no adaptation state at {path}")
    record: Any  # checked below, key by key, before anything is used
    try:
        record = load_without_code(path)
    except Exception as error:  # noqa: BLE001 - torch raises several types for foreign or damaged files
        raise ValueError(f"{path} is not a readable adaptation state: {unreadable_reason(error)}") from error
    check_intact(path, record)
    check_record(path, record, type(adapter).__name__, len(adapter.optimizers))
    module = record["module"]
    if record["format"] == RELATIVE_STATE_FORMAT:
        module = _with_source(adapter, path, record)
    check_fits(path, module, adapter.state_dict())
    if record["format"] == STATE_FORMAT:
        check_fits(path, record["snapshot"][0], adapter.state_dict())
    check_method_settings(path, record, adapter)  # after the shapes: another architecture is named as such
    check_optimizers(path, record, adapter)
    _load_all_or_nothing(adapter, path, module, record)
    return adapter


def _load_all_or_nothing(adapter: TTAMethod, path: Path, module: dict[str, Any], record: dict[str, Any]) -> None:
    """Load the checked ``record`` into ``adapter``; on any failure put everything back and raise ``ValueError``."""
    before, reset_point = take_snapshot(adapter, adapter.optimizers), adapter._snapshot
    try:
        adapter.load_state_dict(module)
        for opt, opt_state in zip(adapter.optimizers, record["optimizers"]):
            opt.load_state_dict(opt_state)
        if record["format"] == STATE_FORMAT:
            device = next((t.device for t in adapter.state_dict().values()), torch.device("cpu"))
            state, optimizer_states = record["snapshot"]
            adapter._snapshot = ({k: v.to(device) for k, v in state.items()}, optimizer_states)
    except Exception as error:  # torch raises RuntimeError, KeyError, ValueError for states that do not fit
        restore_snapshot(adapter, adapter.optimizers, before)
        adapter._snapshot = reset_point
        raise ValueError(f"{path} does not fit this {type(adapter).__name__} ({type(error).__name__}: {error}); "
                         "nothing was changed") from error


def _with_source(adapter: TTAMethod, path: Path, record: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Return the full module state of a relative ``record``: its tensors, and the rest from ``adapter``'s snapshot.

    Raises:
        ValueError: ``adapter``'s snapshot is not the one the state was saved relative to.
    """
    if adapter._snapshot is None or _fingerprint(adapter._snapshot) != record["source"]:
        raise ValueError(f"{path} was saved relative to another source model (or reset point) than this "
                         f"{type(adapter).__name__}'s; load it into an adapter wrapped around the same model")
    source = adapter._snapshot[0]
    return {**{k: source[k] for k in record["unchanged"]}, **record["module"]}
