"""Whole-model BatchNorm conversion: adapt, set mode, restore (exact inverse) and fold (for export)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

from torch import nn

from adapters_bn.layers import AdaptiveBatchNorm, BNStats, check_stats_options
from adapters_bn.surgery import is_batchnorm, replace_modules

__all__ = [
    "adapt_batchnorm",
    "restore_batchnorm",
    "fold_batchnorm",
    "set_statistics",
    "freeze_statistics",
    "iter_adaptive",
]


def iter_adaptive(model: nn.Module) -> Iterator[tuple[str, AdaptiveBatchNorm]]:
    """Yield ``(name, layer)`` for every AdaptiveBatchNorm in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, AdaptiveBatchNorm):
            yield name, module


def adapt_batchnorm(
    model: nn.Module, *, stats: BNStats = "batch", momentum: float = 0.1, prior: float = 0.0
) -> nn.Module:
    """Replace every BatchNorm with running statistics by an :class:`AdaptiveBatchNorm`, in place.

    Layers that are already adaptive get the new mode. Returns the new root (``model`` itself unless
    ``model`` is a BatchNorm). Models without BatchNorm are returned unchanged: check with
    ``any(iter_adaptive(model))`` where BatchNorm is required.
    """
    check_stats_options(stats, momentum, prior)
    set_statistics(model, stats, momentum=momentum, prior=prior)
    return replace_modules(
        model,
        lambda _name, m: is_batchnorm(m),
        lambda m: AdaptiveBatchNorm(m, stats=stats, momentum=momentum, prior=prior),
    )


def set_statistics(
    model: nn.Module, stats: BNStats, *, momentum: float | None = None, prior: float | None = None
) -> nn.Module:
    """Set the statistics mode (and optionally momentum / prior) of every adaptive layer, in place."""
    for _, layer in iter_adaptive(model):
        new_momentum = layer.momentum if momentum is None else momentum
        new_prior = layer.prior if prior is None else prior
        check_stats_options(stats, new_momentum, new_prior)
        layer.stats, layer.momentum, layer.prior = stats, float(new_momentum), float(new_prior)
    return model


def restore_batchnorm(model: nn.Module) -> nn.Module:
    """Put back the original BatchNorm layers with their source statistics, in place; returns the root.

    The exact inverse of :func:`adapt_batchnorm`: class, attributes, source statistics and
    ``num_batches_tracked`` come back unchanged; affine parameters keep their current values.
    """
    return replace_modules(
        model,
        lambda _name, m: isinstance(m, AdaptiveBatchNorm),
        lambda m: cast(AdaptiveBatchNorm, m).to_source_module(),  # matched by the isinstance test above
    )


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every adaptive layer by a plain eval-mode BatchNorm holding its current statistics, in place."""
    return replace_modules(
        model,
        lambda _name, m: isinstance(m, AdaptiveBatchNorm),
        lambda m: cast(AdaptiveBatchNorm, m).to_batchnorm(use="current"),  # matched by the isinstance test above
    )


@contextmanager
def freeze_statistics(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, adaptive layers normalize as their mode says but store nothing."""
    layers = [layer for _, layer in iter_adaptive(model)]
    previous = [layer.update_stats for layer in layers]
    for layer in layers:
        layer.update_stats = False
    try:
        yield model
    finally:
        for layer, value in zip(layers, previous):
            layer.update_stats = value
