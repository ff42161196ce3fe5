"""The reset point of a method: copies of its state dict and optimizer states, never of modules."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Snapshot", "restore_snapshot", "take_snapshot"]

#: ``(state dict with every parameter and buffer, optimizer state dicts)``, all detached copies.
Snapshot = tuple[dict[str, Tensor], list[dict[str, Any]]]


def take_snapshot(module: nn.Module, optimizers: list[torch.optim.Optimizer]) -> Snapshot:
    """Return detached copies of ``module``'s parameters and buffers and of the optimizers' states."""
    state = {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items()}
    return state, [copy.deepcopy(opt.state_dict()) for opt in optimizers]


def restore_snapshot(module: nn.Module, optimizers: list[torch.optim.Optimizer], snapshot: Snapshot) -> None:
    """Load ``snapshot`` back, bit for bit; the snapshot stays reusable (optimizer states are copied again)."""
    state, optimizer_states = snapshot
    module.load_state_dict(state)
    for opt, opt_state in zip(optimizers, optimizer_states, strict=True):
        opt.load_state_dict(copy.deepcopy(opt_state))  # deep copy: the optimizer would alias it
