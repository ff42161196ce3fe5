"""The held-out spatter corruption of ImageNet-C: water drops (severities 1-3) or mud (4-5).

Follows ``spatter`` of ``make_imagenet_c.py`` (hendrycks/robustness, ``ImageNet-C/create_c``)
as packaged by bethgelab's ``imagecorruptions``, with the ImageNet-C severity constants, and of
``make_cifar_c.py`` for images of at most 64 pixels (see :mod:`eval.corruptions._tables`).
The OpenCV steps of the liquid branch are rebuilt in torch, batched:

- ``Canny(layer, 50, 150)``: 3x3 Sobel gradients, L1 magnitude, non-maximum suppression in
  four directions, hysteresis by repeated 8-neighbour growth from the strong edges;
- ``distanceTransform(DIST_L2)`` truncated at 20: the exact Euclidean distance (OpenCV's
  5x5 mask approximates it within about 2%);
- ``blur``, ``equalizeHist``, ``filter2D`` with the embossing kernel and the uint8
  saturations between them, as OpenCV computes them.

Deviations from the reference:
    - Randomness comes from ``torch`` with an explicit ``generator``.
    - The distance transform is exact rather than OpenCV's 5x5 chamfer approximation, and the
      Sobel border is replicated (see above); both change the drop shading only slightly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from eval.corruptions._filters import box3_reflect101, filter2d_reflect101, gaussian_filter, luma
from eval.corruptions._tables import ResolvedTable, SeverityTable
from eval.corruptions._validate import validated

__all__ = ["SPATTER", "spatter"]

# spatter in make_imagenet_c.py / make_cifar_c.py: (layer mean, layer std, layer blur sigma,
# threshold, drop intensity (liquid) or mud blur sigma, 0 = liquid / 1 = mud).
SPATTER = SeverityTable(
    imagenet=(
        (0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0), (0.65, 0.3, 2, 0.68, 0.5, 0),
        (0.65, 0.3, 1, 0.65, 1.5, 1), (0.67, 0.4, 1, 0.65, 1.5, 1),
    ),
    cifar=(
        (0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ),
)  # fmt: skip
_WATER = (175 / 255, 238 / 255, 238 / 255)  # pale turquoise
_MUD = (63 / 255, 42 / 255, 20 / 255)  # mud brown
_EMBOSS = ((-2.0, -1.0, 0.0), (-1.0, 1.0, 1.0), (0.0, 1.0, 2.0))
_DISTANCE_CAP = 20


@validated
def spatter(x: Tensor, severity: int, *, generator: torch.Generator | None, table: ResolvedTable) -> Tensor:
    """Splash the image with water drops (severities 1-3) or cover it with mud (4-5).

    A Gaussian noise layer is blurred and thresholded into blobs. Liquid: the blobs' edges are
    found (Canny), turned into embossed distance-to-edge shading, and pale turquoise is added
    in proportion to it. Mud: the blobs are blurred, kept where above 0.8, and replace the image
    with mud brown in proportion. One-channel images receive the BT.601 grey of the colour
    added, as imagecorruptions does.

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Source of randomness, on the device of ``x``.
        table: ``"auto"``, ``"imagenet"`` or ``"cifar"`` (see :mod:`eval.corruptions._tables`).

    Returns:
        The spattered images, same shape, dtype and device as ``x``.
    """
    loc, scale, sigma, threshold, intensity, mud = SPATTER.get(table, severity)
    batch, _, height, width = x.shape
    layer = torch.randn((batch, 1, height, width), generator=generator, device=x.device, dtype=x.dtype) * scale + loc
    layer = gaussian_filter(layer, sigma)
    layer = torch.where(layer < threshold, 0, layer)
    if mud:
        mask = gaussian_filter((layer > threshold).to(x.dtype), intensity)
        mask = torch.where(mask < 0.8, 0, mask)
        return x * (1 - mask) + _colour(_MUD, x) * mask
    drops = _liquid_mask(layer) * intensity
    return x + _colour(_WATER, x) * drops


def _colour(rgb: tuple[float, float, float], x: Tensor) -> Tensor:
    colour = torch.tensor(rgb, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return luma(colour) if x.shape[1] == 1 else colour


def _liquid_mask(layer: Tensor) -> Tensor:
    """Return the reference's drop shading in [0, 1] (per image maximum 1), shape ``(B, 1, H, W)``."""
    levels = torch.floor(layer * 255).clamp(0, 255)  # the reference's uint8 cast of the layer
    edges = _canny(levels, low=50.0, high=150.0)
    distance = _distance_to(edges, cap=_DISTANCE_CAP).to(layer.dtype)
    shading = torch.floor(box3_reflect101(distance))
    shading = _equalize_histogram(shading)
    emboss = torch.tensor(_EMBOSS, dtype=layer.dtype, device=layer.device)
    shading = torch.round(filter2d_reflect101(shading, emboss)).clamp(0, 255)
    mask = levels * box3_reflect101(shading)
    return mask / mask.amax(dim=(-2, -1), keepdim=True).clamp(min=torch.finfo(mask.dtype).tiny)


def _canny(image: Tensor, *, low: float, high: float) -> Tensor:
    """Return OpenCV-style Canny edges (bool) of ``(B, 1, H, W)`` images with values in 0..255."""
    height, width = image.shape[-2:]
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")

    def at(dy: int, dx: int, source: Tensor = padded) -> Tensor:
        return source[..., 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

    gx = (at(-1, 1) + 2 * at(0, 1) + at(1, 1)) - (at(-1, -1) + 2 * at(0, -1) + at(1, -1))
    gy = (at(1, -1) + 2 * at(1, 0) + at(1, 1)) - (at(-1, -1) + 2 * at(-1, 0) + at(-1, 1))
    magnitude = gx.abs() + gy.abs()
    mag = F.pad(magnitude, (1, 1, 1, 1))
    # OpenCV's sectors: |gy| < tan(22.5)|gx| horizontal, |gy| > tan(67.5)|gx| vertical, else diagonal.
    tan22 = 0.4142135623730951
    horizontal = gy.abs() < tan22 * gx.abs()
    vertical = gy.abs() > gx.abs() / tan22
    same_sign = (gx * gy) > 0
    before = torch.where(horizontal, at(0, -1, mag), torch.where(vertical, at(-1, 0, mag),
                         torch.where(same_sign, at(-1, -1, mag), at(-1, 1, mag))))
    after = torch.where(horizontal, at(0, 1, mag), torch.where(vertical, at(1, 0, mag),
                        torch.where(same_sign, at(1, 1, mag), at(1, -1, mag))))
    peak = (magnitude > before) & (magnitude >= after)
    weak = peak & (magnitude > low)
    edges = peak & (magnitude > high)
    while True:  # hysteresis: grow the strong edges through 8-connected weak pixels
        previous = edges
        for _ in range(8):  # a few steps between the (synchronising) convergence checks
            edges = edges | (weak & _dilate3(edges))
        if torch.equal(edges, previous):
            return edges


def _dilate3(mask: Tensor) -> Tensor:
    """Return the 3x3 dilation of a boolean ``(..., H, W)`` mask (separable ORs of shifted views)."""
    padded = F.pad(mask.to(torch.uint8), (1, 1, 1, 1)).bool()
    rows = padded[..., :-2, :] | padded[..., 1:-1, :] | padded[..., 2:, :]
    return rows[..., :-2] | rows[..., 1:-1] | rows[..., 2:]


def _distance_to(edges: Tensor, *, cap: int) -> Tensor:
    """Return the Euclidean distance to the nearest edge pixel, truncated at ``cap``.

    Exact below ``cap``: the distance along each row comes from two running maxima (last edge
    to the left, next to the right); the column pass takes ``min_k k^2 + row(y + k)^2`` over
    ``|k| <= cap``, the separable form of the squared Euclidean distance.
    """
    width = edges.shape[-1]
    far = float(4 * cap)
    position = torch.arange(width, device=edges.device, dtype=torch.float32)
    left = torch.where(edges, position, -far).cummax(dim=-1).values
    right = torch.where(edges, position, 2 * far + width).flip(-1).cummin(dim=-1).values.flip(-1)
    along_row = torch.minimum(position - left, right - position).clamp(max=cap + 1) ** 2
    height = edges.shape[-2]
    padded = F.pad(along_row, (0, 0, cap, cap), value=float((cap + 1) ** 2))
    squared = along_row.clone()
    for shift in range(1, cap + 1):
        offset = float(shift * shift)
        squared = torch.minimum(squared, padded[..., cap - shift : cap - shift + height, :] + offset)
        squared = torch.minimum(squared, padded[..., cap + shift : cap + shift + height, :] + offset)
    return squared.sqrt().clamp(max=cap)


def _equalize_histogram(image: Tensor) -> Tensor:
    """Return OpenCV's ``equalizeHist`` of each ``(1, H, W)`` image with integer values 0..255."""
    batch = image.shape[0]
    values = image.reshape(batch, -1).long()
    ones = torch.ones_like(values, dtype=torch.float32)
    histogram = torch.zeros(batch, 256, device=image.device).scatter_add_(1, values, ones)
    total = values.shape[1]
    first = (histogram > 0).float().argmax(dim=1, keepdim=True)
    first_count = histogram.gather(1, first)
    cumulative = histogram.cumsum(dim=1) - first_count
    scale = 255.0 / (total - first_count).clamp(min=1)
    lut = torch.round(cumulative * scale).clamp(0, 255)
    lut = torch.where(torch.arange(256, device=image.device) <= first, 0.0, lut)
    flat = torch.where(first_count == total, first.float().expand(-1, 256), lut)
    return flat.gather(1, values).to(image.dtype).reshape(image.shape)
