"""Blur corruptions of ImageNet-C: defocus_blur, glass_blur, motion_blur, zoom_blur, gaussian_blur.

Follows ``make_imagenet_c.py`` of hendrycks/robustness (``ImageNet-C/create_c``) as packaged by
bethgelab's ``imagecorruptions`` (``imagecorruptions/corruptions.py``), with the ImageNet-C
severity constants, and ``make_cifar_c.py`` for images of at most 64 pixels (see
:mod:`eval.corruptions._tables`). OpenCV's and SciPy's filters are reproduced in torch by
:mod:`eval.corruptions._filters`.

Deviations from the reference:
    - Inputs and outputs stay float; glass_blur alone truncates to 1/255 steps between its two
      blurs, as the reference does.
    - glass_blur resolves the reference's sequential pixel moves by pointer jumping instead of
      a per-pixel loop (same result for the same offsets; see :func:`glass_blur`).
    - motion_blur follows imagecorruptions' numpy line kernel (the original script calls
      ImageMagick's ``MotionBlurImage``), for both tables.
    - zoom_blur crops the enlarged image from its top-left corner as imagecorruptions does; the
      original script trims the overflow evenly from both sides (at most one pixel apart).
    - The blur kernels keep the reference's sizes in pixels at every image size; the table
      (ImageNet-C or CIFAR-10-C) is what adapts them to small images.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from eval.corruptions._filters import add_clipped_zooms_, filter2d_reflect101, gaussian_filter, motion_blur_lines
from eval.corruptions._tables import ResolvedTable, SeverityTable
from eval.corruptions._validate import validated

__all__ = [
    "DEFOCUS_BLUR_DISK",
    "GAUSSIAN_BLUR_SIGMA",
    "GLASS_BLUR",
    "MOTION_BLUR",
    "ZOOM_BLUR_FACTORS",
    "defocus_blur",
    "gaussian_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
]

# defocus_blur in make_imagenet_c.py / make_cifar_c.py: (disk radius in pixels, alias_blur sigma).
DEFOCUS_BLUR_DISK = SeverityTable(
    imagenet=((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    cifar=((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
)
# glass_blur in make_imagenet_c.py / make_cifar_c.py: (sigma, max_delta, iterations).
GLASS_BLUR = SeverityTable(
    imagenet=((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
    cifar=((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
)
# motion_blur in make_imagenet_c.py / make_cifar_c.py: (radius, sigma) of the line kernel.
MOTION_BLUR = SeverityTable(
    imagenet=((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
    cifar=((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
)
# zoom_blur in make_imagenet_c.py / make_cifar_c.py: zoom factors, with numpy.arange's float endpoints.
ZOOM_BLUR_FACTORS = SeverityTable(
    imagenet=tuple(
        tuple(float(z) for z in np.arange(1, stop, step))
        for stop, step in ((1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03))
    ),
    cifar=tuple(tuple(float(z) for z in np.arange(1, stop, 0.01)) for stop in (1.06, 1.11, 1.16, 1.21, 1.26)),
)
# gaussian_blur in make_imagenet_c.py / make_cifar_c.py: standard deviation in pixels.
GAUSSIAN_BLUR_SIGMA = SeverityTable(imagenet=(1, 2, 3, 4, 6), cifar=(0.4, 0.6, 0.7, 0.8, 1))


@validated
def defocus_blur(x: Tensor, severity: int, *, generator: torch.Generator | None, table: ResolvedTable) -> Tensor:
    """Blur with an anti-aliased disk, the point-spread function of an out-of-focus lens.

    At ImageNet-C severities 4 and 5 the disk touches the edge of its grid and the reference's
    kernel sums to about 1.01 (see :func:`_disk_kernel`), so flat regions get about 1% brighter;
    kept as is.

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5 (ImageNet-C disk radius 3, 4, 6, 8, 10 pixels;
            CIFAR-10-C 0.3 to 1.5).
        generator: Unused (the corruption is deterministic); kept for the uniform signature.
        table: ``"auto"``, ``"imagenet"`` or ``"cifar"`` (see :mod:`eval.corruptions._tables`).

    Returns:
        The blurred images, same shape, dtype and device as ``x``.

    Example:
        >>> defocus_blur(torch.full((1, 3, 28, 28), 0.25), 2).sub(0.25).abs().max() < 1e-6
        tensor(True)
    """
    radius, alias_blur = DEFOCUS_BLUR_DISK.get(table, severity)
    kernel = _trimmed(_disk_kernel(radius, alias_blur)).to(device=x.device, dtype=x.dtype)
    return filter2d_reflect101(x, kernel)


@functools.lru_cache(maxsize=16)
def _disk_kernel(radius: float, alias_blur: float) -> Tensor:
    """Return the reference's anti-aliased disk kernel in float64.

    An aliased disk ``x^2 + y^2 <= radius^2`` on a grid of half-width ``max(8, radius)``, divided
    by its sum, then blurred by OpenCV's ``GaussianBlur`` with a 3x3 kernel (5x5 if the radius
    exceeds 8) of standard deviation ``alias_blur``, whose reflect-101 border folds mass back in
    where the disk touches the grid edge (radius 8 and 10): those kernels sum to 1.013 and 1.011,
    exactly as the reference's. The returned tensor is cached: do not modify it.
    """
    half = int(max(8, radius))
    coords = torch.arange(-half, half + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    aliased = (xx**2 + yy**2 <= radius**2).to(torch.float64)
    aliased /= aliased.sum()
    gauss = _cv2_gaussian_kernel(3 if radius <= 8 else 5, alias_blur)
    return filter2d_reflect101(aliased[None, None], torch.outer(gauss, gauss))[0, 0]


def _trimmed(kernel: Tensor) -> Tensor:
    """Return the centred square part of a symmetric kernel outside which all weights are zero."""
    half = kernel.shape[-1] // 2
    nonzero = kernel.abs().amax(dim=0) > 0
    reach = int((torch.arange(-half, half + 1)[nonzero]).abs().max()) if bool(nonzero.any()) else 0
    return kernel[half - reach : half + reach + 1, half - reach : half + reach + 1]


def _cv2_gaussian_kernel(ksize: int, sigma: float) -> Tensor:
    """Return OpenCV's ``getGaussianKernel(ksize, sigma)`` for ``sigma > 0``, in float64."""
    offsets = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    weights = torch.exp(-0.5 / (sigma * sigma) * offsets**2)
    return weights / weights.sum()


@validated
def glass_blur(x: Tensor, severity: int, *, generator: torch.Generator | None, table: ResolvedTable) -> Tensor:
    """Blur, scramble pixels locally, and blur again: the look of frosted glass.

    As the reference: a Gaussian blur (scikit-image, ``sigma``), truncation to 1/255 steps (its
    ``np.uint8``), ``iterations`` passes of local pixel moves, and the same blur again. A pass
    visits rows and columns ``max_delta + 1 .. side - max_delta`` in reverse raster order and
    draws an offset ``(dy, dx)``, each uniform in ``-max_delta .. max_delta - 1``, per pixel.

    The reference means to swap each visited pixel with the one at its offset, but on an
    ``(H, W, 3)`` array its tuple assignment copies: the visited pixel takes the value at the
    offset and the other pixel keeps its own. That is what made ImageNet-C and CIFAR-10-C, and it
    is what is computed here, exactly, without the reference's per-pixel Python loop: pixel ``p``
    ends with the value of ``p + o_p`` after that pixel's own move when ``p + o_p`` was visited
    earlier (it comes later in raster order), else with its value before the pass. These chains
    are resolved by pointer jumping, in ``log2`` of their length vectorised steps. One-channel
    inputs are treated the same way (on a 2-D array the reference's assignment happens to swap).

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Source of randomness, on the device of ``x``.
        table: ``"auto"``, ``"imagenet"`` or ``"cifar"`` (see :mod:`eval.corruptions._tables`).

    Returns:
        The corrupted images, same shape, dtype and device as ``x``.
    """
    sigma, delta, iterations = GLASS_BLUR.get(table, severity)
    batch, _, height, width = x.shape
    scrambled = torch.floor(gaussian_filter(x, sigma) * 255) / 255
    visited = (max(height - 2 * delta, 0), max(width - 2 * delta, 0))
    for _ in range(iterations):
        offsets = torch.randint(-delta, delta, (2, batch, *visited), generator=generator, device=x.device)
        scrambled = _apply_moves(scrambled, delta, offsets[0], offsets[1])
    return gaussian_filter(scrambled, sigma)


def _apply_moves(x: Tensor, delta: int, dy: Tensor, dx: Tensor) -> Tensor:
    """Return one pass of the reference's in-place moves ``x[p] = x[p + (dy_p, dx_p)]``, exactly.

    Args:
        x: Batch ``(B, C, H, W)``.
        delta: The visited pixels are rows and columns ``delta + 1 .. side - delta``.
        dy: Row offsets of the visited pixels, ``(B, H - 2 delta, W - 2 delta)``.
        dx: Column offsets, same shape.
    """
    batch, channels, height, width = x.shape
    if dy.numel() == 0:
        return x
    rows = torch.arange(delta + 1, height - delta + 1, device=x.device)[:, None]
    cols = torch.arange(delta + 1, width - delta + 1, device=x.device)[None, :]
    here = (rows * width + cols).reshape(1, -1)  # raster index of each visited pixel
    there = ((rows + dy) * width + (cols + dx)).reshape(batch, -1)
    target_row, target_col = rows + dy, cols + dx
    target_visited = ((target_row > delta) & (target_row <= height - delta) & (target_col > delta)
                      & (target_col <= width - delta)).reshape(batch, -1)
    # Raster index grows along the visiting order's reverse: a larger target was moved already.
    follows = target_visited & (there > here)
    source = torch.arange(height * width, device=x.device).repeat(batch, 1)
    source[:, here[0]] = there
    pointer = torch.arange(height * width, device=x.device).repeat(batch, 1)
    pointer[:, here[0]] = torch.where(follows, there, here.expand(batch, -1))
    while True:
        jumped = pointer.gather(1, pointer)
        if torch.equal(jumped, pointer):
            break
        pointer = jumped
    final = source.gather(1, pointer)
    flat = x.reshape(batch, channels, -1)
    return flat.gather(2, final[:, None, :].expand(-1, channels, -1)).reshape(x.shape)


@validated
def motion_blur(x: Tensor, severity: int, *, generator: torch.Generator | None, table: ResolvedTable) -> Tensor:
    """Blur along a line at a random angle in [-45, 45] degrees, one angle per image.

    imagecorruptions' formulation of ImageMagick's motion blur: ``2 * radius + 1`` shifted
    copies with half-Gaussian weights (see :func:`eval.corruptions._filters.motion_blur_lines`).

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Source of randomness (the angles), on the device of ``x``.
        table: ``"auto"``, ``"imagenet"`` or ``"cifar"`` (see :mod:`eval.corruptions._tables`).

    Returns:
        The blurred images, same shape, dtype and device as ``x``.
    """
    radius, sigma = MOTION_BLUR.get(table, severity)
    angles = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=torch.float64) * 90 - 45
    return motion_blur_lines(x, radius, sigma, angles)


@validated
def zoom_blur(x: Tensor, severity: int, *, generator: torch.Generator | None, table: ResolvedTable) -> Tensor:
    """Average the image with centre zooms of it by each factor of ``ZOOM_BLUR_FACTORS``.

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Unused (the corruption is deterministic); kept for the uniform signature.
        table: ``"auto"``, ``"imagenet"`` or ``"cifar"`` (see :mod:`eval.corruptions._tables`).

    Returns:
        ``(x + sum_z zoom(x, z)) / (n + 1)``, same shape, dtype and device as ``x``.
    """
    factors = ZOOM_BLUR_FACTORS.get(table, severity)
    return add_clipped_zooms_(x.clone(), x, factors).div_(len(factors) + 1)


@validated
def gaussian_blur(x: Tensor, severity: int, *, generator: torch.Generator | None, table: ResolvedTable) -> Tensor:
    """Blur with scikit-image's Gaussian filter (edge-replicating border, radius 4 sigma).

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5 (sigma 1, 2, 3, 4, 6 pixels; CIFAR-10-C 0.4 to 1).
        generator: Unused (the corruption is deterministic); kept for the uniform signature.
        table: ``"auto"``, ``"imagenet"`` or ``"cifar"`` (see :mod:`eval.corruptions._tables`).

    Returns:
        The blurred images, same shape, dtype and device as ``x``.
    """
    return gaussian_filter(x, GAUSSIAN_BLUR_SIGMA.get(table, severity))
