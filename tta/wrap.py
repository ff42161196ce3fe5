"""``tta.wrap``: the one-line entry point that turns a deployed model into an adapting one."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from tta.base import TTAMethod
from tta.guard import CollapseGuard
from tta.registry import create_adapter

__all__ = ["wrap"]


def wrap(
    model: nn.Module, method: str = "norm", *, inplace: bool = False, production: bool = False, **hparams: Any
) -> TTAMethod | CollapseGuard:
    """Return ``model`` wrapped by adaptation method ``method``, an ``nn.Module`` that predicts and adapts.

    Args:
        model: The deployed classifier; inputs as it expects them, logits ``(B, K)`` out.
        method: A name from :func:`tta.list_methods` (``source``, ``norm``, ``tent``, ...).
        inplace: Adapt ``model`` itself. By default a deep copy is adapted and ``model`` is untouched.
        production: Guard the method against collapse (:class:`tta.guard.CollapseGuard`, policy
            ``reset``): a frozen copy of ``model`` answers batches where adaptation collapsed. Off by
            default so that benchmarks run each paper's method unmodified.
        **hparams: Keyword options of the method's ``from_model`` builder.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or an option is unknown to the method.
        ValueError: unknown method name, or a model the method cannot adapt.

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
    source = copy.deepcopy(model) if production else None
    target = model if inplace else copy.deepcopy(model)
    adapter = create_adapter(method, target, **hparams)
    return adapter if source is None else CollapseGuard(adapter, source)
