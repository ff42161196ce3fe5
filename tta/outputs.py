"""Checks on what the wrapped model returns: every method expects logits of shape ``(B, num_classes)``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["check_finite_logits", "check_logits", "logits_checked"]


def check_logits(output: object, batch_size: int | None) -> Tensor:
    """Return ``output`` if it is a logits tensor ``(batch_size, num_classes)``, else raise a clear error.

    Args:
        output: What the model returned.
        batch_size: The number of images it was given; ``None`` skips the comparison.

    Raises:
        TypeError: ``output`` is not a tensor (a tuple, a dict, ...).
        ValueError: ``output`` is not 2-D or does not have one row per image.
    """
    if not isinstance(output, Tensor):
        raise TypeError(f"the model returned {type(output).__name__}; expected a logits tensor of shape "
                        "(B, num_classes) (wrap a model with several outputs in a module that returns the logits)")
    if output.dim() != 2 or (batch_size is not None and output.shape[0] != batch_size):
        raise ValueError(f"the model returned a tensor of shape {tuple(output.shape)} for a batch of {batch_size} "
                         "images; expected logits of shape (B, num_classes)")
    return output


def _check_hook(module: nn.Module, args: tuple[Any, ...], output: object) -> None:
    batch = args[0] if args and isinstance(args[0], Tensor) and args[0].dim() > 0 else None
    check_logits(output, None if batch is None else batch.shape[0])


@contextmanager
def logits_checked(model: nn.Module) -> Iterator[None]:
    """Within the block, every call of ``model`` checks that it returned logits, before a method uses them.

    A method's own code (Tent's entropy, CoTTA's targets) would otherwise fail on a tuple or a 1-D
    output with an error about its internals. The hook is removed on exit, so the user's model carries
    nothing outside an adapter's forward (exports and direct calls are unaffected).
    """
    handle = model.register_forward_hook(_check_hook)
    try:
        yield
    finally:
        handle.remove()


def check_finite_logits(method: str, logits: Tensor, x: Tensor) -> None:
    """Raise ``ValueError`` when ``logits`` hold NaN or Inf (values too large for the batch's dtype?)."""
    if not torch.isfinite(logits).all():
        raise ValueError(
            f"{method}: the model's logits are not finite on this batch (values too large for {x.dtype}?); "
            "the batch was rejected and nothing was adapted"
        )
