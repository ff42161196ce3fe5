"""Shared timing helpers of the speed benchmarks: models to time and best-of-rounds throughput."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["add_timing_arguments", "build_model", "images_per_second", "best_of"]


def add_timing_arguments(parser: argparse.ArgumentParser, *, repeats: int, rounds: int, warmup: int) -> None:
    """Add the flags every speed script shares: model, batch and image size, timing rounds, device."""
    parser.add_argument("--model", default="fmnist", help="'fmnist' or a torchvision model name")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=repeats, help="calls per timed round")
    parser.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds; the best is kept")
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--device", default="cpu")


def build_model(name: str) -> tuple[nn.Module, int]:
    """Return (model in eval mode, input channels): the shipped Fashion-MNIST model or a torchvision one."""
    if name == "fmnist":
        from eval.models.source import load_source_model

        return load_source_model(), 1
    import torchvision

    return getattr(torchvision.models, name)(num_classes=1000).eval(), 3


def images_per_second(step: Callable[[torch.Tensor], object], x: torch.Tensor, repeats: int, warmup: int) -> float:
    """Return the throughput of ``step(x)`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        step(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return repeats * x.shape[0] / (time.perf_counter() - start)


def best_of(steps: dict[str, Callable[[torch.Tensor], object]], x: torch.Tensor,
            args: argparse.Namespace) -> dict[str, float]:
    """Return each step's best throughput over ``args.rounds`` interleaved rounds (least disturbed by other work)."""
    best = dict.fromkeys(steps, 0.0)
    for _ in range(args.rounds):
        for name, step in steps.items():
            best[name] = max(best[name], images_per_second(step, x, args.repeats, args.warmup))
    return best
