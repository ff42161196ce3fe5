"""Online evaluation under a constant-speed stream: a method slower than the stream adapts on fewer batches.

Following Alfarra et al., "Evaluation of Test-Time Adaptation Under Computational Time Constraints"
(ICML 2024): batches arrive at the speed of plain inference; while the method is still busy with an
earlier batch, arriving batches are predicted by the most recent adapted model without adapting.
With a relative cost ``C`` (method time / plain inference time per batch) the method adapts on one
batch out of every ``ceil(C)``. ``C`` is given, or measured on the first batch.
"""

from __future__ import annotations

import math
import time
from typing import Any, cast

import torch
from torch import Tensor, nn

from tta import TTAMethod
from tta.guard import CollapseGuard

__all__ = ["OnlineAdapter", "relative_cost"]


def _seconds(fn: Any, x: Tensor, repeats: int = 3) -> float:
    best = math.inf
    for _ in range(repeats):
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        fn(x)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        best = min(best, time.perf_counter() - start)
    return best


def relative_cost(adapter: nn.Module, model: nn.Module, x: Tensor) -> float:
    """Return (time of one adapting forward) / (time of plain inference) on ``x``, the best of 3 each.

    The adapter is reset afterwards if it can be, so the measurement leaves no trace.
    """
    with torch.inference_mode():
        plain = _seconds(model, x)
    cost = _seconds(adapter, x)
    reset = getattr(adapter, "reset", None)
    if callable(reset):
        reset()
    return max(1.0, cost / max(plain, 1e-9))


class OnlineAdapter(nn.Module):
    """Wrap an adapter so that it adapts on one batch in ``ceil(cost)`` and predicts frozen on the others.

    Args:
        adapter: A method with ``frozen()`` and ``reset()`` (any :class:`tta.TTAMethod`, guarded or not).
        cost: Relative cost ``C >= 1`` of an adapting step versus plain inference.
    """

    def __init__(self, adapter: TTAMethod | CollapseGuard, cost: float) -> None:
        super().__init__()
        if not cost >= 1.0:
            raise ValueError(f"relative cost must be >= 1 (a method is never faster than plain inference), got {cost}")
        self.adapter = adapter
        self.period = math.ceil(cost - 1e-9)
        self.adapted_batches = 0
        self.seen_batches = 0

    def forward(self, x: Tensor) -> Tensor:
        """Adapt on this batch if the method is free, else predict with its current state."""
        busy = self.seen_batches % self.period != 0
        self.seen_batches += 1
        if busy:
            with self.adapter.frozen():
                return cast(Tensor, self.adapter(x))
        self.adapted_batches += 1
        return cast(Tensor, self.adapter(x))

    def reset(self) -> None:
        """Reset the method and the schedule."""
        self.adapter.reset()
        self.seen_batches = 0
