"""Photometric and digital corruptions of ImageNet-C: brightness, contrast, pixelate, jpeg_compression.

Each follows ``make_imagenet_c.py`` of hendrycks/robustness (``ImageNet-C/create_c``), packaged
as ``imagecorruptions/corruptions.py`` by bethgelab, with the same severity constants. In
ImageNet-C's grouping brightness is a "weather" corruption; it lives here with the other
per-pixel photometric ones.

Deviations from the reference:
    - Inputs and outputs stay float; the reference works on uint8 PIL images and rounds between
      steps (pixelate's two resizes, the saved result). jpeg_compression quantises by nature.
    - pixelate scales with the actual image size (as imagecorruptions does); the original script
      hard-codes ImageNet's 224. It upsamples with BOX like the original script, where
      imagecorruptions uses NEAREST; the two differ only at exact half-way samples.
"""

from __future__ import annotations

import functools
import io

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from eval.corruptions._validate import validated

__all__ = [
    "BRIGHTNESS_SHIFT",
    "CONTRAST_FACTOR",
    "JPEG_QUALITY",
    "PIXELATE_SCALE",
    "brightness",
    "contrast",
    "jpeg_compression",
    "pixelate",
]

# make_imagenet_c.py, brightness: amount added to the HSV value channel.
BRIGHTNESS_SHIFT = (0.1, 0.2, 0.3, 0.4, 0.5)
# make_imagenet_c.py, contrast: factor applied to the deviation from the per-channel mean.
CONTRAST_FACTOR = (0.4, 0.3, 0.2, 0.1, 0.05)
# make_imagenet_c.py, pixelate: side of the downsampled image relative to the original.
PIXELATE_SCALE = (0.6, 0.5, 0.4, 0.3, 0.25)
# make_imagenet_c.py, jpeg_compression: JPEG quality passed to the encoder.
JPEG_QUALITY = (25, 18, 15, 10, 7)


@validated
def brightness(x: Tensor, severity: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Raise the HSV value by ``BRIGHTNESS_SHIFT[severity - 1]``, keeping hue and saturation.

    The reference converts to HSV, adds the shift to V, clips and converts back. At fixed hue and
    saturation RGB is proportional to ``V = max(R, G, B)``, so this is computed in closed form as
    ``x * V' / V`` with ``V' = min(V + shift, 1)``; black pixels (V = 0) become gray ``V'``. For
    one channel it is ``clip(x + shift)``, as imagecorruptions does for grayscale.

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Unused (the corruption is deterministic); kept for the uniform signature.

    Returns:
        The brightened images, same shape, dtype and device as ``x``.

    Example:
        >>> x = torch.tensor([0.2, 0.1, 0.0]).view(1, 3, 1, 1).expand(1, 3, 28, 28)
        >>> brightness(x, 1)[0, :, 0, 0]
        tensor([0.3000, 0.1500, 0.0000])
    """
    shift = BRIGHTNESS_SHIFT[severity - 1]
    if x.shape[1] == 1:
        return x + shift
    value = x.amax(dim=1, keepdim=True)
    new_value = (value + shift).clamp(max=1)
    scaled = x * (new_value / value.clamp(min=torch.finfo(x.dtype).tiny))
    return torch.where(value > 0, scaled, new_value)


@validated
def contrast(x: Tensor, severity: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Shrink each channel toward its mean over the image by ``CONTRAST_FACTOR[severity - 1]``.

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Unused (the corruption is deterministic); kept for the uniform signature.

    Returns:
        ``(x - mean) * c + mean`` with per-image, per-channel means, same shape, dtype and device.
    """
    factor = CONTRAST_FACTOR[severity - 1]
    means = x.mean(dim=(-2, -1), keepdim=True)
    return (x - means) * factor + means


@validated
def pixelate(x: Tensor, severity: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Downsample with PIL's BOX filter to ``int(side * c)`` and upsample back with BOX.

    ``c = PIXELATE_SCALE[severity - 1]`` scales the actual height and width (28x28 becomes 16x16
    at severity 1 and 7x7 at severity 5). PIL's BOX resampling is reproduced exactly (the
    coefficients of Pillow's ``precompute_coeffs``) and both resizes are folded into one
    ``(H, H)`` and one ``(W, W)`` matrix, applied as two matrix products; no uint8 rounding
    happens between the passes. The upsampling uses BOX as the original script does;
    imagecorruptions uses NEAREST, which picks the other neighbour where a sample falls exactly
    between two pixels (for 28x28, one row and column in seven at severities 1 and 4).

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Unused (the corruption is deterministic); kept for the uniform signature.

    Returns:
        The pixelated images, same shape, dtype and device as ``x``.
    """
    scale = PIXELATE_SCALE[severity - 1]
    height, width = x.shape[-2:]
    rows = _pixelate_matrix(height, int(height * scale)).to(x)
    cols = _pixelate_matrix(width, int(width * scale)).to(x)
    return rows @ x @ cols.T


@validated
def jpeg_compression(x: Tensor, severity: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Save as JPEG at quality ``JPEG_QUALITY[severity - 1]`` with PIL and load again.

    Values are rounded to uint8 first. Each image goes through PIL's libjpeg encoder and decoder
    on the CPU, exactly as the reference does (RGB is stored as YCbCr with PIL's default 4:2:0
    chroma subsampling); the result returns to the input's device. A one-channel image is saved
    as a grayscale JPEG; imagecorruptions converts it to RGB, compresses and converts back, which
    quantises luma with the same table (the results agreed exactly in our comparisons).

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Unused (the corruption is deterministic); kept for the uniform signature.

    Returns:
        The decoded images in multiples of 1/255, same shape, dtype and device as ``x``.
    """
    quality = JPEG_QUALITY[severity - 1]
    images = (x * 255).round().to(device="cpu", dtype=torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    decoded = np.stack([_jpeg_round_trip(image, quality) for image in images])
    return torch.from_numpy(decoded).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype) / 255


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """Return a uint8 ``(H, W, C)`` image (C 1 or 3) after a JPEG save and load with PIL."""
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded).reshape(image.shape)


@functools.lru_cache(maxsize=64)
def _pixelate_matrix(size: int, small: int) -> Tensor:
    """Return the ``(size, size)`` float64 operator of a BOX resize to ``small`` and back (cached)."""
    return _box_resize_matrix(small, size) @ _box_resize_matrix(size, small)


def _box_resize_matrix(in_size: int, out_size: int) -> Tensor:
    """Return Pillow's BOX resampling coefficients as an ``(out_size, in_size)`` float64 matrix.

    As ``precompute_coeffs`` in Pillow's ``libImaging/Resample.c``: output pixel ``i`` samples
    around ``center = (i + 0.5) * scale``; the box filter (1 on ``(-0.5, 0.5]``) is stretched by
    ``max(scale, 1)`` when downsampling, evaluated at input pixel centres inside the rounded
    support window ``[int(center - support + 0.5), int(center + support + 0.5))``, and each row
    is normalised to sum 1. The arithmetic is done in the same order as Pillow's, in float64.
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
