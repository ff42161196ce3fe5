"""AdaBN: recompute target BatchNorm statistics over a whole set of unlabeled batches."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from adapters_bn.convert import iter_adaptive, set_statistics
from adapters_bn.layers import AdaptiveBatchNorm, batch_var_mean
from adapters_bn.surgery import check_module

__all__ = ["recompute_statistics"]


class _Sums:
    """Per-layer running sums of batch means and biased variances, filled by a forward pre-hook."""

    def __init__(self, layer: AdaptiveBatchNorm) -> None:
        self.mean = torch.zeros_like(layer.running_mean)
        self.var = torch.zeros_like(layer.running_var)
        self.count = 0
        self.last: tuple[Tensor, Tensor] | None = None  # this batch's (var, mean), checked after the pass

    def __call__(self, _layer: nn.Module, args: tuple[Tensor, ...]) -> None:
        var, mean = batch_var_mean(args[0].detach())
        self.last = (var, mean)
        self.mean.add_(mean.to(self.mean.dtype))
        self.var.add_(var.to(self.var.dtype))
        self.count += 1


def _check_max_batches(max_batches: int | None) -> None:
    if max_batches is None:
        return
    if isinstance(max_batches, bool) or not isinstance(max_batches, int):
        raise TypeError(f"max_batches must be a positive int or None, got {type(max_batches).__name__}")
    if max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 (or None for all batches), got {max_batches}")


def _check_batch(x: object, index: int, first: Tensor | None) -> Tensor:
    """Return batch ``index`` if it is a float tensor ``(B, C, *)`` with as many channels as the first batch."""
    if not isinstance(x, Tensor):
        raise TypeError(f"batch {index} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point() or x.dim() < 2:
        raise ValueError(f"batch {index} must be a floating-point (B, C, ...) tensor, got {x.dtype} {tuple(x.shape)}")
    if first is not None and x.shape[1] != first.shape[1]:
        raise ValueError(
            f"batch {index} has shape {tuple(x.shape)} but batch 0 had {tuple(first.shape)}: "
            "every batch must have the same number of channels"
        )
    return x


def _check_finite(sums: list[_Sums], names: list[str], index: int, x: Tensor) -> None:
    """Raise ``ValueError`` if batch ``index`` gave NaN/Inf statistics in any layer (one sync per batch)."""
    batch_stats = [t for s in sums if s.last is not None for t in s.last]
    if not batch_stats or bool(torch.stack([t.isfinite().all() for t in batch_stats]).all()):
        return
    bad = next(n for n, s in zip(names, sums) if s.last is not None and not all(t.isfinite().all() for t in s.last))
    raise ValueError(
        f"batch {index} (shape {tuple(x.shape)}) gives NaN/Inf BatchNorm statistics at layer {bad!r} "
        "(NaN or Inf in the batch, or an overflow); remove it, the model's statistics were left unchanged"
    )


@torch.no_grad()
def recompute_statistics(
    model: nn.Module, batches: Iterable[Tensor], *, max_batches: int | None = None
) -> nn.Module:
    """Estimate target statistics as the average of per-batch statistics over ``batches`` (AdaBN).

    While collecting, each layer normalizes with its batch statistics (as ``nn.BatchNorm`` with
    ``momentum=None`` does in training); afterwards every adaptive layer is set to ``ema`` mode with
    momentum 0, i.e. it normalizes with the fixed estimate. Works in place; returns ``model``.
    All-or-nothing: on any error (raised here or by the model) the statistics, modes and options
    are as before the call.

    Reference: Li et al., "Revisiting Batch Normalization For Practical Domain Adaptation", 2016.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``, ``max_batches`` not an int, or a batch not a tensor.
        ValueError: if ``model`` has no adaptive BatchNorm layer, ``max_batches < 1``, no batch was given,
            a batch's channel count differs from the first's, or a batch gives NaN/Inf statistics.
    """
    check_module(model)
    _check_max_batches(max_batches)
    named = list(iter_adaptive(model))
    if not named:
        raise ValueError("recompute_statistics needs a model converted with adapt_batchnorm (no adaptive BN found)")
    names, layers = [name for name, _ in named], [layer for _, layer in named]
    saved = [(layer.stats, layer.momentum, layer.prior, layer.update_stats) for layer in layers]
    sums = [_Sums(layer) for layer in layers]
    hooks = [layer.register_forward_pre_hook(s) for layer, s in zip(layers, sums)]
    try:
        for layer in layers:  # normalize with batch statistics, store nothing until every batch passed
            layer.stats, layer.update_stats = "batch", False
        count, first = 0, None
        for x in batches:
            if max_batches is not None and count >= max_batches:
                break
            batch = _check_batch(x, count, first)
            first = batch if first is None else first
            for s in sums:
                s.last = None
            model(batch)
            _check_finite(sums, names, count, batch)
            count += 1
        if count == 0:
            raise ValueError("recompute_statistics got no batches; pass a non-empty iterable of (B, C, ...) tensors")
    finally:
        for hook in hooks:
            hook.remove()
        for layer, (stats, momentum, prior, update) in zip(layers, saved):
            layer.stats, layer.momentum, layer.prior, layer.update_stats = stats, momentum, prior, update
    for layer, s in zip(layers, sums):
        if s.count:  # a layer the batches never reached keeps its statistics
            layer.running_mean.copy_(s.mean / s.count)
            layer.running_var.copy_(s.var / s.count)
    return set_statistics(model, "ema", momentum=0.0)
