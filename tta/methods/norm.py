"""Norm: adapt BatchNorm statistics to the test data, forward only (no gradients, no labels).

Statistics modes (see :class:`adapters_bn.AdaptiveBatchNorm`):

- ``batch``: test-batch statistics. This is Tent's ``norm`` baseline (BN layers in training mode,
  normalizing each batch by its own statistics) and test-time normalization of Nado et al. /
  Schneider et al. with ``N = 0``.
- ``mix``: alpha-BN, ``prior * source + (1 - prior) * batch`` (Schneider et al., NeurIPS 2020 use
  ``prior = N / (N + n)``; You et al. 2021 call it alpha). ``prior=0`` equals ``batch``.
- ``ema``: target running statistics updated with ``momentum`` per batch, for streams and small
  batches; they persist across batches until ``reset``.

After a forward, each layer's ``running_mean``/``running_var`` hold the statistics that forward
normalized with (``batch``: the last batch's mean and biased variance; ``mix``: the mixed ones;
``ema``: the updated target estimate), which is what an export with the current statistics uses. The
source statistics stay in ``source_mean``/``source_var``, never written; ``reset`` copies them back
into the running buffers.

Reference: Schneider et al., "Improving robustness against common corruptions by covariate shift
adaptation", NeurIPS 2020 (arXiv:2006.16971); Wang et al., "Tent", ICLR 2021 (norm baseline).
Adapted from: DequanWang/tent ``norm.py`` (MIT), behaviour only.

Differences from the reference implementation:
- The model stays in ``eval()``: Tent's code switches BN layers to ``train()``; the normalization
  is the same. Tent's running statistics then move by BatchNorm's momentum and the source values are
  lost; here they hold the statistics used last, and the source values are kept apart
  (``source_mean``/``source_var``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from adapters_bn import BN_STATS, BNStats, adapt_batchnorm, iter_adaptive
from tta.base import TTAMethod
from tta.checks import check_base_options, check_choice, check_probability, checked_builder
from tta.registry import register_adapter

__all__ = ["Norm"]


def _check_options(options: Mapping[str, Any]) -> None:
    """Raise a clear ``TypeError``/``ValueError`` for a Norm option out of its type or range (the one check)."""
    check_base_options(episodic=options["episodic"], input_ndim=options["input_ndim"])
    check_choice("stats", options["stats"], BN_STATS)
    check_probability("momentum", options["momentum"])
    check_probability("prior", options["prior"])


@register_adapter("norm")
class Norm(TTAMethod):
    """Test-time BatchNorm statistics: the model's BN layers normalize with target statistics.

    Returns the logits of the forward that used (and, in ``ema`` mode, updated) the statistics. Each
    layer's ``running_mean``/``running_var`` then hold the statistics that forward used; the source ones
    are kept in ``source_mean``/``source_var`` and restored by :meth:`reset`.
    """

    changes = "statistics"
    exports = "adaptive"  # batch, mixed or EMA statistics computed inside the graph

    def __init__(self, model: nn.Module, *, episodic: bool = False, input_ndim: int | None = 4) -> None:
        super().__init__(model, episodic=episodic, input_ndim=input_ndim)
        if not any(iter_adaptive(self.model)):
            raise ValueError(
                "Norm needs a model converted with adapters_bn.adapt_batchnorm; "
                "use Norm.from_model(model) to convert it"
            )
        self.snapshot()

    def adapt_step(self, x: Tensor) -> Tensor:
        """Forward with target statistics; returns those logits."""
        return self.model(x)

    @classmethod
    @checked_builder(_check_options)
    def from_model(
        cls,
        model: nn.Module,
        *,
        stats: BNStats = "batch",
        momentum: float = 0.1,
        prior: float = 0.0,
        episodic: bool = False,
        input_ndim: int | None = 4,
    ) -> Norm:
        """Convert ``model``'s BatchNorm layers to the given statistics mode (in place) and wrap it.

        Args:
            model: A model with BatchNorm layers (LayerNorm/GroupNorm have no statistics to adapt).
            stats: ``batch``, ``mix`` or ``ema`` (``source`` is allowed and equals the source model).
            momentum: EMA momentum for ``ema`` mode.
            prior: Weight of the source statistics in ``mix`` mode (alpha-BN), in [0, 1].
            episodic: Reset before every batch.
            input_ndim: Expected input rank (4 for images); ``None`` skips the check.

        Raises:
            TypeError: an option of the wrong type (e.g. ``momentum="0.1"``, ``episodic="no"``).
            ValueError: an option out of range, or a model without BatchNorm layers with running statistics.
        """
        model = adapt_batchnorm(model, stats=stats, momentum=momentum, prior=prior)
        if not any(iter_adaptive(model)):
            raise ValueError(
                f"{type(model).__name__} has no BatchNorm layer with running statistics; 'norm' adapts "
                "BatchNorm statistics only. For LayerNorm/GroupNorm models use 'tent' (affine parameters)."
            )
        return cls(model, episodic=episodic, input_ndim=input_ndim)
