"""The low-pass filter phi_D of DDA: downsample by D and upsample back with an antialiased cubic resize.

The resize is the MATLAB-style ``imresize`` that ILVR and DDA use (assafshocher/ResizeRight's
``resize`` with its defaults: Keys cubic kernel with a = -0.5, kernel stretched by the scale when
shrinking (antialiasing), weights normalized per output pixel, zero ("constant") padding outside the
image). Because each 1-D resize is linear, it is written here as an ``(out, in)`` matrix, and
``phi_D`` as one ``(H, H)`` and one ``(W, W)`` matrix applied to the last two dimensions. The
padding is zero *after* weight normalization, so pixels near the border are attenuated, exactly as
in the official code (in [-1, 1] images that pulls borders toward grey).

Reference: Choi et al., "ILVR: Conditioning Method for Denoising Diffusion Probabilistic Models",
ICCV 2021 (arXiv:2108.02938); Gao et al., "Back to the Source: Diffusion-Driven Test-Time
Adaptation", CVPR 2023 (arXiv:2207.03442), Sec. 3.2.
Adapted from: the behaviour of ``resize_right.py``/``interp_methods.py`` in shiyegao/DDA (no licence:
read, not copied), itself from assafshocher/ResizeRight (MIT).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

__all__ = ["cubic_kernel", "resize_matrix", "low_pass_matrix", "low_pass"]

_EPS = float(torch.finfo(torch.float32).eps)  # ResizeRight nudges window boundaries by float32 eps


def cubic_kernel(x: Tensor) -> Tensor:
    """Return Keys' cubic convolution kernel with ``a = -0.5`` (MATLAB's ``imresize`` "cubic"), support [-2, 2]."""
    ax = x.abs()
    inner = (1.5 * ax**3 - 2.5 * ax**2 + 1.0) * (ax <= 1.0)
    outer = (-0.5 * ax**3 + 2.5 * ax**2 - 4.0 * ax + 2.0) * ((ax > 1.0) & (ax <= 2.0))
    return inner + outer


@lru_cache(maxsize=64)
def _resize_matrix(in_size: int, out_size: int, scale: float) -> Tensor:
    out_pos = torch.arange(out_size, dtype=torch.float64)
    # Output pixel centres projected onto the input grid (Shocher et al., "From Discrete to Continuous Convolutions").
    grid = out_pos / scale + (in_size - 1) / 2 - (out_size - 1) / (2 * scale)
    stretch = min(scale, 1.0)  # antialiasing: widen the kernel when shrinking
    support = 4.0 / stretch
    left = torch.ceil(grid - support / 2 - _EPS)
    taps = left[:, None] + torch.arange(math.ceil(support - _EPS), dtype=torch.float64)
    weights = stretch * cubic_kernel(stretch * (grid[:, None] - taps))
    total = weights.sum(1, keepdim=True)
    weights = weights / torch.where(total == 0, torch.ones_like(total), total)
    inside = (taps >= 0) & (taps < in_size)  # taps outside the image read zero padding
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)[:, None].expand_as(taps)
    matrix.index_put_((rows[inside], taps[inside].long()), weights[inside], accumulate=True)
    return matrix


def resize_matrix(in_size: int, out_size: int, scale: float) -> Tensor:
    """Return the ``(out_size, in_size)`` float64 matrix of a 1-D antialiased cubic resize by ``scale``.

    Args:
        in_size: Input length.
        out_size: Output length (``int(in_size * scale)`` in DDA).
        scale: Resize factor (< 1 shrinks, with a kernel widened by ``1 / scale``).

    Raises:
        ValueError: if a size or the scale is not positive.
    """
    if in_size < 1 or out_size < 1 or not scale > 0:
        raise ValueError(f"sizes and scale must be positive, got in={in_size}, out={out_size}, scale={scale}")
    return _resize_matrix(int(in_size), int(out_size), float(scale)).clone()


@lru_cache(maxsize=64)
def _low_pass_matrix(size: int, factor: int) -> Tensor:
    small = int(size / factor)  # as the official code: int(H / D)
    return _resize_matrix(small, size, float(factor)) @ _resize_matrix(size, small, 1.0 / factor)


def low_pass_matrix(size: int, factor: int) -> Tensor:
    """Return the ``(size, size)`` float64 matrix of one axis of ``phi_D``: shrink by ``factor``, then enlarge.

    Raises:
        ValueError: if ``factor`` is below 1 or leaves fewer than one pixel.
    """
    if factor < 1 or int(size / factor) < 1:
        raise ValueError(f"low-pass factor must be in [1, {size}] for size {size}, got {factor}")
    if factor == 1:
        return torch.eye(size, dtype=torch.float64)
    return _low_pass_matrix(int(size), int(factor)).clone()


def low_pass(x: Tensor, factor: int) -> Tensor:
    """Return ``phi_D(x)``: ``x`` shrunk by ``factor`` and enlarged back to its size (differentiable).

    Args:
        x: Images ``(..., H, W)``.
        factor: ``D``, the down-sampling factor (DDA's ImageNet default is 4; 1 is the identity).

    Returns:
        A tensor shaped, typed and placed like ``x``.
    """
    if factor == 1:
        return x
    height, width = x.shape[-2:]
    rows = low_pass_matrix(height, factor).to(device=x.device, dtype=x.dtype)
    cols = low_pass_matrix(width, factor).to(device=x.device, dtype=x.dtype)
    return rows @ x @ cols.transpose(0, 1)
