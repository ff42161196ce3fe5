"""All-or-nothing adaptation steps: a batch rejected half-way leaves no statistics behind."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["rolled_back_on_error"]


@contextmanager
def rolled_back_on_error(method: nn.Module, x: Tensor) -> Iterator[None]:
    """Within the block, an exception restores every buffer of ``method`` (BN statistics, counters).

    Parameters and optimizer states change only in the optimizer step, after the loss, so a
    failure before it leaves them as they were; buffers move in the forward itself. torch's own
    ``RuntimeError`` from deep inside the model becomes a ``ValueError`` naming the batch.
    """
    saved = [buffer.clone() for buffer in method.buffers()]
    try:
        yield
    except Exception as error:
        with torch.no_grad():
            for buffer, value in zip(method.buffers(), saved):
                buffer.copy_(value)
        if type(error) is RuntimeError:
            raise ValueError(
                f"{type(method).__name__}: the model rejected a batch of shape {tuple(x.shape)} and dtype "
                f"{x.dtype}; nothing was adapted. The model said: {error}"
            ) from error
        raise
