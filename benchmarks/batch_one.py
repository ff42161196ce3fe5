"""Batch-size-1 streams: error of each method, one image at a time, on a corrupted Fashion-MNIST test prefix.

Each configuration gets a fresh wrapper of the shipped source model and sees the same stream of
``--images`` test images (corruption ``--corruption``, severity 5), one image per call; the script
prints the error and the time per configuration. The configurations are the batch-1 recipes of
docs/production.md next to each method's default (batch statistics), which a single image breaks.

Usage:
    python benchmarks/batch_one.py --images 200 --corruption gaussian_noise
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import torch

import tta
from eval.datasets import CorruptedView, load_fashion_mnist
from eval.models.source import load_source_model

CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("source", {}),
    ("norm", {}),
    ("norm", {"stats": "ema", "momentum": 0.05}),
    ("tent", {}),
    ("tent", {"stats": "ema", "bn_momentum": 0.05}),
    ("cotta", {}),
    ("cotta", {"stats": "ema", "bn_momentum": 0.05}),
    ("cotta", {"stats": "ema", "bn_momentum": 0.05, "lr": 5e-6}),
    ("lame", {}),
]


def main() -> None:
    """Print one table row per configuration: method, options, error (%), seconds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--corruption", default="gaussian_noise")
    args = parser.parse_args()
    images, labels = load_fashion_mnist("test")
    stream = list(CorruptedView(images[: args.images], labels[: args.images], args.corruption, 5, batch_size=1))
    model = load_source_model()
    print(f"{args.images} images, {args.corruption} severity 5, batch size 1, threads={torch.get_num_threads()}")
    print("| method | options | error (%) | seconds |\n|---|---|--:|--:|")
    for method, options in CONFIGS:
        adapter = tta.wrap(model, method, **options)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the batch-of-1 warnings this script provokes
            wrong = sum(int(adapter(x).argmax(1).item() != y.item()) for x, y in stream)
        elapsed = time.perf_counter() - start
        print(f"| {method} | {options or 'defaults'} | {100 * wrong / len(stream):.1f} | {elapsed:.1f} |")


if __name__ == "__main__":
    main()
