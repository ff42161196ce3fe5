"""Pure objectives shared by the adaptation methods."""

from __future__ import annotations

from torch import Tensor

__all__ = ["softmax_entropy", "soft_cross_entropy", "symmetric_cross_entropy"]


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


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, dim: int = 1) -> Tensor:
    """Return the cross-entropy of the student's softmax against the teacher's soft targets, per sample.

    ``-(softmax(teacher) * log_softmax(student)).sum(dim)``: the consistency loss of CoTTA's CIFAR
    code (its ``softmax_entropy(x, x_ema)``). Gradients flow into both arguments; detach the teacher
    to train the student only.

    Args:
        student_logits: Logits being optimized, shape ``(B, K)``.
        teacher_logits: Logits giving the targets, shape ``(B, K)``.
        dim: The class dimension.

    Returns:
        Cross-entropy in nats, shape ``(B,)``.

    Example:
        >>> soft_cross_entropy(torch.zeros(1, 2), torch.zeros(1, 2))
        tensor([0.6931])
    """
    return -(teacher_logits.softmax(dim) * student_logits.log_softmax(dim)).sum(dim)


def symmetric_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, dim: int = 1) -> Tensor:
    """Return the mean of the two soft cross-entropies (student against teacher and back), per sample.

    ``0.5 * soft_cross_entropy(s, t) + 0.5 * soft_cross_entropy(t, s)``: the loss of CoTTA's
    ImageNet code.

    Example:
        >>> symmetric_cross_entropy(torch.zeros(1, 2), torch.zeros(1, 2))
        tensor([0.6931])
    """
    return 0.5 * soft_cross_entropy(student_logits, teacher_logits, dim) + 0.5 * soft_cross_entropy(
        teacher_logits, student_logits, dim
    )
