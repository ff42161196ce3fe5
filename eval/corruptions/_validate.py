"""Input checks shared by every corruption, applied once by the :func:`validated` decorator."""

from __future__ import annotations

import functools
import numbers
from typing import Protocol

import torch
from torch import Tensor

__all__ = [
    "MIN_SIZE",
    "RANGE_TOLERANCE",
    "Corruption",
    "check_generator",
    "check_image",
    "check_severity",
    "validated",
]

#: Values may leave [0, 1] by this much (resampling round-off) and are clamped before corrupting.
RANGE_TOLERANCE = 1e-3
#: Smallest accepted height and width: pixelate at severity 5 still keeps 2 pixels per side.
MIN_SIZE = 8
_EXPECTED = "a float tensor (B, C, H, W) with C in {1, 3} and values in [0, 1]"


class Corruption(Protocol):
    """The uniform signature of every corruption function."""

    def __call__(self, x: Tensor, severity: int, *, generator: torch.Generator | None = None) -> Tensor: ...


def check_image(x: object, name: str = "corruption") -> None:
    """Raise ``TypeError``/``ValueError`` unless ``x`` is a batch of images in [0, 1].

    Args:
        x: The candidate batch.
        name: The corruption's name, put at the start of every message.

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
        ValueError: Wrong rank, channel count or size, NaN/Inf, or values outside [0, 1].
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected {_EXPECTED}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected {_EXPECTED}, got dtype {x.dtype}; use x.float() / 255")
    if x.dim() != 4:
        raise ValueError(f"{name}: expected {_EXPECTED}, got shape {tuple(x.shape)}; add a batch axis with x[None]")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{name}: expected C = 1 (grayscale) or 3 (RGB), got C = {x.shape[1]}, shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < MIN_SIZE:
        raise ValueError(f"{name}: expected H, W >= {MIN_SIZE}, got shape {tuple(x.shape)}")
    if x.numel() > 0:
        _check_values(x, name)


def _check_values(x: Tensor, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: input contains NaN or Inf; expected {_EXPECTED}")
    low, high = (float(v) for v in torch.aminmax(x))
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"{name}: expected values in [0, 1], got [{low:.4g}, {high:.4g}]; "
            "undo any mean/std normalization (or divide uint8 images by 255) before corrupting"
        )


def check_severity(severity: object, name: str = "corruption") -> int:
    """Return ``severity`` as an ``int`` after checking it is an integer in 1..5.

    Raises:
        TypeError: ``severity`` is not an integer (``bool`` is refused too).
        ValueError: ``severity`` is outside 1..5.
    """
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral):
        raise TypeError(f"{name}: severity must be an int in 1..5, got {severity!r} ({type(severity).__name__})")
    level = int(severity)
    if not 1 <= level <= 5:
        raise ValueError(f"{name}: severity must be in 1..5 (the ImageNet-C levels), got {level}")
    return level


def check_generator(generator: object, x: Tensor, name: str = "corruption") -> None:
    """Raise unless ``generator`` is ``None`` or a ``torch.Generator`` on the device of ``x``."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{name}: generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != x.device.type:
        raise ValueError(
            f"{name}: generator is on {generator.device} but x is on {x.device}; "
            "create it with torch.Generator(device=x.device)"
        )


def validated(fn: Corruption) -> Corruption:
    """Wrap a corruption with the shared checks, the empty-batch shortcut and the final clamp.

    The wrapped function receives a batch clamped to [0, 1] (float16/bfloat16 promoted to
    float32) and a checked ``int`` severity; its result is clamped to [0, 1] and cast back to
    the input dtype, as the reference clips every output.
    """
    name = getattr(fn, "__name__", "corruption")

    @functools.wraps(fn)
    def wrapper(x: Tensor, severity: int, *, generator: torch.Generator | None = None) -> Tensor:
        check_image(x, name)
        level = check_severity(severity, name)
        check_generator(generator, x, name)
        if x.shape[0] == 0:
            return x.clone()
        work = x.clamp(0, 1)
        if work.dtype in (torch.float16, torch.bfloat16):
            work = work.float()
        return fn(work, level, generator=generator).clamp(0, 1).to(x.dtype)

    return wrapper
