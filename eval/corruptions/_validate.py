"""Input checks shared by every corruption, applied once by the :func:`validated` decorator."""

from __future__ import annotations

import functools
import math
import numbers
from typing import Protocol

import torch
from torch import Tensor

from eval.corruptions._tables import ResolvedTable, TableName, resolve_table

__all__ = [
    "CHUNK_ELEMENTS",
    "MIN_SIZE",
    "RANGE_TOLERANCE",
    "Corruption",
    "check_generator",
    "check_image",
    "check_range",
    "check_severity",
    "validated",
    "validated_per_image",
    "values_checked",
]

#: Values may leave [0, 1] by this much (resampling round-off) and are clamped before corrupting.
RANGE_TOLERANCE = 1e-3
#: Smallest accepted height and width: pixelate at severity 5 still keeps 2 pixels per side.
MIN_SIZE = 8
#: Batches are corrupted in chunks of about this many values (2 MiB of float32: three 224-pixel
#: RGB images), so that the intermediate tensors of the multi-step corruptions stay near the CPU
#: caches and are recycled by the allocator instead of being mapped afresh for every step.
CHUNK_ELEMENTS = 2**19
_EXPECTED = "a float tensor (B, C, H, W) with C in {1, 3} and values in [0, 1]"


class Corruption(Protocol):
    """The uniform signature of every corruption function."""

    def __call__(
        self, x: Tensor, severity: int, *, generator: torch.Generator | None = None, table: TableName = "auto"
    ) -> Tensor: ...


class _Implementation(Protocol):
    def __call__(
        self, x: Tensor, severity: int, *, generator: torch.Generator | None, table: ResolvedTable
    ) -> Tensor: ...


def check_image(x: object, name: str = "corruption") -> None:
    """Raise ``TypeError``/``ValueError`` unless ``x`` is a batch of images in [0, 1].

    Args:
        x: The candidate batch.
        name: The corruption's name, put at the start of every message.

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
        ValueError: Wrong rank, channel count or size, NaN/Inf, or values outside [0, 1].
    """
    _check_layout(x, name)
    if x.numel() > 0:  # type: ignore[attr-defined]
        _check_values(x, name)  # type: ignore[arg-type]


def _check_layout(x: object, name: str) -> None:
    """Raise unless ``x`` is a floating-point ``(B, C, H, W)`` tensor with C 1 or 3 and H, W large enough."""
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


def _check_values(x: Tensor, name: str) -> tuple[float, float]:
    """Raise unless the values are finite and in [0, 1] up to the tolerance; return (min, max)."""
    # One pass: aminmax propagates NaN, and an infinity is out of range anyway.
    low, high = (float(v) for v in torch.aminmax(x))
    check_range(low, high, name)
    return low, high


def values_checked(x: Tensor, name: str) -> Tensor:
    """Return ``x`` after the value checks, clamped to [0, 1] where round-off left it outside."""
    low, high = _check_values(x, name)
    return x.clamp(0, 1) if low < 0 or high > 1 else x


def check_range(low: float, high: float, name: str) -> bool:
    """Raise unless ``[low, high]`` (an image's extremes, NaN if any value is) fits [0, 1] up to the tolerance.

    Returns:
        Whether values must be clamped: some lie outside [0, 1] by round-off within the tolerance.
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name}: input contains NaN or Inf; expected {_EXPECTED}")
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"{name}: expected values in [0, 1], got [{low:.4g}, {high:.4g}]; "
            "undo any mean/std normalization (or divide uint8 images by 255) before corrupting"
        )
    return low < 0 or high > 1


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


def validated(fn: _Implementation) -> Corruption:
    """Wrap a corruption with the shared checks, the table choice, chunking and the final clamp.

    The wrapped function receives a batch clamped to [0, 1] (float16/bfloat16 promoted to
    float32), a checked ``int`` severity and the resolved table (``"imagenet"`` or ``"cifar"``,
    see :mod:`eval.corruptions._tables`). Large batches are processed in chunks of about
    :data:`CHUNK_ELEMENTS` values, in order and with the same generator, so the output does not
    depend on the caller's batch size beyond the order of random draws. The result is clamped
    to [0, 1] and cast back to the input dtype, as the reference clips every output.
    """
    return _wrap(fn, per_image=False)


def validated_per_image(fn: _Implementation) -> Corruption:
    """Like :func:`validated`, for a corruption that loops over the images itself.

    Such a function checks each image's values in its own loop with :func:`check_range` (NaN,
    Inf and the [0, 1] range, clamping round-off), while the image is in the CPU cache, and
    returns values in [0, 1]: the wrapper skips its pass over the batch for the value check,
    the chunking and the clamp (three passes over the batch fewer). Layout, severity, generator
    and table are checked here as for every corruption.
    """
    return _wrap(fn, per_image=True)


def _wrap(fn: _Implementation, *, per_image: bool) -> Corruption:
    """Return the corruption with the shared checks; unless ``per_image``: value check, chunking and clamp too."""
    name = getattr(fn, "__name__", "corruption")

    @functools.wraps(fn)
    def wrapper(
        x: Tensor, severity: int, *, generator: torch.Generator | None = None, table: TableName = "auto"
    ) -> Tensor:
        _check_layout(x, name)
        level = check_severity(severity, name)
        check_generator(generator, x, name)
        resolved = resolve_table(x, table, name)
        if x.shape[0] == 0:
            return x.clone()
        work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        if per_image:
            return fn(work, level, generator=generator, table=resolved).to(x.dtype)
        low, high = _check_values(x, name)
        if low < 0 or high > 1:  # only round-off within the tolerance is left to clamp
            work = work.clamp(0, 1)
        chunk = max(1, CHUNK_ELEMENTS // max(1, work[0].numel()))
        if work.shape[0] <= chunk:
            out = fn(work, level, generator=generator, table=resolved)
            out = out.clamp(0, 1) if out.data_ptr() == x.data_ptr() else out.clamp_(0, 1)
            return out.to(x.dtype)
        # Each chunk is clamped into the output while it is still in the cache, rather than
        # concatenated and clamped afterwards (two more passes over the whole batch).
        out = torch.empty(work.shape, dtype=work.dtype, device=work.device)
        for part, target in zip(torch.split(work, chunk), torch.split(out, chunk), strict=True):
            torch.clamp(fn(part, level, generator=generator, table=resolved), 0, 1, out=target)
        return out.to(x.dtype)

    return wrapper
