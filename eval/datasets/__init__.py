"""Datasets: Fashion-MNIST from local IDX files and deterministic on-the-fly corrupted views."""

from __future__ import annotations

from eval.datasets.fashion_mnist import (
    DEBIAN_FASHION_MNIST,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ENV,
    FASHION_MNIST_FILES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    load_fashion_mnist,
    read_idx,
    resolve_fashion_mnist_root,
    write_idx,
)
from eval.datasets.on_the_fly import CorruptedView, batch_seed

__all__ = [
    "DEBIAN_FASHION_MNIST",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ENV",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "CorruptedView",
    "batch_seed",
    "load_fashion_mnist",
    "read_idx",
    "resolve_fashion_mnist_root",
    "write_idx",
]
