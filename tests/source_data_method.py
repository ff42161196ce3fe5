"""A test-only method that needs source data (no built-in method does yet), registered only while a test uses it."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import ClassVar

import torch
from torch import Tensor, nn

from tests.helpers import registered
from tta.base import Changes, Exports, Need, TTAMethod
from tta.source_data import SourceData, require_source_data, source_batches

SOURCE_METHOD = "test_source_counter"


class SourceCounter(TTAMethod):
    """Predicts with the model; counts the labeled source images it read when built (buffer ``images_seen``)."""

    changes: ClassVar[Changes] = "statistics"
    exports: ClassVar[Exports] = "none"
    needs: ClassVar[frozenset[Need]] = frozenset({"source_data"})

    def __init__(self, model: nn.Module, *, source_data: SourceData | None = None) -> None:
        super().__init__(model)
        require_source_data(SOURCE_METHOD, source_data)
        batches = list(source_batches(source_data, method=SOURCE_METHOD, labels=True))  # type: ignore[arg-type]
        self.register_buffer("images_seen", torch.tensor(sum(len(x) for x, _ in batches)))
        self.snapshot()

    def adapt_step(self, x: Tensor) -> Tensor:
        """Return the model's logits on ``x``."""
        logits: Tensor = self.model(x)
        return logits

    @classmethod
    def from_model(cls, model: nn.Module, *, source_data: SourceData | None = None) -> SourceCounter:
        """Build the method on ``model`` (the registry's builder)."""
        return cls(model, source_data=source_data)


def source_method_registered() -> AbstractContextManager[str]:
    """Register :class:`SourceCounter` as :data:`SOURCE_METHOD` for the block (the registry has no unregister)."""
    return registered(SOURCE_METHOD, SourceCounter)
