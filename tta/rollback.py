"""All-or-nothing adaptation steps: a batch rejected half-way leaves no statistics behind."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["model_errors_explained", "rolled_back_on_error"]


@contextmanager
def model_errors_explained(method: nn.Module, x: Tensor) -> Iterator[None]:
    """Within the block, torch's ``RuntimeError`` from inside the model becomes a ``ValueError`` naming the batch."""
    try:
        yield
    except RuntimeError as error:
        if type(error) is not RuntimeError:
            raise
        raise ValueError(
            f"{type(method).__name__}: the model rejected a batch of shape {tuple(x.shape)} and dtype "
            f"{x.dtype}; nothing was adapted. The model said: {error}"
        ) from error


@contextmanager
def rolled_back_on_error(method: nn.Module, x: Tensor) -> Iterator[None]:
    """Within the block, an exception restores every buffer of ``method`` (BN statistics, counters).

    Parameters and optimizer states change only in the optimizer step, after the loss, so a
    failure before it leaves them as they were; buffers move in the forward itself. Errors are
    explained as by :func:`model_errors_explained`.
    """
    saved = [buffer.clone() for buffer in method.buffers()]
    try:
        with model_errors_explained(method, x):
            yield
    except Exception:
        with torch.no_grad():
            for buffer, value in zip(method.buffers(), saved):
                buffer.copy_(value)
        raise
