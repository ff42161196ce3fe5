"""Photometric and digital corruptions of ImageNet-C.

brightness, contrast, elastic_transform, pixelate, jpeg_compression and the held-out saturate.
Each follows ``make_imagenet_c.py`` of hendrycks/robustness (``ImageNet-C/create_c``), packaged
as ``imagecorruptions/corruptions.py`` by bethgelab, with the same severity constants, and
``make_cifar_c.py`` for images of at most 64 pixels (see :mod:`eval.corruptions._tables`). In
ImageNet-C's grouping brightness is a "weather" corruption; it lives here with the other
per-pixel photometric ones.

Deviations from the reference:
    - Inputs and outputs stay float; the reference works on uint8 PIL images and rounds between
      steps (pixelate's two resizes, the saved result). jpeg_compression quantises by nature.
    - pixelate scales with the actual image size (as imagecorruptions does); the original script
      hard-codes ImageNet's 224. It upsamples with BOX like the original script, where
      imagecorruptions uses NEAREST; the two differ only at exact half-way samples.
    - elastic_transform is the original script's (a random affine warp, then a smoothed random
      displacement field); imagecorruptions 1.1.2 ships a different one without the affine
      step and with other constants. Its resampling is bilinear without OpenCV's 1/32-pixel
      quantisation of ``warpAffine`` coordinates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from eval.corruptions._filters import gaussian_filter
from eval.corruptions._jpeg import jpeg_round_trip
from eval.corruptions._resize import box_pixelate
from eval.corruptions._tables import ResolvedTable, SeverityTable
from eval.corruptions._validate import validated, validated_per_image

__all__ = [
    "BRIGHTNESS_SHIFT",
    "CONTRAST_FACTOR",
    "ELASTIC_TRANSFORM",
    "JPEG_QUALITY",
    "PIXELATE_SCALE",
    "SATURATE",
    "brightness",
    "contrast",
    "elastic_transform",
    "jpeg_compression",
    "pixelate",
    "saturate",
]

# brightness in make_imagenet_c.py / make_cifar_c.py: amount added to the HSV value channel.
BRIGHTNESS_SHIFT = SeverityTable(imagenet=(0.1, 0.2, 0.3, 0.4, 0.5), cifar=(0.05, 0.1, 0.15, 0.2, 0.3))
# contrast in make_imagenet_c.py / make_cifar_c.py: factor on the deviation from the channel mean.
CONTRAST_FACTOR = SeverityTable(imagenet=(0.4, 0.3, 0.2, 0.1, 0.05), cifar=(0.75, 0.5, 0.4, 0.3, 0.15))
# pixelate in make_imagenet_c.py / make_cifar_c.py: downsampled side relative to the original.
PIXELATE_SCALE = SeverityTable(imagenet=(0.6, 0.5, 0.4, 0.3, 0.25), cifar=(0.95, 0.9, 0.85, 0.75, 0.65))
# jpeg_compression in make_imagenet_c.py / make_cifar_c.py: JPEG quality passed to the encoder.
JPEG_QUALITY = SeverityTable(imagenet=(25, 18, 15, 10, 7), cifar=(80, 65, 58, 50, 40))
# saturate in make_imagenet_c.py / make_cifar_c.py: HSV saturation becomes clip(s * a + b).
SATURATE = SeverityTable(
    imagenet=((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),
    cifar=((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
)
# elastic_transform in make_imagenet_c.py (multiples of "244") / make_cifar_c.py (multiples of
# IMSIZE = 32): (alpha: displacement scale, sigma: smoothing, affine jitter of the three anchor
# points), as fractions of the image side; ImageNet-C's are multiplied by side * 244 / 224
# (244 at 224 pixels, as the script), CIFAR-10-C's by the side (32 at 32 pixels).
ELASTIC_TRANSFORM = SeverityTable(
    imagenet=((2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02), (0.12, 0.01, 0.02)),
    cifar=((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
)


@validated
def brightness(x: Tensor, severity: int, *, generator: torch.Generator | None, table: ResolvedTable) -> Tensor:
    """Raise the HSV value by the table's ``BRIGHTNESS_SHIFT``, keeping hue and saturation.

    The reference converts to HSV, adds the shift to V, clips and converts back. At fixed hue and
    saturation RGB is proportional to ``V = max(R, G, B)``, so this is computed in closed form as
    ``x * V' / V`` with ``V' = min(V + shift, 1)``; black pixels (V = 0) become gray ``V'``. For
    one channel it is ``clip(x + shift)``, as imagecorruptions does for grayscale.

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Unused (the corruption is deterministic); kept for the uniform signature.
        table: ``"auto"``, ``"imagenet"`` or ``"cifar"`` (see :mod:`eval.corruptions._tables`).

    Returns:
        The brightened images, same shape, dtype and device as ``x``.

    Example:
        >>> x = torch.tensor([0.2, 0.1, 0.0]).view(1, 3, 1, 1).expand(1, 3, 28, 28)
        >>> brightness(x, 1, table="imagenet")[0, :, 0, 0]
        tensor([0.3000, 0.1500, 0.0000])
    """
    shift = BRIGHTNESS_SHIFT.get(table, severity)
    if x.shape[1] == 1:
        return x + shift
    value = x.amax(dim=1, keepdim=True)
    new_value = (value + shift).clamp(max=1)
    scaled = x * (new_value / value.clamp(min=torch.finfo(x.dtype).tiny))
    return torch.where(value > 0, scaled, new_value)


@validated
def contrast(x: Tensor, severity: int, *, generator: torch.Generator | None, table: ResolvedTable) -> Tensor:
    """Shrink each channel toward its mean over the image by the table's ``CONTRAST_FACTOR``.

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Unused (the corruption is deterministic); kept for the uniform signature.
        table: ``"auto"``, ``"imagenet"`` or ``"cifar"`` (see :mod:`eval.corruptions._tables`).

    Returns:
        ``(x - mean) * c + mean`` with per-image, per-channel means, same shape, dtype and device.
    """
    factor = CONTRAST_FACTOR.get(table, severity)
    means = x.mean(dim=(-2, -1), keepdim=True)
    return (x - means) * factor + means


@validated
def pixelate(x: Tensor, severity: int, *, generator: torch.Generator | None, table: ResolvedTable) -> Tensor:
    """Downsample with PIL's BOX filter to ``int(side * c)`` and upsample back with BOX.

    ``c = PIXELATE_SCALE`` scales the actual height and width (with the ImageNet-C table 28x28
    becomes 16x16 at severity 1 and 7x7 at severity 5). PIL's BOX resampling is reproduced exactly (the
    coefficients of Pillow's ``precompute_coeffs``): each downsampled pixel is the mean of a
    window of whole input pixels and each upsampled pixel reads exactly one downsampled pixel,
    computed with row sums, column window sums and gathers
    (:func:`eval.corruptions._resize.box_pixelate`); no uint8 rounding happens between the
    passes. The upsampling uses BOX as the original script does;
    imagecorruptions uses NEAREST, which picks the other neighbour where a sample falls exactly
    between two pixels (for 28x28, one row and column in seven at severities 1 and 4).

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Unused (the corruption is deterministic); kept for the uniform signature.
        table: ``"auto"``, ``"imagenet"`` or ``"cifar"`` (see :mod:`eval.corruptions._tables`).

    Returns:
        The pixelated images, same shape, dtype and device as ``x``.
    """
    scale = PIXELATE_SCALE.get(table, severity)
    height, width = x.shape[-2:]
    return box_pixelate(x, int(height * scale), int(width * scale))


@validated_per_image
def jpeg_compression(x: Tensor, severity: int, *, generator: torch.Generator | None, table: ResolvedTable) -> Tensor:
    """Encode as JPEG at the table's ``JPEG_QUALITY`` and decode again.

    Values are rounded (half to even) to uint8 and interleaved to ``(H, W, C)``. The images go
    through libjpeg on the CPU with ``torchvision.io.encode_jpeg``/``decode_jpeg``, which produce
    the same bytes and pixels as the reference's PIL save and load (RGB stored as YCbCr with 4:2:0
    chroma subsampling; checked against PIL in the tests) without PIL's per-image overhead; a CPU
    batch is split over torch's intra-op threads (:mod:`eval.corruptions._jpeg`). A one-channel image is saved as a grayscale JPEG;
    imagecorruptions converts it to RGB, compresses and converts back, which quantises luma with
    the same table (the results agreed exactly in our comparisons).

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Unused (the corruption is deterministic); kept for the uniform signature.
        table: ``"auto"``, ``"imagenet"`` or ``"cifar"`` (see :mod:`eval.corruptions._tables`).

    Returns:
        The decoded images in multiples of 1/255, same shape, dtype and device as ``x``.
    """
    return jpeg_round_trip(x, JPEG_QUALITY.get(table, severity))


@validated
def saturate(x: Tensor, severity: int, *, generator: torch.Generator | None, table: ResolvedTable) -> Tensor:
    """Scale the HSV saturation: ``s' = clip(s * a + b, 0, 1)`` with ``(a, b)`` from ``SATURATE``.

    Computed in closed form: at fixed hue and value ``V = max(R, G, B)`` each channel is
    ``V - (V - c) * s' / s``. Grey pixels (``s = 0``) get hue 0 (red) as in scikit-image, so
    ``b > 0`` tints them red: ``(V, V (1 - s'), V (1 - s'))``. A one-channel image is returned
    unchanged, as imagecorruptions does (it keeps the red channel of the grey RGB image, which is
    the value channel).

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Unused (the corruption is deterministic); kept for the uniform signature.
        table: ``"auto"``, ``"imagenet"`` or ``"cifar"`` (see :mod:`eval.corruptions._tables`).

    Returns:
        The re-saturated images, same shape, dtype and device as ``x``.

    Example:
        >>> x = torch.tensor([0.8, 0.4, 0.2]).view(1, 3, 1, 1).expand(1, 3, 28, 28)
        >>> saturate(x, 2, table="imagenet")[0, :, 0, 0]
        tensor([0.8000, 0.7600, 0.7400])
    """
    gain, offset = SATURATE.get(table, severity)
    if x.shape[1] == 1:
        return x.clone()
    value = x.amax(dim=1, keepdim=True)
    spread = value - x.amin(dim=1, keepdim=True)
    saturation = torch.where(value > 0, spread / value.clamp(min=torch.finfo(x.dtype).tiny), 0)
    new_saturation = (saturation * gain + offset).clamp(0, 1)
    ratio = new_saturation / saturation.clamp(min=torch.finfo(x.dtype).tiny)
    coloured = value - (value - x) * ratio
    red = torch.tensor([0.0, 1.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    grey = value * (1 - new_saturation * red)
    return torch.where(spread > 0, coloured, grey)


@validated
def elastic_transform(x: Tensor, severity: int, *, generator: torch.Generator | None, table: ResolvedTable) -> Tensor:
    """Warp by a random affine map, then by a smooth random displacement field.

    As the original script: three anchor points around the centre (``side // 3`` away) are
    jittered uniformly by up to ``affine`` pixels and the image follows the affine map between
    them (bilinear, reflect-101 border, as OpenCV's ``warpAffine``); then two fields of uniform
    noise in [-1, 1] are smoothed by a Gaussian of ``sigma`` pixels (truncated at 3 sigma,
    half-sample symmetric border), scaled by ``alpha`` and used as per-pixel displacements
    (bilinear, half-sample symmetric border, as SciPy's ``map_coordinates``). The constants are
    ``ELASTIC_TRANSFORM`` fractions times the image side (see there).

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Source of randomness, on the device of ``x``.
        table: ``"auto"``, ``"imagenet"`` or ``"cifar"`` (see :mod:`eval.corruptions._tables`).

    Returns:
        The warped images, same shape, dtype and device as ``x``.
    """
    batch, _, height, width = x.shape
    side = min(height, width) * (244 / 224 if table == "imagenet" else 1)
    alpha, sigma, jitter = (fraction * side for fraction in ELASTIC_TRANSFORM.get(table, severity))
    rows = torch.arange(height, device=x.device, dtype=x.dtype)[:, None].expand(height, width)
    cols = torch.arange(width, device=x.device, dtype=x.dtype)[None, :].expand(height, width)
    source_x, source_y = _affine_sources(x, jitter, generator)
    warped = _sample(x, source_x, source_y, align_corners=True)
    noise = torch.rand((2, batch, 1, height, width), generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
    if alpha == 0:
        return warped
    dx, dy = gaussian_filter(noise, sigma, truncate=3.0, mode="reflect").mul(alpha)[:, :, 0]
    return _sample(warped, cols + dx, rows + dy, align_corners=False)


def _affine_sources(x: Tensor, jitter: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Return, for each output pixel, the source ``(x, y)`` of the reference's random affine warp.

    The anchors are the script's ``center + square_size`` points, written in OpenCV's ``(x, y)``
    order from ``(H // 2, W // 2)`` as the script does; each image gets its own jitter.
    """
    batch, _, height, width = x.shape
    centre_a, centre_b, square = height // 2, width // 2, min(height, width) // 3
    anchors = torch.tensor(
        [[centre_a + square, centre_b + square], [centre_a + square, centre_b - square],
         [centre_a - square, centre_b - square]], dtype=torch.float64,
    )  # fmt: skip
    moves = torch.rand((batch, 3, 2), generator=generator, device=x.device, dtype=torch.float64)
    moved = anchors + (moves.cpu() * 2 - 1) * jitter
    # Solve [moved | 1] @ inverse = anchors: the map from output pixels back to source pixels.
    inverse = torch.linalg.solve(torch.cat([moved, torch.ones(batch, 3, 1, dtype=torch.float64)], dim=2), anchors)
    inverse = inverse.to(device=x.device, dtype=x.dtype)
    grid_y, grid_x = torch.meshgrid(
        torch.arange(height, device=x.device, dtype=x.dtype), torch.arange(width, device=x.device, dtype=x.dtype),
        indexing="ij",
    )
    homogeneous = torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], dim=-1).reshape(1, -1, 3)
    sources = (homogeneous @ inverse).reshape(batch, height, width, 2)
    return sources[..., 0], sources[..., 1]


def _sample(x: Tensor, source_x: Tensor, source_y: Tensor, *, align_corners: bool) -> Tensor:
    """Bilinearly sample ``x`` at pixel coordinates with a reflecting border.

    With ``align_corners=True`` the border reflects about the edge pixels' centres (OpenCV's
    reflect-101); with ``False`` about the image edges (SciPy's ``reflect``).
    """
    height, width = x.shape[-2:]
    if align_corners:
        grid_x, grid_y = source_x * (2 / max(width - 1, 1)) - 1, source_y * (2 / max(height - 1, 1)) - 1
    else:
        grid_x, grid_y = (2 * source_x + 1) / width - 1, (2 * source_y + 1) / height - 1
    # torch.broadcast_tensors has no annotations in torch's sources.
    grid_x, grid_y = torch.broadcast_tensors(grid_x, grid_y)  # type: ignore[no-untyped-call]
    grid = torch.stack((grid_x, grid_y), dim=-1).expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=align_corners)
