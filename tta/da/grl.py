"""Gradient reversal and the DANN paper's schedules for the reversal scale and the learning rate.

The gradient reversal layer is the identity in the forward pass and multiplies the gradient by
``-scale`` in the backward pass, so a feature extractor below it is trained to *increase* the loss
of the domain discriminator above it (Ganin & Lempitsky 2015, eq. 9 and section 3.3).

Reference: Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015
(arXiv:1409.7495); Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016
(arXiv:1505.07818).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["GradientReversal", "anneal_lr", "dann_schedule", "grad_reverse"]


class _GradReverse(torch.autograd.Function):
    """Identity forward; backward returns ``-scale * grad``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        return grad_output * (-ctx.scale), None


def _check_scale(scale: float) -> float:
    if isinstance(scale, Tensor) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite Python float, got {scale!r}")
    return float(scale)


def grad_reverse(x: Tensor, scale: float = 1.0) -> Tensor:
    """Return ``x`` unchanged; in the backward pass its gradient is multiplied by ``-scale``.

    Args:
        x: Any tensor (typically features, shape ``(B, D)``).
        scale: The reversal weight λ of the paper (eq. 9); ``0`` blocks the gradient.

    Returns:
        A view of ``x``.

    Raises:
        ValueError: If ``scale`` is not finite.

    Example:
        >>> x = torch.ones(3, requires_grad=True)
        >>> grad_reverse(x, 0.5).sum().backward()
        >>> x.grad
        tensor([-0.5000, -0.5000, -0.5000])
    """
    return _GradReverse.apply(x, _check_scale(scale))


class GradientReversal(nn.Module):
    """Gradient reversal layer with a schedulable scale λ (the attribute ``scale``).

    A training loop sets ``layer.scale = dann_schedule(progress)`` before each step, as the paper
    does. The scale is a plain attribute, not a buffer: it is a function of training progress,
    which a checkpoint records separately.

    Shape:
        - Input: any.
        - Output: the input, unchanged.

    Example:
        >>> layer = GradientReversal(scale=0.0)
        >>> layer.scale = dann_schedule(0.5)
        >>> round(layer.scale, 4)
        0.9866
    """

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = _check_scale(scale)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x``; its gradient is multiplied by ``-self.scale``."""
        return grad_reverse(x, self.scale)

    def extra_repr(self) -> str:
        """Return the current scale for ``repr``."""
        return f"scale={self.scale:g}"


def _check_progress(progress: float) -> None:
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must lie in [0, 1] (steps done / total steps), got {progress!r}")


def dann_schedule(progress: float, gamma: float = 10.0) -> float:
    """Return the paper's reversal scale ``λ_p = 2 / (1 + exp(-γ·p)) - 1``.

    It rises from 0 at the start of training to almost 1, which suppresses the noisy
    discriminator signal early on (Ganin & Lempitsky 2015, section 5.2, "λ_p").

    Args:
        progress: Training progress ``p``, steps done divided by total steps, in ``[0, 1]``.
        gamma: The schedule's steepness γ (10 in every experiment of the paper).

    Returns:
        λ_p in ``[0, 1)``.

    Raises:
        ValueError: If ``progress`` is outside ``[0, 1]``.

    Example:
        >>> dann_schedule(0.0), round(dann_schedule(1.0), 6)
        (0.0, 0.999909)
    """
    _check_progress(progress)
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


def anneal_lr(progress: float, base_lr: float = 0.01, alpha: float = 10.0, beta: float = 0.75) -> float:
    """Return the paper's annealed learning rate ``μ_p = μ0 / (1 + α·p)^β``.

    Args:
        progress: Training progress ``p`` in ``[0, 1]``.
        base_lr: Initial learning rate μ0 (0.01 in the paper).
        alpha: α (10 in the paper).
        beta: β (0.75 in the paper).

    Returns:
        μ_p; at ``p = 1`` with the defaults, about ``0.01 / 6.03``.

    Raises:
        ValueError: If ``progress`` is outside ``[0, 1]``.

    Example:
        >>> anneal_lr(0.0), round(anneal_lr(1.0), 7)
        (0.01, 0.0016572)
    """
    _check_progress(progress)
    return base_lr / (1.0 + alpha * progress) ** beta
