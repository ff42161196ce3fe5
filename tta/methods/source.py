"""Source: the unadapted model, the control every results table needs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from tta.base import TTAMethod
from tta.checks import check_input_ndim, checked_builder
from tta.registry import register_adapter

__all__ = ["Source"]


def _check_options(options: Mapping[str, Any]) -> None:
    """Raise a clear ``TypeError``/``ValueError`` for an ``input_ndim`` that is neither ``None`` nor an int >= 1."""
    check_input_ndim(options["input_ndim"])


@register_adapter("source")
class Source(TTAMethod):
    """The deployed model as it is, in ``eval()``: nothing adapts, ``reset`` is trivially exact."""

    changes = "nothing"
    exports = "frozen"  # the source model itself

    def __init__(self, model: nn.Module, *, input_ndim: int | None = 4) -> None:
        super().__init__(model, input_ndim=input_ndim)
        self.snapshot()

    def adapt_step(self, x: Tensor) -> Tensor:
        """Return the source model's logits on ``x``."""
        return self.model(x)

    @classmethod
    @checked_builder(_check_options)
    def from_model(cls, model: nn.Module, *, input_ndim: int | None = 4) -> Source:
        """Wrap ``model`` unchanged.

        Raises:
            TypeError: ``input_ndim`` is neither ``None`` nor an int.
            ValueError: ``input_ndim`` below 1.
        """
        return cls(model, input_ndim=input_ndim)
