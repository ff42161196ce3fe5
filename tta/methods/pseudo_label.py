"""Pseudo-label: self-training on the model's own confident predictions, over the normalization layers.

Each batch: normalize with test-batch statistics, predict, take the argmax of every prediction whose
softmax confidence reaches ``threshold`` as its label, and take one optimizer step on the
cross-entropy of those predictions (the mean over the confident samples; zero when none is), on
the affine parameters of the normalization layers only, as Tent does. The returned logits are those
of the forward used for the update.

Reference: Lee, "Pseudo-Label: The Simple and Efficient Semi-Supervised Learning Method for Deep
Neural Networks", ICML 2013 Workshop on Challenges in Representation Learning; used as a test-time
baseline ("PL", normalization affine parameters only) by Wang et al., "Tent", ICLR 2021.

Defaults: the optimizer recipes and settings of Tent (Adam, lr 1e-3; ``optimizer="sgd"``: Nesterov
SGD, lr 2.5e-4, momentum 0.9). ``threshold=0.9`` is this module's choice: neither paper fixes a
confidence threshold for the test-time setting; ``threshold=0`` keeps every prediction.

This module is also the worked example of ``docs/adding_a_method.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal, get_args

from torch import Tensor, nn
from torch.nn import functional as F

from tta.base import TTAMethod
from tta.checks import check_base_options, check_probability, checked_builder, finite_step_
from tta.methods.tent import collect_params, configure_model
from tta.optim import build_optimizer, check_optimizer_options
from tta.registry import register_adapter

__all__ = ["PseudoLabel", "pseudo_label_loss"]

PseudoLabelOptimizer = Literal["adam", "sgd"]
_DEFAULT_LR = {"adam": 1e-3, "sgd": 2.5e-4}


def pseudo_label_loss(logits: Tensor, threshold: float) -> Tensor:
    """Objective: mean cross-entropy of the confident predictions with their own argmax (0 when none is confident).

    Computed without a host-device synchronisation: samples below ``threshold`` are weighted 0.
    """
    logits = logits.float()  # float32 under autocast, as Tent's entropy
    confidence, labels = logits.softmax(1).max(1)
    keep = (confidence >= threshold).float()
    return (F.cross_entropy(logits, labels, reduction="none") * keep).sum() / keep.sum().clamp(min=1.0)


def _check_options(options: Mapping[str, Any]) -> None:
    """The one check of every option, before the model is touched."""
    check_optimizer_options(options["optimizer"], options["lr"], options["momentum"], options["weight_decay"],
                            choices=get_args(PseudoLabelOptimizer))
    check_probability("threshold", options["threshold"])
    check_base_options(steps=options["steps"], episodic=options["episodic"], input_ndim=options["input_ndim"])


@register_adapter("pseudo_label")
class PseudoLabel(TTAMethod):
    """Hard pseudo-labels above a confidence threshold, one step per batch on the normalization affines."""

    uses_grad = True
    changes = "norm_affine"
    exports = "frozen"
    # a tiny untrained test model is never 90 % confident: with 0 the contract tests see it adapt
    quick_options: ClassVar[Mapping[str, object]] = {"threshold": 0.0}

    def __init__(self, model: nn.Module, optimizer: Any, *, threshold: float, steps: int = 1,
                 episodic: bool = False, input_ndim: int | None = 4) -> None:
        super().__init__(model, steps=steps, episodic=episodic, input_ndim=input_ndim)
        self.threshold = threshold
        self.optimizer = optimizer
        self.optimizers = [optimizer]
        self.snapshot()

    def adapt_step(self, x: Tensor) -> Tensor:
        """Update: one step on the pseudo-label loss; returns the pre-update logits."""
        logits = self.model(x)
        finite_step_("PseudoLabel", pseudo_label_loss(logits, self.threshold), self.optimizer, logits=logits)
        return logits

    @classmethod
    @checked_builder(_check_options)
    def from_model(
        cls,
        model: nn.Module,
        *,
        threshold: float = 0.9,
        optimizer: PseudoLabelOptimizer = "adam",
        lr: float | None = None,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        steps: int = 1,
        episodic: bool = False,
        input_ndim: int | None = 4,
    ) -> PseudoLabel:
        """Configure ``model`` (in place: test-batch statistics, normalization affines trainable) and build the method.

        Args:
            model: Any classifier with BatchNorm, LayerNorm or GroupNorm layers.
            threshold: Softmax confidence from which a prediction becomes a label, in ``[0, 1]``.
            optimizer: ``adam`` or ``sgd`` (Nesterov), Tent's recipes.
            lr: Learning rate; ``None`` takes 1e-3 for Adam and 2.5e-4 for SGD.
            momentum: SGD momentum.
            weight_decay: L2 penalty.
            steps: Optimization steps per batch.
            episodic: Reset to the source state before every batch.
            input_ndim: Expected input rank (4 for images); ``None`` skips the check.
        """
        model = configure_model(model, method="PseudoLabel")
        opt = build_optimizer(collect_params(model), optimizer, lr=_DEFAULT_LR[optimizer] if lr is None else lr,
                              momentum=momentum, weight_decay=weight_decay)
        return cls(model, opt, threshold=threshold, steps=steps, episodic=episodic, input_ndim=input_ndim)
