"""Shared torch building blocks of the corruptions: filters, zooms, motion blur, colour weights.

Each helper reproduces one operation of the reference's numpy/OpenCV/SciPy pipeline on batches
``(B, C, H, W)`` on any device, and names the operation it stands for:

- :func:`filter2d_reflect101`: OpenCV ``filter2D`` with its default reflect-101 border;
- :func:`gaussian_filter`: scikit-image ``filters.gaussian`` = SciPy ``ndimage.gaussian_filter``
  over the two spatial axes, as one cached ``(H, H)`` and one ``(W, W)`` matrix (any sigma,
  any border mode, even when the kernel is wider than the image);
- :func:`clipped_zoom`: imagecorruptions' ``clipped_zoom`` (a centre crop enlarged by SciPy's
  linear ``zoom`` and cut to the original size from its top-left corner);
- :func:`motion_blur_lines`: imagecorruptions' ``_motion_blur`` (a Gaussian-weighted sum of
  edge-replicated shifts along a line), with one angle per image;
- :func:`box3_reflect101`: OpenCV ``blur`` with a 3x3 box.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "FFT_KERNEL_SIZE",
    "LUMA_WEIGHTS",
    "box3_reflect101",
    "add_clipped_zooms_",
    "clipped_zoom",
    "filter2d_reflect101",
    "gaussian_filter",
    "luma",
    "motion_blur_lines",
    "reflect101_index",
]

#: Kernels at least this wide are applied through the FFT (OpenCV's filter2D switches at 11).
FFT_KERNEL_SIZE = 9
#: OpenCV's ``COLOR_RGB2GRAY`` weights (ITU-R BT.601).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
BorderMode = Literal["nearest", "reflect", "mirror"]
# motion_blur_lines correlates one-channel images of at most this many pixels (snow's flakes)
# through the FFT, one product per image; otherwise adding shifted views was faster (measured).
_SMALL_IMAGE = 64 * 64
# Gaussian filters up to this radius are summed from shifted views; wider ones use matrices.
_SLICED_RADIUS = 12


def luma(x: Tensor) -> Tensor:
    """Return the ``(B, 1, H, W)`` grey level of RGB (BT.601 weights) or one-channel images."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def reflect101_index(size: int, pad: int, device: torch.device | str = "cpu") -> Tensor:
    """Return source indices of a length-``size`` axis padded by ``pad`` with reflect-101."""
    index = torch.arange(-pad, size + pad, device=device)
    return _boundary(index, size, "mirror")


def _boundary(index: Tensor, size: int, mode: BorderMode) -> Tensor:
    """Map integer positions outside ``0..size-1`` inside, by SciPy's border ``mode``."""
    if mode == "nearest" or size == 1:
        return index.clamp(0, size - 1)
    if mode == "reflect":  # half-sample symmetric: dcba|abcd|dcba
        index = index % (2 * size)
        return torch.where(index >= size, 2 * size - 1 - index, index)
    period = 2 * (size - 1)  # mirror = OpenCV's reflect-101: dcb|abcd|cba
    index = index.abs() % period
    return torch.where(index >= size, period - index, index)


def filter2d_reflect101(x: Tensor, kernel: Tensor) -> Tensor:
    """Correlate each channel of ``x`` with an odd square ``kernel``, as OpenCV's ``filter2D``.

    Args:
        x: Batch of shape ``(B, C, H, W)``.
        kernel: Shape ``(k, k)`` with ``k`` odd, same dtype and device as ``x``.

    Returns:
        The filtered batch, shape ``(B, C, H, W)``, borders extended by reflect-101.
    """
    size = kernel.shape[-1]
    pad = size // 2
    rows = reflect101_index(x.shape[-2], pad, x.device)
    cols = reflect101_index(x.shape[-1], pad, x.device)
    padded = x.index_select(-2, rows).index_select(-1, cols)
    if size >= FFT_KERNEL_SIZE:
        # Large kernels: the product of spectra (circular wrap-around falls in the cropped border).
        shape = (_fast_length(padded.shape[-2]), _fast_length(padded.shape[-1]))
        spectrum = torch.fft.rfft2(padded, s=shape) * torch.fft.rfft2(kernel.flip(0, 1), s=shape)
        filtered: Tensor = torch.fft.irfft2(spectrum, s=shape)
        return filtered[..., size - 1 : size - 1 + x.shape[-2], size - 1 : size - 1 + x.shape[-1]]
    # Small kernels: a sum of shifted views (much faster than a depthwise conv2d on the CPU).
    height, width = x.shape[-2:]
    out = torch.zeros_like(x)
    for (row, col), weight in zip(itertools.product(range(size), repeat=2), kernel.reshape(-1).tolist(), strict=True):
        if weight != 0:
            out.add_(padded[..., row : row + height, col : col + width], alpha=weight)
    return out


def _fast_length(length: int) -> int:
    """Return the smallest ``n >= length`` with no prime factor above 5 (a fast FFT length)."""
    n = length
    while True:
        rest = n
        for prime in (2, 3, 5):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return n
        n += 1


def box3_reflect101(x: Tensor) -> Tensor:
    """Return OpenCV's ``blur(x, (3, 3))``: the 3x3 mean with a reflect-101 border."""
    return filter2d_reflect101(x, torch.full((3, 3), 1 / 9, dtype=x.dtype, device=x.device))


@functools.lru_cache(maxsize=128)
def _gaussian_matrix(size: int, sigma: float, truncate: float, mode: BorderMode) -> Tensor:
    """Return SciPy's 1-D ``gaussian_filter`` on a length-``size`` axis as a float64 matrix (cached).

    The kernel has radius ``int(truncate * sigma + 0.5)`` and weights ``exp(-t^2 / (2 sigma^2))``
    normalised to sum 1; taps falling outside the axis are folded back by ``mode``.
    """
    radius = int(truncate * sigma + 0.5)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * taps**2 / sigma**2) if sigma > 0 else (taps == 0).to(torch.float64)
    weights /= weights.sum()
    rows = torch.arange(size).repeat_interleave(2 * radius + 1)
    cols = _boundary(torch.arange(size)[:, None] + torch.arange(-radius, radius + 1), size, mode).reshape(-1)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    matrix.index_put_((rows, cols), weights.repeat(size), accumulate=True)
    return matrix


def gaussian_filter(x: Tensor, sigma: float, *, truncate: float = 4.0, mode: BorderMode = "nearest") -> Tensor:
    """Blur the two spatial axes of ``x`` as scikit-image's ``gaussian`` (SciPy's filter) does.

    Args:
        x: Batch ``(B, C, H, W)``; every channel is filtered on its own.
        sigma: Standard deviation in pixels (0 returns a copy).
        truncate: Kernel radius in standard deviations (SciPy's ``truncate``).
        mode: SciPy border mode; ``"nearest"`` is scikit-image's default.

    Returns:
        The blurred batch, same shape, dtype and device.
    """
    radius = int(truncate * sigma + 0.5)
    if radius <= _SLICED_RADIUS:
        return _gaussian_sliced(_gaussian_sliced(x, -2, sigma, radius, mode), -1, sigma, radius, mode)
    rows = _gaussian_matrix(x.shape[-2], float(sigma), float(truncate), mode).to(x)
    cols = _gaussian_matrix(x.shape[-1], float(sigma), float(truncate), mode).to(x)
    return rows @ x @ cols.T


def _gaussian_sliced(x: Tensor, dim: int, sigma: float, radius: int, mode: BorderMode) -> Tensor:
    """Return the 1-D Gaussian filter along ``dim`` as a sum of shifted views of the padded input."""
    size = x.shape[dim]
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * taps**2 / sigma**2) if sigma > 0 else (taps == 0).to(torch.float64)
    coefficients: list[float] = (weights / weights.sum()).tolist()
    padded = x.index_select(dim, _boundary(torch.arange(-radius, size + radius), size, mode).to(x.device))
    out = padded.narrow(dim, 0, size) * coefficients[0]
    for tap in range(1, 2 * radius + 1):
        out.add_(padded.narrow(dim, tap, size), alpha=coefficients[tap])
    return out


@functools.lru_cache(maxsize=256)
def _zoom_taps(size: int, factor: float) -> tuple[Tensor, Tensor, Tensor]:
    """Return (lower index, upper index, weight of upper) of imagecorruptions' clipped zoom on one axis.

    A centre crop of ``ceil(size / factor)`` pixels starting at ``(size - crop) // 2`` is
    resampled by SciPy's linear ``zoom`` to ``round(crop * factor)`` pixels (sample ``o`` reads
    input position ``o * (crop - 1) / (out - 1)``); the first ``size`` samples are kept.
    """
    crop = int(math.ceil(size / float(factor)))
    top = (size - crop) // 2
    out = int(round(crop * factor))
    scale = (crop - 1) / (out - 1) if out > 1 else 0.0
    position = torch.arange(size, dtype=torch.float64) * scale
    lower = position.floor().clamp(max=max(crop - 2, 0))
    weight = position - lower
    upper = (lower + 1).clamp(max=crop - 1)
    return (lower + top).long(), (upper + top).long(), weight


def clipped_zoom(x: Tensor, factor: float) -> Tensor:
    """Return imagecorruptions' ``clipped_zoom`` of each image: enlarge the centre by ``factor``.

    Args:
        x: Batch ``(B, C, H, W)``.
        factor: Zoom factor, at least 1.

    Returns:
        The zoomed batch, same shape (the top-left ``H x W`` of the enlarged centre crop).
    """
    out = x
    for dim, size in ((-2, x.shape[-2]), (-1, x.shape[-1])):
        lower, upper, weight = (t.to(x.device) for t in _zoom_taps(size, float(factor)))
        shape = [1, 1, 1, 1]
        shape[dim] = size
        w = weight.to(x.dtype).view(shape)
        out = torch.lerp(out.index_select(dim, lower), out.index_select(dim, upper), w)
    return out


def add_clipped_zooms_(total: Tensor, x: Tensor, factors: Sequence[float]) -> Tensor:
    """Add :func:`clipped_zoom` of ``x`` for every factor to ``total``, in place, reusing two buffers."""
    across, shifted = torch.empty_like(x), torch.empty_like(x)
    for factor in factors:
        lower, upper, weight = (t.to(x.device) for t in _zoom_taps(x.shape[-1], float(factor)))
        torch.index_select(x, -1, lower, out=across)
        torch.index_select(x, -1, upper, out=shifted)
        across.lerp_(shifted, weight.to(x.dtype))
        lower, upper, weight = (t.to(x.device) for t in _zoom_taps(x.shape[-2], float(factor)))
        zoomed = torch.index_select(across, -2, lower)
        torch.index_select(across, -2, upper, out=shifted)
        total.add_(zoomed.lerp_(shifted, weight.to(x.dtype)[:, None]))
    return total


def motion_blur_lines(x: Tensor, radius: int, sigma: float, angles: Tensor) -> Tensor:
    """Blur each image along a line at its own angle, as imagecorruptions' ``_motion_blur``.

    The kernel has ``2 * radius + 1`` taps with half-Gaussian weights ``exp(-i^2 / (2 sigma^2))``
    (normalised over all taps); tap ``i`` adds the image shifted by
    ``(-ceil(i sin(a) - 0.5), -ceil(i cos(a) - 0.5))`` rows and columns, with edge pixels
    replicated. Like the reference, the sum stops (without renormalising) at the first tap whose
    shift reaches the image size.

    Args:
        x: Batch ``(B, C, H, W)``.
        radius: Kernel half-width in pixels.
        sigma: Standard deviation of the weights, in taps.
        angles: Direction of motion per image in degrees, shape ``(B,)``.

    Returns:
        The blurred batch, same shape, dtype and device.
    """
    batch, channels, height, width = x.shape
    taps = 2 * radius + 1
    index = torch.arange(taps, dtype=torch.float64)
    weights = torch.exp(-(index**2) / (2 * sigma**2))
    weights /= weights.sum()
    radians = torch.deg2rad(angles.detach().to("cpu", torch.float64))[:, None]
    # The reference's unit step along the line: (taps sin a, taps cos a) / hypot = (sin a, cos a).
    dy = -torch.ceil(index * torch.sin(radians) - 0.5).long()
    dx = -torch.ceil(index * torch.cos(radians) - 0.5).long()
    inside = ((dy.abs() < height) & (dx.abs() < width)).long().cummin(dim=1).values.bool()
    pad = int(max(dy.abs().max(), dx.abs().max()))
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate") if pad else x
    tap_weights = weights * inside
    if channels == 1 and height * width <= _SMALL_IMAGE:
        return _correlate_sparse_fft(padded, pad - dy, pad - dx, tap_weights, (height, width))
    rows, cols, tap_list = (pad - dy).tolist(), (pad - dx).tolist(), tap_weights.tolist()
    out = torch.zeros_like(x)
    # Large images: one strided view per (image, tap), cheaper than gathers or the FFT.
    for image in range(batch):
        for tap in range(taps):
            if tap_list[image][tap] == 0:
                break
            top, left = rows[image][tap], cols[image][tap]
            out[image].add_(padded[image, :, top : top + height, left : left + width], alpha=tap_list[image][tap])
    return out


def _correlate_sparse_fft(padded: Tensor, rows: Tensor, cols: Tensor, weights: Tensor, size: tuple[int, int]) -> Tensor:
    """Return ``sum_t weights[b, t] * padded[b, :, rows[b, t] + h, cols[b, t] + w]`` via the FFT.

    Each image's taps form a sparse kernel; its correlation with the padded image is one
    product of spectra per image, for all taps at once (no wrap-around: the offsets stay inside
    the padding).
    """
    batch = padded.shape[0]
    shape = (_fast_length(padded.shape[-2]), _fast_length(padded.shape[-1]))
    kernel = torch.zeros(batch, *shape, dtype=padded.dtype)
    images = torch.arange(batch)[:, None].expand_as(rows)
    kernel.index_put_((images, rows, cols), weights.to(padded.dtype), accumulate=True)
    spectrum = torch.fft.rfft2(padded, s=shape) * torch.fft.rfft2(kernel.to(padded.device)).conj()[:, None]
    filtered: Tensor = torch.fft.irfft2(spectrum, s=shape)
    return filtered[..., : size[0], : size[1]]
