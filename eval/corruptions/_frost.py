"""Procedural frost textures, generated deterministically on first use (nothing is shipped).

The reference overlays crops of six photographs of frost on a window (``frost1.png`` to
``frost6.jpg`` of imagecorruptions; the script draws from the first five). Ours are five
generated textures with the same sizes and the same per-channel mean and standard deviation
as those five photographs, and the same fine-scale roughness (mean absolute difference of
horizontally adjacent grey levels), all measured from imagecorruptions 1.1.2's files; the second
and third photographs are identical, so the second and third textures share their statistics,
not their pattern. Each is a bluish-white mix of soft cloudy fractal noise, networks of thin bright
ridges in three orientations (crystal needles) and fine grain. They are not photographs: the
crystal shapes, their sharpness and their spatial layout differ from the reference's, while
the brightness and colour added at each severity match on average.
"""

from __future__ import annotations

import functools
import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FROST_TEXTURES", "frost_texture"]

# (height, width, per-channel RGB mean, per-channel RGB std) of imagecorruptions' frost1..frost5.
FROST_TEXTURES: tuple[tuple[int, int, tuple[float, float, float], tuple[float, float, float]], ...] = (
    (600, 900, (0.305, 0.585, 0.650), (0.106, 0.065, 0.060)),
    (315, 560, (0.787, 0.805, 0.841), (0.084, 0.087, 0.089)),
    (315, 560, (0.787, 0.805, 0.841), (0.084, 0.087, 0.089)),
    (350, 527, (0.540, 0.599, 0.648), (0.112, 0.112, 0.117)),
    (495, 660, (0.441, 0.484, 0.528), (0.174, 0.170, 0.163)),
)
# Weight of the fine grain per texture, calibrated once so that the full-size texture's mean
# absolute step between horizontal neighbours (of its grey level) equals the reference
# photograph's: 0.029, 0.031, 0.031, 0.052, 0.068.
_GRAIN = (0.487, 0.374, 0.384, 0.672, 0.460)
_SEED = 20261122


@functools.lru_cache(maxsize=4 * len(FROST_TEXTURES))
def frost_texture(index: int, scale: float = 1.0) -> Tensor:
    """Return frost texture ``index`` (0..4) as a float32 ``(3, H, W)`` CPU tensor in [0, 1] (cached).

    Generated on the CPU from a fixed seed, so it is identical on every machine and device.
    ``scale`` below 1 renders the same pattern directly at ``round(scale * size)`` pixels (the
    CIFAR-10-C variant shrinks the textures by 0.2), which is much cheaper than rendering the
    full size and shrinking it.

    Example:
        >>> frost_texture(1).shape, frost_texture(1, 0.2).shape
        (torch.Size([3, 315, 560]), torch.Size([3, 63, 112]))
    """
    full_height, full_width, mean, std = FROST_TEXTURES[index]
    height, width = max(1, round(full_height * scale)), max(1, round(full_width * scale))
    generator = torch.Generator().manual_seed(_SEED + index)
    octaves = (0.6**octave * _value_noise(height, width, 96 * scale / 2**octave, generator) for octave in range(5))
    cloud = cast(Tensor, sum(octaves))  # a sum of five tensors, never the empty sum's 0
    # Needles are drawn at half resolution (they are smooth at that scale) and enlarged.
    half = [_ridges((height + 1) // 2, (width + 1) // 2, scale, generator) for _ in range(3)]
    needles = F.interpolate(torch.stack(half).amax(dim=0)[None, None], scale_factor=2, mode="bilinear",
                            align_corners=False)[0, 0, :height, :width]
    grain = _value_noise(height, width, 1.5, generator)
    pattern = _standardised(0.6 * _standardised(cloud) + _standardised(needles) + _GRAIN[index] * _standardised(grain))
    colour = torch.tensor(mean).view(3, 1, 1) + torch.tensor(std).view(3, 1, 1) * pattern
    return colour.clamp(0, 1).contiguous()


def _standardised(t: Tensor) -> Tensor:
    return (t - t.mean()) / t.std().clamp(min=1e-12)


def _value_noise(height: int, width: int, cell: float, generator: torch.Generator) -> Tensor:
    """Return smooth random noise with features about ``cell`` pixels wide, shape ``(H, W)``."""
    cell = max(cell, 1.0)
    lattice = torch.rand(1, 1, math.ceil(height / cell) + 3, math.ceil(width / cell) + 3, generator=generator)
    size = (round(lattice.shape[-2] * cell), round(lattice.shape[-1] * cell))
    field = F.interpolate(lattice, size=size, mode="bicubic", align_corners=False)
    return field[0, 0, :height, :width]


def _ridges(height: int, width: int, scale: float, generator: torch.Generator) -> Tensor:
    """Return thin bright lines along one random direction: ridged, stretched noise."""
    angle = float(torch.rand((), generator=generator)) * math.pi
    # Feature lengths in half-resolution pixels at full size: long, narrow needles.
    along, across = 80.0 * scale, max(4.5 * scale, 1.0)
    lattice = torch.rand(1, 1, 64, 64, generator=generator)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    u = (xs * math.cos(angle) + ys * math.sin(angle)) / along
    v = (-xs * math.sin(angle) + ys * math.cos(angle)) / across
    grid = torch.stack([(u % 64) / 32 - 1, (v % 64) / 32 - 1], dim=-1)[None]
    field = F.grid_sample(lattice, grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0, 0]
    return (1 - (2 * field - 1).abs()).clamp(0, 1) ** 8
