"""Pure objectives shared by the adaptation methods."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["softmax_entropy"]


def softmax_entropy(logits: Tensor, dim: int = 1) -> Tensor:
    """Return the Shannon entropy of ``softmax(logits)`` for each sample.

    Computed as ``-(softmax * log_softmax).sum(dim)``, the form used by Tent's official code.

    Args:
        logits: Unnormalized class scores, shape ``(B, K)``.
        dim: The class dimension.

    Returns:
        Entropy in nats, shape ``(B,)``.

    Example:
        >>> softmax_entropy(torch.zeros(2, 4))
        tensor([1.3863, 1.3863])
    """
    return -(logits.softmax(dim) * logits.log_softmax(dim)).sum(dim)
