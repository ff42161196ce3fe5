"""Weather corruptions of ImageNet-C: snow, frost, fog.

Each follows ``make_imagenet_c.py`` of hendrycks/robustness (``ImageNet-C/create_c``) as
packaged by bethgelab's ``imagecorruptions`` (``imagecorruptions/corruptions.py``), with the
ImageNet-C severity constants, and ``make_cifar_c.py`` for images of at most 64 pixels (see
:mod:`eval.corruptions._tables`). brightness, also a weather corruption in ImageNet-C's
grouping, lives in :mod:`eval.corruptions.digital`; spatter in :mod:`eval.corruptions.spatter`.

Deviations from the reference:
    - Randomness comes from ``torch`` with an explicit ``generator``: outputs equal the
      reference's in distribution, not bitwise.
    - snow blurs its flakes with imagecorruptions' numpy line kernel for both tables (the
      original scripts call ImageMagick's ``MotionBlurImage``).
    - frost overlays our own generated textures (:mod:`eval.corruptions._frost`), not the
      reference's photographs; see :func:`frost`.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from eval.corruptions._filters import clipped_zoom, luma, motion_blur_lines
from eval.corruptions._frost import FROST_TEXTURES, frost_texture
from eval.corruptions._tables import ResolvedTable, SeverityTable
from eval.corruptions._validate import validated

__all__ = ["FOG", "FROST", "SNOW", "fog", "frost", "plasma_fractal", "snow"]

# snow in make_imagenet_c.py / make_cifar_c.py: (flake mean, flake std, zoom, threshold,
# motion radius, motion sigma, weight of the original image).
SNOW = SeverityTable(
    imagenet=(
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ),
    cifar=(
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),
)  # fmt: skip
# frost in make_imagenet_c.py / make_cifar_c.py: (weight of the image, weight of the frost texture).
FROST = SeverityTable(
    imagenet=((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
    cifar=((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
)
# fog in make_imagenet_c.py / make_cifar_c.py: (fog strength, wibble decay of the plasma fractal).
FOG = SeverityTable(
    imagenet=((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
    cifar=((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
)
# make_cifar_c.py shrinks the frost photographs by 0.2 before cropping 32-pixel patches.
_CIFAR_FROST_SCALE = 0.2 / 32


@validated
def snow(x: Tensor, severity: int, *, generator: torch.Generator | None, table: ResolvedTable) -> Tensor:
    """Add motion-blurred snowflakes and whiten the image.

    As the reference: a Gaussian noise layer is enlarged by a centre zoom, thresholded into
    flakes, blurred along a line at a random angle in [-135, -45] degrees (falling snow),
    rounded to 1/255 steps, and added twice (once rotated by 180 degrees) to the image, which is
    first blended with ``max(x, 1.5 * grey + 0.5)``. Grey is OpenCV's BT.601 luma.

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Source of randomness, on the device of ``x``.
        table: ``"auto"``, ``"imagenet"`` or ``"cifar"`` (see :mod:`eval.corruptions._tables`).

    Returns:
        The snowy images, same shape, dtype and device as ``x``.
    """
    loc, scale, zoom, threshold, radius, sigma, keep = SNOW.get(table, severity)
    batch, _, height, width = x.shape
    flakes = torch.randn((batch, 1, height, width), generator=generator, device=x.device, dtype=x.dtype) * scale + loc
    flakes = clipped_zoom(flakes, zoom)
    flakes = torch.where(flakes < threshold, 0, flakes).clamp(0, 1)
    angles = torch.rand(batch, generator=generator, device=x.device, dtype=torch.float64) * 90 - 135
    flakes = torch.round(motion_blur_lines(flakes, radius, sigma, angles) * 255) / 255
    whitened = keep * x + (1 - keep) * torch.maximum(x, luma(x) * 1.5 + 0.5)
    return whitened + flakes + flakes.flip(-2, -1)


@validated
def frost(x: Tensor, severity: int, *, generator: torch.Generator | None, table: ResolvedTable) -> Tensor:
    """Blend the image with a random crop of a frost texture: ``a * x + b * texture``.

    As the reference, each image draws one of five textures and a uniformly random crop. For
    the ImageNet-C table the texture is enlarged (bicubic) only as far as needed to cover the
    image, times 1.1, as imagecorruptions does; for the CIFAR-10-C table it is rendered at
    ``0.2 * side / 32`` of its size (0.2 at 32 pixels, as ``make_cifar_c.py`` shrinks its
    photographs). A one-channel image gets the
    texture's BT.601 luma (imagecorruptions applies the RGB weights to OpenCV's BGR channels).

    NOTE(deviation): the textures are ours, generated procedurally and deterministically (see
    :mod:`eval.corruptions._frost`), with the sizes and per-channel mean and standard deviation
    of the reference's photographs, so the brightness and colour shift per severity match while
    the crystal patterns differ.

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Source of randomness (texture and crop), on the device of ``x``.
        table: ``"auto"``, ``"imagenet"`` or ``"cifar"`` (see :mod:`eval.corruptions._tables`).

    Returns:
        The frosted images, same shape, dtype and device as ``x``.
    """
    image_weight, frost_weight = FROST.get(table, severity)
    batch, channels, height, width = x.shape
    choice = torch.randint(len(FROST_TEXTURES), (batch,), generator=generator, device=x.device).tolist()
    corners = torch.rand((batch, 2), generator=generator, device=x.device, dtype=torch.float64).cpu()
    crops = []
    for index, (u, v) in zip(choice, corners.tolist(), strict=True):
        texture = _sized_texture(index, height, width, table)
        top = int(u * (texture.shape[-2] - height))
        left = int(v * (texture.shape[-1] - width))
        crops.append(texture[:, top : top + height, left : left + width])
    overlay = torch.stack(crops).to(device=x.device, dtype=x.dtype)
    if channels == 1:
        overlay = luma(overlay)
    return image_weight * x + frost_weight * overlay


@functools.lru_cache(maxsize=64)
def _sized_texture(index: int, height: int, width: int, table: ResolvedTable) -> Tensor:
    """Return texture ``index`` resized for ``(height, width)`` images, strictly larger than them (cached)."""
    tex_height, tex_width = FROST_TEXTURES[index][:2]
    if table == "cifar":
        shrink = _CIFAR_FROST_SCALE * max(height, width)
        if round(tex_height * shrink) > height and round(tex_width * shrink) > width:
            return frost_texture(index, shrink) if shrink < 1 else _resized(frost_texture(index), shrink)
    return _resized(frost_texture(index), max(1.0, height / tex_height, width / tex_width) * 1.1)


def _resized(texture: Tensor, scale: float) -> Tensor:
    """Return ``texture`` enlarged by ``scale`` (bicubic, as the reference's ``cv2.resize``)."""
    tex_height, tex_width = texture.shape[-2:]
    size = (math.ceil(tex_height * scale), math.ceil(tex_width * scale))
    return F.interpolate(texture[None], size=size, mode="bicubic", align_corners=False)[0].clamp(0, 1)


@validated
def fog(x: Tensor, severity: int, *, generator: torch.Generator | None, table: ResolvedTable) -> Tensor:
    """Add a plasma-fractal haze and compress the range: ``(x + a * fog) * m / (m + a)``.

    ``m`` is the image's maximum over all pixels and channels; the fractal's side is the next
    power of two of the larger image side (256 for ImageNet, 32 for CIFAR, as both scripts).

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Source of randomness, on the device of ``x``.
        table: ``"auto"``, ``"imagenet"`` or ``"cifar"`` (see :mod:`eval.corruptions._tables`).

    Returns:
        The foggy images, same shape, dtype and device as ``x``.
    """
    strength, decay = FOG.get(table, severity)
    batch, _, height, width = x.shape
    side = 1 << (max(height, width) - 1).bit_length()
    haze = plasma_fractal(batch, side, decay, generator=generator, device=x.device)[:, None, :height, :width]
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + strength * haze.to(x.dtype)) * peak / (peak + strength)


def plasma_fractal(
    batch: int, side: int, decay: float, *, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Return ``batch`` diamond-square height maps of ``side x side`` pixels, each scaled to [0, 1].

    The reference's ``plasma_fractal``: corners start at 0; each level sets square centres to the
    mean of their 4 corners and diamond centres to the mean of their 4 neighbours (wrapping
    around), plus uniform noise of amplitude ``wibble^2``, with ``wibble`` starting at 100 and
    divided by ``decay`` per level. Vectorised over the batch.

    Args:
        batch: Number of maps.
        side: A power of two.
        decay: The wibble decay (larger: smoother).
        generator: Source of randomness, on ``device``.
        device: Where the maps are built.

    Returns:
        Float32 maps, shape ``(batch, side, side)``, each with minimum 0 and maximum 1.

    Example:
        >>> maps = plasma_fractal(2, 32, 2.0, generator=torch.Generator().manual_seed(0))
        >>> maps.shape, float(maps.amin()), float(maps.amax())
        (torch.Size([2, 32, 32]), 0.0, 1.0)
    """
    if side < 2 or side & (side - 1):
        raise ValueError(f"plasma_fractal: side must be a power of two >= 2, got {side}")
    grid = torch.zeros(batch, side, side, device=device)
    step, wibble = side, 100.0

    def wibbled(total: Tensor) -> Tensor:
        noise = torch.rand(total.shape, generator=generator, device=device) * (2 * wibble) - wibble
        return total / 4 + wibble * noise

    while step >= 2:
        half = step // 2
        corners = grid[:, ::step, ::step]
        squares = corners + corners.roll(-1, dims=1)
        grid[:, half::step, half::step] = wibbled(squares + squares.roll(-1, dims=2))
        centres, corners = grid[:, half::step, half::step], grid[:, ::step, ::step]
        grid[:, ::step, half::step] = wibbled(centres + centres.roll(1, dims=1) + corners + corners.roll(-1, dims=2))
        grid[:, half::step, ::step] = wibbled(centres + centres.roll(1, dims=2) + corners + corners.roll(-1, dims=1))
        step, wibble = half, wibble / decay
    low = grid.amin(dim=(1, 2), keepdim=True)
    high = grid.amax(dim=(1, 2), keepdim=True)
    return (grid - low) / (high - low).clamp(min=torch.finfo(grid.dtype).tiny)
