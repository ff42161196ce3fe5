"""CoTTA's test-time augmentations on batches, with randomness drawn apart from applying it.

One augmented *copy* of a batch applies, in order (``get_tta_transforms`` of qinenergy/cotta,
``cifar/cotta.py`` and ``imagenet/cotta.py``, identical apart from the image size):

1. clip to [0, 1];
2. colour jitter in a random order of five operations (``ColorJitterPro`` of its
   ``my_transforms.py``): brightness, contrast, saturation, hue, and gamma (after clamping to
   ``[1e-8, 1]``);
3. edge padding by half the image side, a random affine (rotation, integer translation up to
   1/16 of the padded side, scale; bilinear), a 5x5 Gaussian blur with random sigma, and a centre
   crop back to the input size;
4. a horizontal flip with probability 1/2;
5. additive Gaussian noise (std 0.005, one value per pixel) and a final clip to [0, 1].

Every random choice of steps 2-4 is drawn once per copy and shared by the whole batch, as in the
official code, which calls the transform on a batch tensor; the noise of step 5 is per pixel.

Image size rule: the official code ties the padding and the crop to 32 (CIFAR) or 224 (ImageNet)
pixels. Here the padding is half of the input's height and width (``H // 2``, ``W // 2``) and the
crop is the input's own size, which equals the official values at 32 and 224 and scales with any
other size. Translation is relative to the padded size (as torchvision's ``RandomAffine``); the
blur kernel stays 5x5 as in both official variants.

Grayscale (one channel): brightness, contrast and gamma apply; saturation and hue are the
identity, which is what torchvision's ``adjust_saturation``/``adjust_hue`` do on one-channel
tensors. Inputs need one or three channels and values in [0, 1].

Another augmentation can stand in for this chain (CoTTA's ``augment=``): an :data:`AugmentFn`
returns one augmented copy of a batch, drawing its randomness from the two generators it is given;
:func:`copies_of` makes the copies and checks each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision.transforms.functional as TF
from torch import Tensor
from torchvision.transforms import InterpolationMode

__all__ = [
    "AugmentParams",
    "COLOR_OPS",
    "sample_augment_params",
    "augment",
    "augment_copies",
    "AugmentFn",
    "check_augment",
    "copies_of",
]

AugmentFn = Callable[[Tensor, torch.Generator, torch.Generator], Tensor]
"""``augment(x, cpu_generator, device_generator) -> copy``: one augmented copy of the batch ``x``, same shape,
dtype and device, its random draws taken from a CPU generator and a generator on ``x``'s device."""

COLOR_OPS = ("brightness", "contrast", "saturation", "hue", "gamma")
"""The colour operations of ``ColorJitterPro``, indexed as in its ``randperm(5)``."""

# Ranges of get_tta_transforms(soft=False) / (soft=True), qinenergy/cotta cifar/cotta.py.
_RANGES = {
    False: {"brightness": (0.6, 1.4), "contrast": (0.7, 1.3), "saturation": (0.5, 1.5), "hue": (-0.06, 0.06),
            "gamma": (0.7, 1.3), "degrees": (-15.0, 15.0), "scale": (0.9, 1.1), "sigma": (0.001, 0.5)},
    True: {"brightness": (0.8, 1.2), "contrast": (0.85, 1.15), "saturation": (0.75, 1.25), "hue": (-0.03, 0.03),
           "gamma": (0.85, 1.15), "degrees": (-8.0, 8.0), "scale": (0.95, 1.05), "sigma": (0.001, 0.25)},
}
_TRANSLATE = 1.0 / 16.0  # RandomAffine(translate=(1/16, 1/16)), relative to the padded image
_BLUR_KERNEL = 5  # GaussianBlur(kernel_size=5) in both official variants
_P_FLIP = 0.5  # RandomHorizontalFlip(p=0.5)


@dataclass(frozen=True)
class AugmentParams:
    """The random draws of one augmented copy, shared by every image of the batch.

    Args:
        order: Permutation of ``range(5)`` giving the order of :data:`COLOR_OPS`.
        factors: Brightness, contrast, saturation, hue and gamma factors, in :data:`COLOR_OPS` order.
        angle: Rotation in degrees.
        translate: Integer translation ``(tx, ty)`` in pixels of the padded image.
        scale: Isotropic scale of the affine transform.
        sigma: Standard deviation of the 5x5 Gaussian blur, in pixels.
        flip: Whether the copy is flipped horizontally.
    """

    order: tuple[int, ...]
    factors: tuple[float, ...]
    angle: float
    translate: tuple[int, int]
    scale: float
    sigma: float
    flip: bool


def _uniform(u: Tensor, bounds: tuple[float, float]) -> Tensor:
    return bounds[0] + (bounds[1] - bounds[0]) * u


def sample_augment_params(
    num_copies: int, height: int, width: int, generator: torch.Generator, *, soft: bool = False
) -> list[AugmentParams]:
    """Draw the parameters of ``num_copies`` augmented copies of a ``height`` x ``width`` batch.

    Args:
        num_copies: Number of copies (CoTTA's N = 32).
        height: Input image height in pixels.
        width: Input image width in pixels.
        generator: A CPU generator; the only source of randomness.
        soft: The milder ranges of ``get_tta_transforms(soft=True)`` (unused by the official runs).

    Returns:
        One :class:`AugmentParams` per copy.
    """
    ranges = _RANGES[soft]
    u = torch.rand(num_copies, 11, generator=generator, dtype=torch.float64)
    orders = torch.rand(num_copies, len(COLOR_OPS), generator=generator).argsort(dim=1)
    factors = torch.stack([_uniform(u[:, i], ranges[op]) for i, op in enumerate(COLOR_OPS)], dim=1)
    pad_h, pad_w = height // 2, width // 2
    max_dx, max_dy = _TRANSLATE * (width + 2 * pad_w), _TRANSLATE * (height + 2 * pad_h)
    tx = torch.round(_uniform(u[:, 6], (-max_dx, max_dx)))
    ty = torch.round(_uniform(u[:, 7], (-max_dy, max_dy)))
    return [
        AugmentParams(
            order=tuple(orders[n].tolist()),
            factors=tuple(factors[n].tolist()),
            angle=float(_uniform(u[n, 5], ranges["degrees"])),
            translate=(int(tx[n]), int(ty[n])),
            scale=float(_uniform(u[n, 8], ranges["scale"])),
            sigma=float(_uniform(u[n, 9], ranges["sigma"])),
            flip=bool(u[n, 10] < _P_FLIP),
        )
        for n in range(num_copies)
    ]


def _color(x: Tensor, op: int, factor: float) -> Tensor:
    if op == 0:
        return TF.adjust_brightness(x, factor)
    if op == 1:
        return TF.adjust_contrast(x, factor)
    if op == 2:
        return TF.adjust_saturation(x, factor)
    if op == 3:
        return TF.adjust_hue(x, factor)
    # ColorJitterPro clamps before gamma, to keep gradients finite after contrast.
    return TF.adjust_gamma(x.clamp(1e-8, 1.0), factor)


def _blur_and_crop(x: Tensor, height: int, width: int, sigma: float) -> Tensor:
    """Gaussian-blur the padded image and centre-crop it to ``height`` x ``width``.

    Equal to ``center_crop(gaussian_blur(x))``, but blurs only the crop plus a margin of the kernel
    radius: the blur's reflect padding then touches only the margin, which is cut away.
    """
    margin = _BLUR_KERNEL // 2
    top = int(round((x.shape[-2] - height) / 2.0))  # torchvision's center_crop offsets
    left = int(round((x.shape[-1] - width) / 2.0))
    if min(top, left) < margin:
        return TF.center_crop(TF.gaussian_blur(x, [_BLUR_KERNEL] * 2, [sigma, sigma]), [height, width])
    window = x[..., top - margin : top + height + margin, left - margin : left + width + margin]
    blurred = TF.gaussian_blur(window, [_BLUR_KERNEL] * 2, [sigma, sigma])
    return blurred[..., margin : margin + height, margin : margin + width]


def augment(x: Tensor, params: AugmentParams, generator: torch.Generator | None, *, noise_std: float = 0.005) -> Tensor:
    """Return one augmented copy of the batch ``x`` under ``params`` (the same draws for every image).

    Args:
        x: Images ``(B, C, H, W)`` in [0, 1], ``C`` in {1, 3}.
        params: The copy's draws from :func:`sample_augment_params`.
        generator: Generator on ``x``'s device for the per-pixel noise.
        noise_std: Standard deviation of the additive noise (``GaussianNoise(0, 0.005)`` officially).

    Returns:
        The augmented batch, same shape, device and dtype, in [0, 1].
    """
    height, width = x.shape[-2:]
    out = x.clamp(0.0, 1.0)
    for op in params.order:
        out = _color(out, op, params.factors[op])
    out = TF.pad(out, [width // 2, height // 2], padding_mode="edge")
    out = TF.affine(out, angle=params.angle, translate=list(params.translate), scale=params.scale, shear=[0.0, 0.0],
                    interpolation=InterpolationMode.BILINEAR, fill=[0.0] * out.shape[-3])
    out = _blur_and_crop(out, height, width, params.sigma)
    if params.flip:
        out = TF.hflip(out)
    noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
    return (out + noise * noise_std).clamp(0.0, 1.0)


def augment_copies(
    x: Tensor, params: list[AugmentParams], generator: torch.Generator | None, *, noise_std: float = 0.005
) -> Tensor:
    """Return the augmented copies of ``x`` stacked as ``(N, B, C, H, W)``, one per entry of ``params``."""
    return torch.stack([augment(x, p, generator, noise_std=noise_std) for p in params])


def check_augment(augment_fn: object) -> None:
    """Raise a clear ``TypeError`` unless ``augment_fn`` is ``None`` or a callable (an :data:`AugmentFn`)."""
    if augment_fn is not None and not callable(augment_fn):
        raise TypeError(f"augment must be a callable augment(x, cpu_generator, device_generator) -> Tensor or None, "
                        f"got {type(augment_fn).__name__} {augment_fn!r:.40}; pass a function from Python "
                        f"(it cannot be given as text)")


def copies_of(
    x: Tensor, augment_fn: AugmentFn, count: int, cpu_generator: torch.Generator, device_generator: torch.Generator
) -> Tensor:
    """Return ``count`` copies of ``x`` made by ``augment_fn``, stacked as ``(count, B, C, H, W)``.

    Raises:
        TypeError: If ``augment_fn`` returns something other than a tensor.
        ValueError: If a copy's shape, dtype or device differs from ``x``'s.
    """
    copies = [augment_fn(x, cpu_generator, device_generator) for _ in range(count)]
    for copy in copies:
        if not isinstance(copy, Tensor):
            raise TypeError(f"augment returned a {type(copy).__name__}, not a tensor; it must return one augmented "
                            f"copy of the batch")
        if (copy.shape, copy.dtype, copy.device) != (x.shape, x.dtype, x.device):
            raise ValueError(f"augment returned shape {tuple(copy.shape)}, {copy.dtype} on {copy.device} for a batch "
                             f"of shape {tuple(x.shape)}, {x.dtype} on {x.device}; it must return one augmented copy "
                             f"of the batch, alike in all three")
    return torch.stack(copies)
