"""ImageNet-C corruptions as batched torch functions on float ``(B, C, H, W)`` images in [0, 1].

All 15 benchmark corruptions and the 4 held-out ones. Every corruption has the signature
``name(x, severity, *, generator=None, table="auto") -> Tensor``, runs on the device of ``x``
and follows the reference implementation (hendrycks/robustness
``ImageNet-C/create_c/make_imagenet_c.py``, packaged as bethgelab's ``imagecorruptions``) with
its severity constants. Images whose shorter side is at most 64 pixels (CIFAR, Fashion-MNIST,
Tiny-ImageNet) use the CIFAR-10-C constants of ``make_cifar_c.py`` instead; ``table=`` forces
either (see :mod:`eval.corruptions._tables`). Unlike the reference, which corrupts one uint8
PIL image at a time, these work on float batches without rounding to uint8 between steps
(except where the reference's rounding is part of the effect: jpeg_compression, glass_blur,
snow's flake layer, spatter's shading). The registry maps names to functions; subsets are
named lists. Each module lists its deviations from the reference.

Example:
    >>> x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    >>> y = corrupt(x, "gaussian_noise", 3, generator=torch.Generator().manual_seed(1))
    >>> y.shape, bool(y.min() >= 0), bool(y.max() <= 1)
    (torch.Size([4, 1, 28, 28]), True, True)
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from eval.corruptions._tables import CIFAR_MAX_SIDE, TableName
from eval.corruptions._validate import Corruption
from eval.corruptions.blur import defocus_blur, gaussian_blur, glass_blur, motion_blur, zoom_blur
from eval.corruptions.digital import (
    brightness,
    contrast,
    elastic_transform,
    jpeg_compression,
    pixelate,
    saturate,
)
from eval.corruptions.noise import gaussian_noise, impulse_noise, shot_noise, speckle_noise
from eval.corruptions.spatter import spatter
from eval.corruptions.weather import fog, frost, snow

__all__ = [
    "ENGINE_VERSION",
    "CIFAR_MAX_SIDE",
    "CORRUPTIONS",
    "DEFAULT_CORRUPTIONS",
    "Corruption",
    "CorruptionSubset",
    "TableName",
    "brightness",
    "contrast",
    "corrupt",
    "defocus_blur",
    "elastic_transform",
    "fog",
    "frost",
    "gaussian_blur",
    "gaussian_noise",
    "get_corruption",
    "glass_blur",
    "impulse_noise",
    "jpeg_compression",
    "list_corruptions",
    "parse_corruptions",
    "motion_blur",
    "pixelate",
    "saturate",
    "shot_noise",
    "snow",
    "spatter",
    "speckle_noise",
    "zoom_blur",
]

# Bumped whenever a corruption's output changes for the same input and seed; results stores key
# their cells on it, so cells made by an older engine are recomputed rather than reused.
ENGINE_VERSION = 2

CorruptionSubset = Literal["common", "holdout", "noise", "blur", "weather", "digital", "all", "available"]

# ImageNet-C's four categories of the 15 benchmark corruptions, in the benchmark's order.
_NOISE = ("gaussian_noise", "shot_noise", "impulse_noise")
_BLUR = ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur")
_WEATHER = ("snow", "frost", "fog", "brightness")
_DIGITAL = ("contrast", "elastic_transform", "pixelate", "jpeg_compression")
_COMMON = _NOISE + _BLUR + _WEATHER + _DIGITAL
# The four extra corruptions kept for tuning hyperparameters (DequanWang/tent#4).
_HOLDOUT = ("speckle_noise", "gaussian_blur", "spatter", "saturate")

#: Implemented corruptions, name -> function.
CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "speckle_noise": speckle_noise,
    "gaussian_blur": gaussian_blur,
    "spatter": spatter,
    "saturate": saturate,
}

_SUBSETS: dict[str, tuple[str, ...]] = {
    "common": _COMMON,
    "holdout": _HOLDOUT,
    "noise": _NOISE,
    "blur": _BLUR,
    "weather": _WEATHER,
    "digital": _DIGITAL,
    "all": _COMMON + _HOLDOUT,
    "available": tuple(name for name in _COMMON + _HOLDOUT if name in CORRUPTIONS),
}

#: The 15 benchmark corruptions in ImageNet-C's order: what a default benchmark run uses.
DEFAULT_CORRUPTIONS: tuple[str, ...] = _COMMON


def list_corruptions(subset: CorruptionSubset = "common") -> list[str]:
    """Return the corruption names of a named subset, in ImageNet-C's order.

    Args:
        subset: ``"common"`` (the 15 benchmark corruptions), ``"holdout"`` (speckle_noise,
            gaussian_blur, spatter, saturate; for tuning), one category of the common 15
            (``"noise"``, ``"blur"``, ``"weather"``, ``"digital"``), ``"all"`` (common + holdout),
            or ``"available"`` (those implemented here).

    Raises:
        ValueError: Unknown subset.

    Example:
        >>> list_corruptions("noise")
        ['gaussian_noise', 'shot_noise', 'impulse_noise']
    """
    if subset not in _SUBSETS:
        raise ValueError(f"unknown corruption subset {subset!r}; choose one of {sorted(_SUBSETS)}")
    return list(_SUBSETS[subset])


def parse_corruptions(text: str) -> list[str]:
    """Return the names meant by a subset name (``"common"``, ``"noise"``, ...) or a comma-separated list.

    Raises:
        ValueError: A listed name is not a corruption here (the message lists the valid ones).

    Example:
        >>> parse_corruptions("fog, jpeg_compression")
        ['fog', 'jpeg_compression']
    """
    if text.strip() in _SUBSETS:
        return list_corruptions(text.strip())  # type: ignore[arg-type]
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError(f"no corruption named in {text!r}; give a subset {sorted(_SUBSETS)} or names")
    for name in names:
        get_corruption(name)
    return names


def get_corruption(name: str) -> Corruption:
    """Return the corruption function registered under ``name``.

    Raises:
        ValueError: ``name`` is not an ImageNet-C corruption, or is one not implemented yet.
    """
    if name in CORRUPTIONS:
        return CORRUPTIONS[name]
    available = list_corruptions("available")
    if name in _SUBSETS["all"]:
        raise ValueError(f"corruption {name!r} is not implemented yet; available: {available}")
    implemented = "" if available == list_corruptions("all") else f" (implemented: {available})"
    raise ValueError(f"unknown corruption {name!r}; valid names: {', '.join(list_corruptions('all'))}{implemented}")


def corrupt(
    x: Tensor, name: str, severity: int, *, generator: torch.Generator | None = None, table: TableName = "auto"
) -> Tensor:
    """Apply the corruption ``name`` at ``severity`` to a batch of images.

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3, on any device.
        name: A name from ``list_corruptions("available")``.
        severity: ImageNet-C level, 1..5.
        generator: Source of randomness of the stochastic corruptions, on the device of ``x``.
        table: Severity constants: ``"auto"`` (CIFAR-10-C's when the shorter side is at most
            64 pixels, else ImageNet-C's), ``"imagenet"`` or ``"cifar"``.

    Returns:
        The corrupted batch, clipped to [0, 1], same shape, dtype and device as ``x``.

    Raises:
        TypeError: ``x`` is not a floating-point tensor, or ``severity`` not an int.
        ValueError: Unknown or unimplemented ``name``, bad shape, values, severity or table.
    """
    return get_corruption(name)(x, severity, generator=generator, table=table)
