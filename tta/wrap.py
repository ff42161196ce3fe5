"""``tta.wrap``: the one-line entry point that turns a deployed model into an adapting one."""

from __future__ import annotations

import copy
import os
from typing import Any, Literal, overload

from torch import nn

from tta.base import TTAMethod
from tta.checkpoint import PeriodicCheckpoint, resume as resume_state
from tta.guard import CollapseGuard, GuardPolicy
from tta.registry import create_adapter

__all__ = ["wrap"]


@overload
def wrap(
    model: nn.Module, method: str = ..., *, inplace: bool = ..., production: Literal[False] = ...,
    guard_policy: GuardPolicy = ..., checkpoint: str | os.PathLike[str] | None = ..., checkpoint_every: int = ...,
    resume: str | os.PathLike[str] | None = ..., **hparams: Any,
) -> TTAMethod: ...


@overload
def wrap(
    model: nn.Module, method: str = ..., *, inplace: bool = ..., production: Literal[True],
    guard_policy: GuardPolicy = ..., checkpoint: str | os.PathLike[str] | None = ..., checkpoint_every: int = ...,
    resume: str | os.PathLike[str] | None = ..., **hparams: Any,
) -> CollapseGuard: ...


@overload
def wrap(
    model: nn.Module, method: str = ..., *, inplace: bool = ..., production: bool,
    guard_policy: GuardPolicy = ..., checkpoint: str | os.PathLike[str] | None = ..., checkpoint_every: int = ...,
    resume: str | os.PathLike[str] | None = ..., **hparams: Any,
) -> TTAMethod | CollapseGuard: ...


def wrap(
    model: nn.Module,
    method: str = "norm",
    *,
    inplace: bool = False,
    production: bool = False,
    guard_policy: GuardPolicy = "reset",
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1000,
    resume: str | os.PathLike[str] | None = None,
    **hparams: Any,
) -> TTAMethod | CollapseGuard:
    """Return ``model`` wrapped by adaptation method ``method``, an ``nn.Module`` that predicts and adapts.

    Args:
        model: The deployed classifier; inputs as it expects them, logits ``(B, K)`` out.
        method: A name from :func:`tta.list_methods` (``source``, ``norm``, ``tent``, ...), an installed
            ``tta.methods`` entry point, or ``module:Class`` naming a :class:`tta.TTAMethod` subclass.
        inplace: Adapt ``model`` itself. By default a deep copy is adapted and ``model`` is untouched.
        production: Guard the method against collapse (:class:`tta.guard.CollapseGuard`, policy
            ``guard_policy``): a frozen copy of ``model`` answers batches where adaptation collapsed.
            Off by default so that benchmarks run each paper's method unmodified. The guard keeps the
            method's interface (``.model``, ``reset``, ``save_state``, ``hparams``, ...).
        guard_policy: What the guard does after a collapse: ``reset`` (default), ``fallback`` or
            ``freeze`` (docs/production.md); only with ``production=True``.
        checkpoint: Write the full adaptation state to this file every ``checkpoint_every`` adapted
            batches, atomically (:class:`tta.checkpoint.PeriodicCheckpoint`).
        checkpoint_every: Batches between two checkpoint writes.
        resume: Load the adaptation state saved at this path, if the file exists (else start from
            the source model); pass the ``checkpoint`` path to continue after a restart.
        **hparams: Keyword options of the method's ``from_model`` builder.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or an option is unknown to the method.
        ValueError: unknown method name, a model the method cannot adapt, a ``resume`` file that
            is not a state of this method and model, or ``checkpoint_every`` below 1.

    Example:
        >>> import torch, tta
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
        ...                           torch.nn.Flatten(), torch.nn.LazyLinear(2)).eval()
        >>> _ = net(torch.rand(2, 3, 8, 8))
        >>> adapted = tta.wrap(net, "tent")
        >>> adapted(torch.rand(4, 3, 8, 8)).shape
        torch.Size([4, 2])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"tta.wrap expects a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, TTAMethod):
        raise TypeError("model is already wrapped; wrap the underlying model (adapter.model) instead")
    if guard_policy != "reset" and not production:
        raise ValueError(f"guard_policy={guard_policy!r} needs production=True (the guard it configures)")
    policy = CollapseGuard.check_options(guard_policy)
    source = copy.deepcopy(model) if production else None
    target = model if inplace else copy.deepcopy(model)
    saver = None if checkpoint is None else PeriodicCheckpoint(checkpoint, every=checkpoint_every)
    adapter = create_adapter(method, target, **hparams)
    if resume is not None:
        resume_state(adapter, resume)
    if saver is not None:
        saver.attach(adapter)
    return adapter if source is None else CollapseGuard(adapter, source, policy=policy)
