"""Input checks every method runs before touching its state: a bad batch raises, nothing changes."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from adapters_bn import iter_adaptive

__all__ = ["batch_statistics_advice", "check_against_model", "check_batch", "check_grad_allowed"]


def check_batch(x: Tensor, ndim: int | None = 4) -> None:
    """Raise a clear ``TypeError``/``ValueError`` for input that no method can adapt on.

    Args:
        x: The input batch.
        ndim: Expected number of dimensions (4 for ``(B, C, H, W)`` images); ``None`` skips the check.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor batch, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point batch, got dtype {x.dtype}; convert images with x.float() / 255")
    if ndim is not None and x.dim() != ndim:
        layout = " (B, C, H, W)" if ndim == 4 else ""
        raise ValueError(f"expected a {ndim}-D batch{layout}, got shape {tuple(x.shape)}")
    if x.dim() == 0:
        raise ValueError("expected a batch with a leading batch dimension, got a 0-D tensor (a single number)")
    if x.is_meta:
        raise ValueError(f"batch of shape {tuple(x.shape)} is on the meta device and holds no values; "
                         "pass a batch with data (on the model's device)")
    if x.shape[0] == 0:
        raise ValueError("empty batch: nothing to predict or adapt on")
    if x.numel() == 0:
        raise ValueError(f"batch of shape {tuple(x.shape)} has an empty dimension; every dimension must be >= 1")
    # detach: a batch that requires grad would make float() warn; one pass, no temporaries; NaN propagates
    low, high = torch.aminmax(x.detach())
    if not (math.isfinite(float(low)) and math.isfinite(float(high))):
        raise ValueError("batch contains NaN or Inf values; refusing to adapt on it")


def check_against_model(model: nn.Module, x: Tensor) -> None:
    """Raise unless ``x`` is on the device of ``model``'s parameters and of their dtype (or under autocast)."""
    param = next(model.parameters(), None)
    if param is None:
        return
    if param.device != x.device:
        raise ValueError(f"batch is on {x.device} but the model is on {param.device}; move one with .to()")
    if x.dtype != param.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(
            f"batch is {x.dtype} but the model's parameters are {param.dtype}; convert with "
            f"x.to({param.dtype}) or call inside torch.autocast"
        )


def batch_statistics_advice(method: str, model: nn.Module) -> str | None:
    """The warning for a batch of one image when ``model`` normalizes with batch statistics, else ``None``."""
    if not any(layer.stats == "batch" for _, layer in iter_adaptive(model)):
        return None
    return (f"{method} normalizes with the statistics of a batch of 1 image, which are too noisy "
            "to adapt well (a batch-1 stream can end far worse than the source model); build it with "
            "stats='ema' for batch-size-1 streams (docs/production.md)")


def check_grad_allowed(method: str) -> None:
    """Raise for a gradient-based method called under ``torch.inference_mode()``, which forbids its update."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{method} adapts by gradient steps, which torch.inference_mode() forbids; "
            "call it under torch.no_grad() or no context instead, or use adapter.frozen() to predict only"
        )
