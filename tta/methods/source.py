"""Source: the unadapted model, the control every results table needs."""

from __future__ import annotations

from torch import Tensor, nn

from tta.base import TTAMethod
from tta.checks import check_input_ndim
from tta.registry import register_adapter

__all__ = ["Source"]


@register_adapter("source")
class Source(TTAMethod):
    """The deployed model as it is, in ``eval()``: nothing adapts, ``reset`` is trivially exact."""

    def __init__(self, model: nn.Module, *, input_ndim: int | None = 4) -> None:
        super().__init__(model, input_ndim=input_ndim)
        self.snapshot()

    def adapt_step(self, x: Tensor) -> Tensor:
        """Return the source model's logits on ``x``."""
        return self.model(x)

    @classmethod
    def from_model(cls, model: nn.Module, *, input_ndim: int | None = 4) -> Source:
        """Wrap ``model`` unchanged.

        Raises:
            TypeError: ``input_ndim`` is neither ``None`` nor an int.
            ValueError: ``input_ndim`` below 1.
        """
        check_input_ndim(input_ndim)
        return cls(model, input_ndim=input_ndim)
