"""Pillow's BOX resampling reproduced exactly on batched float tensors (pixelate's two resizes).

Pixelate shrinks an image with Pillow's ``Image.resize(..., BOX)`` and enlarges it back with
BOX (the original ``make_imagenet_c.py``; imagecorruptions enlarges with NEAREST, which agrees
except at exact half-way samples). Both resizes are index operations: BOX downsampling averages
runs of whole input pixels (Pillow's coefficients are 0 or 1 before normalisation) and BOX
upsampling copies one small pixel per output pixel. They are done here with row sums, window
sums of consecutive columns and gathers (each a pass over contiguous rows), never with a dense
resampling matrix, which would cost ``size * small`` multiply-adds per row.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["box_pixelate", "box_resize_matrix"]


def box_resize_matrix(in_size: int, out_size: int) -> Tensor:
    """Return Pillow's BOX resampling coefficients as an ``(out_size, in_size)`` float64 matrix.

    As ``precompute_coeffs`` in Pillow's ``libImaging/Resample.c``: output pixel ``i`` samples
    around ``center = (i + 0.5) * scale``; the box filter (1 on ``(-0.5, 0.5]``) is stretched by
    ``max(scale, 1)`` when downsampling, evaluated at input pixel centres inside the rounded
    support window ``[int(center - support + 0.5), int(center + support + 0.5))``, and each row
    is normalised to sum 1. The arithmetic is done in the same order as Pillow's, in float64.

    Args:
        in_size: Number of input pixels along the axis.
        out_size: Number of output pixels along the axis.

    Returns:
        The matrix ``M`` with ``output = M @ input`` along that axis.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    centers = (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale
    low = (centers - support + 0.5).trunc().clamp(min=0)
    high = (centers + support + 0.5).trunc().clamp(max=in_size)
    taps = torch.arange(in_size, dtype=torch.float64)
    arg = (taps - centers[:, None] + 0.5) * (1.0 / filterscale)
    inside = (taps >= low[:, None]) & (taps < high[:, None]) & (arg > -0.5) & (arg <= 0.5)
    weights = inside.to(torch.float64)
    return weights / weights.sum(dim=1, keepdim=True).clamp(min=1)


@dataclass(frozen=True)
class _BoxAxis:
    """Index form of a BOX downsampling of ``size`` pixels to ``small`` and of the BOX upsampling back.

    Attributes:
        longest: The longest downsampling window, in input pixels.
        disjoint: Whether no input pixel lies in two windows (Pillow's rounding makes some
            neighbouring windows share a pixel, e.g. for 30 -> 28, and skips a pixel elsewhere).
        group: ``(size,)`` the small pixel each input pixel is averaged into, or ``small`` for
            the pixels no window takes (meaningful when ``disjoint``).
        window_start: ``(small,)`` where each small pixel's window sum sits in the stacked window
            sums along this axis (see :func:`_fill_window_sums`): ``(length - 1) * size + first``.
        inverse_length: ``(small,)`` float64, 1 / window length.
        up: ``(size,)`` the small pixel each upsampled pixel copies.
        up_window_start: ``(size,)`` ``window_start`` of that small pixel.
        up_inverse_length: ``(size,)`` ``inverse_length`` of that small pixel.
    """

    longest: int
    disjoint: bool
    group: Tensor
    window_start: Tensor
    inverse_length: Tensor
    up: Tensor
    up_window_start: Tensor
    up_inverse_length: Tensor


@functools.lru_cache(maxsize=128)
def _box_axis(size: int, small: int, device: torch.device) -> _BoxAxis:
    """Return the cached index form of BOX ``size -> small -> size`` along one axis, on ``device``."""
    inside = box_resize_matrix(size, small) > 0  # (small, size): the windows, runs of whole pixels
    lengths = inside.sum(dim=1)
    first = inside.to(torch.int64).argmax(dim=1)
    group = torch.where(inside.any(dim=0), inside.to(torch.int64).argmax(dim=0), small)
    window_start = (lengths - 1) * size + first
    inverse_length = 1.0 / lengths.to(torch.float64)
    up = box_resize_matrix(small, size).argmax(dim=1)
    return _BoxAxis(
        longest=int(lengths.max()),
        disjoint=bool((inside.sum(dim=0) <= 1).all()),
        group=group.to(device),
        window_start=window_start.to(device),
        inverse_length=inverse_length.to(device),
        up=up.to(device),
        up_window_start=window_start[up].to(device),
        up_inverse_length=inverse_length[up].to(device),
    )


def box_pixelate(x: Tensor, small_height: int, small_width: int) -> Tensor:
    """Resize with Pillow's BOX to ``(small_height, small_width)`` and back with BOX, without rounding.

    Steps, for the ``B * C`` planes: the rows of each window are summed (``index_add_`` on the
    CPU when the windows are disjoint; otherwise, and on other devices, where ``index_add_``'s
    atomic adds would not be deterministic, window sums and a gather); sums over 1..``longest``
    consecutive columns are stacked, so that one gather both finishes the downsampling and
    upsamples the columns; a multiply by the window sizes makes the sums means; a row gather
    upsamples the rows.

    Args:
        x: Images ``(B, C, H, W)``, float.
        small_height: Height of the downsampled image, 1..H.
        small_width: Width of the downsampled image, 1..W.

    Returns:
        The pixelated images, same shape, dtype and device as ``x``.
    """
    batch, channels, height, width = x.shape
    rows = _box_axis(height, small_height, x.device)
    cols = _box_axis(width, small_width, x.device)
    planes = x.reshape(batch * channels, height, width)
    # stack[p, r, L - 1, c]: sum over the rows of small row r (r = small_height: skipped rows)
    # and the columns c .. c + L - 1.
    stack = x.new_empty(planes.shape[0], small_height + 1, cols.longest, width)
    row_sums = stack[:, :, 0]
    if x.device.type == "cpu" and rows.disjoint:
        row_sums.zero_().index_add_(1, rows.group, planes)
    else:
        by_rows = x.new_empty(planes.shape[0], rows.longest, height, width)
        by_rows[:, 0] = planes
        _fill_window_sums(by_rows, 1)
        row_sums[:, :small_height] = by_rows.flatten(1, 2).index_select(1, rows.window_start)
        row_sums[:, small_height] = 0
    _fill_window_sums(stack, 2)
    # A 2-D gather (a 3-D one along the last axis takes a much slower path on the CPU).
    sums = stack.view(-1, cols.longest * width).index_select(1, cols.up_window_start).view(-1, small_height + 1, width)
    sums.mul_(_inverse_areas(height, small_height, width, small_width, x.device, x.dtype))
    return sums.index_select(1, rows.up).view(batch, channels, height, width)


@functools.lru_cache(maxsize=128)
def _inverse_areas(
    height: int, small_height: int, width: int, small_width: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Return the ``(small_height + 1, width)`` factors that turn window sums into means (0 for skipped rows)."""
    rows = _box_axis(height, small_height, device)
    cols = _box_axis(width, small_width, device)
    inverse_rows = torch.cat([rows.inverse_length, rows.inverse_length.new_zeros(1)])
    return (inverse_rows[:, None] * cols.up_inverse_length).to(dtype)


def _fill_window_sums(stack: Tensor, dim: int) -> None:
    """Fill ``stack`` along ``dim`` with window sums of its first entry, in place.

    ``stack.select(dim, 0)`` holds values along the next axis (``dim + 1``, of size ``n``);
    afterwards ``stack.select(dim, L - 1)`` holds at position ``i`` the sum of positions
    ``i .. i + L - 1`` for every ``i <= n - L`` (later positions are left undefined and are
    never read). Flattening ``dim`` with the next axis gives the window of length ``L`` that
    starts at ``i`` at index ``(L - 1) * n + i``.
    """
    size = stack.shape[dim + 1]
    base = stack.select(dim, 0)
    for length in range(2, stack.shape[dim] + 1):
        valid = size - length + 1
        torch.add(
            stack.select(dim, length - 2).narrow(dim, 0, valid),
            base.narrow(dim, length - 1, valid),
            out=stack.select(dim, length - 1).narrow(dim, 0, valid),
        )
