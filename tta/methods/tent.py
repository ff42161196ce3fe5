"""Tent: test entropy minimization over the normalization layers' affine parameters.

Each batch: normalize with test-batch statistics, predict, minimize the mean prediction entropy
with one optimizer step on the affine (scale and shift) parameters of the normalization layers;
everything else stays frozen. The returned logits are those of the forward used for the update
(the pre-update forward), as in the official code.

Reference: Wang et al., "Tent: Fully Test-Time Adaptation by Entropy Minimization", ICLR 2021
(arXiv:2006.10726).
Adapted from: DequanWang/tent ``tent.py`` and ``cfgs`` (MIT), behaviour only.

Defaults: Adam, lr 1e-3, betas (0.9, 0.999), no weight decay, one step per batch (the official
CIFAR-10-C config); ``optimizer="sgd"`` gives the ImageNet-C setting of the paper: SGD, lr 2.5e-4,
momentum 0.9, Nesterov, no weight decay, dampening 0.

Differences from the reference implementation:
- Normalization layers of every kind adapt: BatchNorm (1d/2d/3d/Sync/Frozen) with batch statistics,
  and LayerNorm/GroupNorm affine parameters (the official code handles BatchNorm2d only).
- The model stays in ``eval()`` while BN layers use batch statistics explicitly; the official code
  calls ``model.train()``, which would also switch on dropout in models that have it.
- Source running statistics are kept (the official code sets them to ``None``), so ``reset`` and
  export can use them.
- ``stats="ema"`` (off by default) normalizes with EMA target statistics instead of the batch's, for
  batch-size-1 streams.
- The entropy is computed in float32 when the logits are float16/bfloat16 (autocast).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from adapters_bn import BN_STATS, BNStats, adapt_batchnorm
from tta.base import TTAMethod
from tta.losses import softmax_entropy
from tta.checks import check_base_options, check_choice, check_probability, checked_builder, finite_step_
from tta.optim import build_optimizer, check_optimizer_options
from tta.params import norm_affine_parameters, requires_grad_only
from tta.registry import register_adapter

__all__ = ["Tent", "configure_model", "collect_params"]

TentOptimizer = Literal["adam", "sgd"]
_DEFAULT_LR = {"adam": 1e-3, "sgd": 2.5e-4}


def configure_model(model: nn.Module, stats: BNStats = "batch", momentum: float = 0.1, *, method: str = "Tent") -> nn.Module:
    """Mode: BN layers use test-batch statistics; only norm affine parameters require gradients.

    Shared by the methods that adapt the normalization affines; ``method`` names the caller in errors.
    """
    model = adapt_batchnorm(model, stats=stats, momentum=momentum)
    names = [name for name, _ in norm_affine_parameters(model)]
    if not names:
        raise ValueError(
            f"{method} needs normalization layers with affine parameters (BatchNorm, LayerNorm or GroupNorm); "
            f"{type(model).__name__} has none. Use 'source', or a model with normalization layers."
        )
    return requires_grad_only(model.eval(), names)


def collect_params(model: nn.Module) -> list[nn.Parameter]:
    """Parameters: the affine weight and bias of every normalization layer."""
    return [param for _, param in norm_affine_parameters(model)]


def _check_options(options: Mapping[str, Any]) -> None:
    """Raise a clear ``TypeError``/``ValueError`` for a Tent option out of its type or range (the one check)."""
    check_optimizer_options(options["optimizer"], options["lr"], options["momentum"], options["weight_decay"],
                            choices=get_args(TentOptimizer))
    check_base_options(steps=options["steps"], episodic=options["episodic"], input_ndim=options["input_ndim"])
    check_choice("stats", options["stats"], BN_STATS)
    check_probability("bn_momentum", options["bn_momentum"])


@register_adapter("tent")
class Tent(TTAMethod):
    """Tent on a configured model and its optimizer (see :meth:`from_model` for the standard recipe)."""

    uses_grad = True
    changes = "norm_affine"
    exports = "frozen"  # the adapted state; a backward pass has no inference graph

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        steps: int = 1,
        episodic: bool = False,
        input_ndim: int | None = 4,
    ) -> None:
        super().__init__(model, steps=steps, episodic=episodic, input_ndim=input_ndim)
        self.optimizer = optimizer
        self.optimizers = [optimizer]
        self.snapshot()

    def adapt_step(self, x: Tensor) -> Tensor:
        """Objective and update: one entropy-minimization step; returns the pre-update logits."""
        logits = self.model(x)
        loss = softmax_entropy(logits.float()).mean(0)  # float32 under autocast: entropy of 8-bit probabilities is coarse
        finite_step_("Tent", loss, self.optimizer, logits=logits)  # never steps on NaN/Inf: refuses the batch
        return logits

    @classmethod
    @checked_builder(_check_options)
    def from_model(
        cls,
        model: nn.Module,
        *,
        optimizer: TentOptimizer = "adam",
        lr: float | None = None,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        steps: int = 1,
        episodic: bool = False,
        stats: BNStats = "batch",
        bn_momentum: float = 0.1,
        input_ndim: int | None = 4,
    ) -> Tent:
        """Configure ``model`` (in place) and build Tent with the official optimizer settings.

        Args:
            model: Any classifier with BatchNorm, LayerNorm or GroupNorm layers.
            optimizer: ``adam`` (CIFAR-10-C config) or ``sgd`` (ImageNet-C setting of the paper).
            lr: Learning rate; ``None`` takes 1e-3 for Adam and 2.5e-4 for SGD.
            momentum: SGD momentum (Nesterov).
            weight_decay: L2 penalty (0 in every official config).
            steps: Optimization steps per batch (1 in the official configs).
            episodic: Reset to the source state before every batch.
            stats: BN statistics: ``batch`` (the paper) or ``ema`` for batch-size-1 streams, where one
                image's statistics are too noisy (a deviation from the paper, off by default).
            bn_momentum: EMA momentum of the BN statistics when ``stats="ema"``.
            input_ndim: Expected input rank (4 for images); ``None`` skips the check.

        Raises:
            TypeError: an option of the wrong type (e.g. ``episodic="no"``, ``steps=1.5``).
            ValueError: an option out of range, or a model without normalization layers.
        """
        # the options were checked (checked_builder) before the model is touched: a rejected call changes nothing
        model = configure_model(model, stats, bn_momentum)
        opt = build_optimizer(collect_params(model), optimizer, lr=_DEFAULT_LR[optimizer] if lr is None else lr,
                              momentum=momentum, weight_decay=weight_decay)
        return cls(model, opt, steps=steps, episodic=episodic, input_ndim=input_ndim)
