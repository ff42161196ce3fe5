"""Exponential moving averages of parameters: the mean teacher of CoTTA (and later RMT)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["ema_update_", "detached_copy"]


def detached_copy(model: nn.Module) -> nn.Module:
    """Return a deep copy of ``model`` whose parameters require no gradient (a teacher or an anchor)."""
    clone = copy.deepcopy(model)
    for param in clone.parameters():
        param.requires_grad_(False)
    return clone


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """Move every parameter of ``teacher`` towards ``student``, in place.

    ``teacher = momentum * teacher + (1 - momentum) * student`` for each pair of parameters, matched
    in ``parameters()`` order (the models must have the same structure); buffers are left alone. The
    two products are formed separately and then added, the arithmetic of CoTTA's
    ``update_ema_variables``, so results match it bit for bit.

    Args:
        teacher: The moving-average model, updated in place.
        student: The model being optimized.
        momentum: Weight of the old teacher value (CoTTA's ``alpha_teacher``, eq. 2), in [0, 1].

    Raises:
        ValueError: If ``momentum`` is outside [0, 1] or the models have different parameter counts.

    Example:
        >>> t, s = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
        >>> _ = t.weight.data.fill_(1.0), s.weight.data.fill_(0.0)
        >>> ema_update_(t, s, 0.9); t.weight.item()
        0.8999999761581421
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    teacher_params: list[Tensor] = list(teacher.parameters())
    student_params = [p.detach() for p in student.parameters()]
    if len(teacher_params) != len(student_params):
        raise ValueError(
            f"teacher has {len(teacher_params)} parameters and student {len(student_params)}; "
            "the teacher must be a copy of the student"
        )
    if not teacher_params:
        return
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, torch._foreach_mul(student_params, 1.0 - momentum))
