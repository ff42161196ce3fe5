"""Whole-model BatchNorm conversion: adapt, set mode, restore (exact inverse) and fold (for export)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import cast

from torch import nn

from adapters_bn.layers import AdaptiveBatchNorm, BNStats, check_stats_options
from adapters_bn.surgery import check_module, is_batchnorm, iter_batchnorms, replace_modules

__all__ = [
    "adapt_batchnorm",
    "restore_batchnorm",
    "fold_batchnorm",
    "set_statistics",
    "freeze_statistics",
    "iter_adaptive",
]


def iter_adaptive(model: nn.Module) -> Iterator[tuple[str, AdaptiveBatchNorm]]:
    """Return an iterator of ``(name, layer)`` for every AdaptiveBatchNorm in ``model``.

    Raises:
        TypeError: at the call (not at the first ``next``) if ``model`` is not an ``nn.Module``.
    """
    check_module(model)
    return ((name, module) for name, module in model.named_modules() if isinstance(module, AdaptiveBatchNorm))


def adapt_batchnorm(
    model: nn.Module, *, stats: BNStats = "batch", momentum: float = 0.1, prior: float = 0.0
) -> nn.Module:
    """Replace every BatchNorm with running statistics by an :class:`AdaptiveBatchNorm`, in place.

    Layers that are already adaptive get the new mode. Returns the new root (``model`` itself unless
    ``model`` is a BatchNorm). Models without BatchNorm are returned unchanged: check with
    ``any(iter_adaptive(model))`` where BatchNorm is required.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or a number is not a number.
        ValueError: if ``stats``, ``momentum`` or ``prior`` is invalid; nothing is changed then.
    """
    check_module(model)
    check_stats_options(stats, momentum, prior)
    _set_all(model, stats, momentum=momentum, prior=prior)
    return replace_modules(
        model,
        lambda _name, m: is_batchnorm(m),
        lambda m: AdaptiveBatchNorm.for_checked_options(m, stats=stats, momentum=momentum, prior=prior),
    )


def set_statistics(
    model: nn.Module, stats: BNStats, *, momentum: float | None = None, prior: float | None = None
) -> nn.Module:
    """Set the statistics mode (and optionally momentum / prior) of every adaptive layer, in place.

    A model without any BatchNorm is returned unchanged, as :func:`adapt_batchnorm` does, so code can
    treat BN and BN-free architectures (ViT) alike; a model whose BatchNorm layers were never converted
    raises instead of silently keeping their plain statistics.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or a number is not a number.
        ValueError: if an option is invalid, or ``model`` has BatchNorm layers but none is adaptive;
            nothing is changed then.
    """
    check_module(model)
    check_stats_options(stats, momentum, prior)
    if not any(iter_adaptive(model)) and any(iter_batchnorms(model)):
        raise ValueError(
            f"set_statistics found BatchNorm layers in {type(model).__name__} but no AdaptiveBatchNorm; "
            "convert the model first with adapt_batchnorm(model, stats=...)"
        )
    return _set_all(model, stats, momentum=momentum, prior=prior)


def _set_all(model: nn.Module, stats: BNStats, *, momentum: float | None, prior: float | None) -> nn.Module:
    """Set mode, momentum and prior of every adaptive layer; the options are already checked."""
    for _, layer in iter_adaptive(model):
        layer.stats = stats
        layer.momentum = layer.momentum if momentum is None else float(momentum)
        layer.prior = layer.prior if prior is None else float(prior)
    return model


def restore_batchnorm(model: nn.Module) -> nn.Module:
    """Put back the original BatchNorm layers with their source statistics, in place; returns the root.

    The exact inverse of :func:`adapt_batchnorm`: class, attributes, source statistics and
    ``num_batches_tracked`` come back unchanged; affine parameters keep their current values.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
    """
    check_module(model)
    return replace_modules(
        model,
        lambda _name, m: isinstance(m, AdaptiveBatchNorm),
        lambda m: cast(AdaptiveBatchNorm, m).to_source_module(),  # matched by the isinstance test above
    )


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every adaptive layer by a plain eval-mode BatchNorm holding its current statistics, in place.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
    """
    check_module(model)
    return replace_modules(
        model,
        lambda _name, m: isinstance(m, AdaptiveBatchNorm),
        lambda m: cast(AdaptiveBatchNorm, m).to_batchnorm(use="current"),  # matched by the isinstance test above
    )


def freeze_statistics(model: nn.Module) -> AbstractContextManager[nn.Module]:
    """Return a context in which adaptive layers normalize as their mode says but store nothing.

    Raises:
        TypeError: at the call if ``model`` is not an ``nn.Module``.
    """
    check_module(model)
    return _frozen(model)


@contextmanager
def _frozen(model: nn.Module) -> Iterator[nn.Module]:
    layers = [layer for _, layer in iter_adaptive(model)]
    previous = [layer.update_stats for layer in layers]
    for layer in layers:
        layer.update_stats = False
    try:
        yield model
    finally:
        for layer, value in zip(layers, previous):
            layer.update_stats = value
