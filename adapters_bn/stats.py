"""AdaBN: recompute target BatchNorm statistics over a whole set of unlabeled batches."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from adapters_bn.convert import iter_adaptive, set_statistics

__all__ = ["recompute_statistics"]


@torch.no_grad()
def recompute_statistics(
    model: nn.Module, batches: Iterable[Tensor], *, max_batches: int | None = None
) -> nn.Module:
    """Estimate target statistics as the average of per-batch statistics over ``batches`` (AdaBN).

    While collecting, each layer normalizes with its batch statistics (as ``nn.BatchNorm`` with
    ``momentum=None`` does in training); afterwards every adaptive layer is set to ``ema`` mode with
    momentum 0, i.e. it normalizes with the fixed estimate. Works in place; returns ``model``.

    Reference: Li et al., "Revisiting Batch Normalization For Practical Domain Adaptation", 2016.

    Raises:
        ValueError: if ``model`` has no adaptive BatchNorm layer or no batch was given.
    """
    layers = [layer for _, layer in iter_adaptive(model)]
    if not layers:
        raise ValueError("recompute_statistics needs a model converted with adapt_batchnorm (no adaptive BN found)")
    set_statistics(model, "batch")
    sums = [(torch.zeros_like(lay.running_mean), torch.zeros_like(lay.running_var)) for lay in layers]
    count = 0
    for x in batches:
        if max_batches is not None and count >= max_batches:
            break
        model(x)
        for (mean_sum, var_sum), layer in zip(sums, layers):
            mean_sum.add_(layer.running_mean)
            var_sum.add_(layer.running_var)
        count += 1
    if count == 0:
        raise ValueError("recompute_statistics got no batches")
    for (mean_sum, var_sum), layer in zip(sums, layers):
        layer.running_mean.copy_(mean_sum / count)
        layer.running_var.copy_(var_sum / count)
    return set_statistics(model, "ema", momentum=0.0)
