"""The layout of a saved adaptation state, and the checks that refuse a file before anything is loaded.

Every check here only reads: :func:`tta.state.load_state` runs them all before it changes the adapter.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from tta.base import TTAMethod

__all__ = ["check_fits", "check_optimizers", "check_record", "on_cpu", "optimizer_settings"]

STATE_FORMAT = 1
RELATIVE_STATE_FORMAT = 2  # a state saved relative to its source snapshot

# Keys every state file has, with their types; a relative state has its fingerprint and unchanged names too.
_KEYS: dict[str, type | tuple[type, ...]] = {
    "method": str, "optimizers": list, "module": dict, "snapshot": (tuple, list),
}
_RELATIVE_KEYS: dict[str, type | tuple[type, ...]] = {"source": str, "unchanged": list}


def check_record(path: os.PathLike[str], record: object, method: str, num_optimizers: int) -> None:
    """Raise ``ValueError`` unless ``record`` is a complete state of ``method`` with ``num_optimizers`` optimizers."""
    if not isinstance(record, dict) or record.get("format") not in (STATE_FORMAT, RELATIVE_STATE_FORMAT):
        raise ValueError(f"{path} is not an adaptation state (format {STATE_FORMAT}) written by save_state")
    keys = _KEYS | (_RELATIVE_KEYS if record["format"] == RELATIVE_STATE_FORMAT else {})
    missing = [key for key in keys if key not in record]
    if missing:
        raise ValueError(f"{path} is not a complete adaptation state: it lacks {', '.join(missing)}; "
                         "write states with save_state")
    wrong = [f"{key} is {type(record[key]).__name__}" for key, kind in keys.items()
             if not isinstance(record[key], kind)]
    if wrong or len(record["snapshot"]) != 2:
        raise ValueError(f"{path} is not a valid adaptation state ({'; '.join(wrong) or 'snapshot is not a pair'}); "
                         "write states with save_state")
    if record["method"] != method:
        raise ValueError(f"{path} holds the state of {record['method']}, not of {method}")
    if len(record["optimizers"]) != num_optimizers:
        raise ValueError(f"{path} has {len(record['optimizers'])} optimizer state(s); the method has {num_optimizers}")


def check_fits(path: os.PathLike[str], saved: object, expected: dict[str, Any]) -> None:
    """Raise ``ValueError`` unless ``saved`` has exactly the keys of ``expected`` with tensors of the same shapes and dtypes."""
    if not isinstance(saved, dict):
        raise ValueError(f"{path} is not a valid adaptation state: a state dict is {type(saved).__name__}")
    problems = [f"missing {key}" for key in expected if key not in saved]
    problems += [f"unexpected {key}" for key in saved if key not in expected]
    problems += [f"{key} is {_shape(value)} in the file, {_shape(expected[key])} in the model"
                 for key, value in saved.items() if key in expected and _shape(value) != _shape(expected[key])]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ValueError(f"{path} does not fit this model: {'; '.join(problems[:3])}{more}; nothing was changed")


def _shape(value: object) -> str:
    """Describe a state entry by what must match for a bit-exact load: shape and dtype of a tensor."""
    if isinstance(value, Tensor):
        return f"shape {tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    return type(value).__name__


def optimizer_settings(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Return what a state file records of ``optimizer``: its class, each group's hyperparameters (not ``params``)."""
    cls = type(optimizer)
    groups = [{key: on_cpu(value) for key, value in group.items() if key != "params"}
              for group in optimizer.param_groups]
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "param_groups": groups}


def on_cpu(value: Any) -> Any:
    """Return ``value`` with every tensor in it (nested in dicts, lists, tuples) detached, cloned onto the CPU."""
    if isinstance(value, Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_cpu(v) for v in value)
    return value


def check_optimizers(path: os.PathLike[str], record: dict[str, Any], adapter: TTAMethod) -> None:
    """Raise ``ValueError`` when the file's optimizers differ from ``adapter``'s in class or hyperparameters.

    Files written before the settings were recorded carry none and are not checked here.
    """
    recorded = record.get("optimizer_settings")
    if recorded is None:
        return
    method = type(adapter).__name__
    if (not isinstance(recorded, list) or len(recorded) != len(adapter.optimizers)
            or not all(isinstance(settings, dict) for settings in recorded)):
        raise ValueError(f"{path} is not a valid adaptation state: its optimizer settings do not match its optimizers")
    for saved, optimizer in zip(recorded, adapter.optimizers):
        current = optimizer_settings(optimizer)
        if saved.get("class") != current["class"]:
            raise ValueError(f"{path} holds the state of optimizer {_short(saved.get('class'))}; this {method} "
                             f"uses optimizer {_short(current['class'])}: build it with the same optimizer to load it")
        differences = _differences(saved.get("param_groups"), current["param_groups"])
        if differences:
            raise ValueError(f"{path} was saved with optimizer settings {differences[0]}, this {method} has "
                             f"{differences[1]}: build it with the same settings to load this state")


def _short(name: object) -> str:
    return str(name).rsplit(".", 1)[-1]


def _differences(saved: object, current: list[dict[str, Any]]) -> tuple[str, str] | None:
    """Return the differing hyperparameters as ``(file side, adapter side)`` text, or ``None`` when equal.

    Only keys on both sides are compared: a flag that a newer torch adds to every group is not a difference.
    """
    if not isinstance(saved, list) or len(saved) != len(current) or not all(isinstance(g, dict) for g in saved):
        count = len(saved) if isinstance(saved, list) else 0
        return f"{count} parameter group(s)", f"{len(current)}"
    pairs = [(f"{key}={old[key]!r}", f"{key}={new[key]!r}")
             for old, new in zip(saved, current) for key in new if key in old and not _equal(old[key], new[key])]
    if not pairs:
        return None
    return ", ".join(p[0] for p in pairs), ", ".join(p[1] for p in pairs)


def _equal(a: object, b: object) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and torch.equal(a, b.to(a.device))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return bool(a == b)
