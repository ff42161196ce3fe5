"""A deterministic corrupted view of a clean in-memory dataset, as a stream of batches.

Small datasets (Fashion-MNIST, tests) are corrupted on the fly instead of being pre-rendered.
Batch ``k`` is corrupted with a ``torch.Generator`` seeded from ``(seed, corruption, severity,
k)`` by a stable hash, so any batch can be reproduced on its own and results never depend on
what was iterated before. Because the seed is per batch, the corrupted pixels depend on
``batch_size``; keep it fixed when comparing methods.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
from torch import Tensor

from eval.domains import Domain

__all__ = ["CorruptedView", "batch_seed"]


def batch_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    """Return a 63-bit seed for one batch, stable across processes and Python versions.

    Python's ``hash()`` of a string is salted per process, so a cryptographic digest is used.

    Example:
        >>> batch_seed(0, "gaussian_noise", 5, 3) == batch_seed(0, "gaussian_noise", 5, 3)
        True
    """
    key = f"{seed}|{corruption}|{severity}|{index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") & (2**63 - 1)


def _corrupt(x: Tensor, name: str, severity: int, generator: torch.Generator, table: str) -> Tensor:
    # Imported here so datasets stay importable on their own.
    from eval.corruptions import corrupt

    return corrupt(x, name, severity, generator=generator, table=table)  # type: ignore[arg-type]


class CorruptedView:
    """Batches ``(x, y)`` of a clean dataset under one corruption, in fixed order.

    Args:
        images: Clean images ``(N, C, H, W)``, uint8 in ``0..255`` or float in ``[0, 1]``.
        labels: Class indices ``(N,)``.
        corruption: A name known to :func:`eval.corruptions.corrupt`, or ``"clean"``.
        severity: 1..5, or 0 for ``"clean"``.
        batch_size: Images per batch; the last batch may be smaller.
        seed: Base seed of the per-batch generators.
        limit: Use only the first ``limit`` examples.
        device: Where batches are built, corrupted and returned.
        table: Severity constants of :func:`eval.corruptions.corrupt`: ``"auto"``, ``"imagenet"`` or ``"cifar"``.

    Raises:
        ValueError: On a bad severity, batch size, limit, or mismatched images and labels.

    Example:
        >>> view = CorruptedView(torch.zeros(5, 1, 4, 4, dtype=torch.uint8), torch.zeros(5, dtype=torch.long),
        ...                      "clean", 0, batch_size=2)
        >>> len(view), view.num_examples, [tuple(x.shape) for x, _ in view]
        (3, 5, [(2, 1, 4, 4), (2, 1, 4, 4), (1, 1, 4, 4)])
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        corruption: str,
        severity: int,
        *,
        batch_size: int,
        seed: int = 0,
        limit: int | None = None,
        device: torch.device | str = "cpu",
        table: str = "auto",
    ) -> None:
        self.domain = Domain(corruption, severity)
        _check_data(images, labels, batch_size, limit)
        count = len(images) if limit is None else min(limit, len(images))
        self.images, self.labels = images[:count], labels[:count]
        self.batch_size, self.seed, self.device, self.table = batch_size, seed, torch.device(device), table

    @property
    def num_examples(self) -> int:
        """Number of examples the view yields."""
        return len(self.images)

    def __len__(self) -> int:
        """Return the number of batches."""
        return -(-self.num_examples // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield the batches in order."""
        for index in range(len(self)):
            yield self.batch(index)

    def batch(self, index: int) -> tuple[Tensor, Tensor]:
        """Return batch ``index``, corrupted exactly as iteration would produce it.

        Returns:
            ``(x, y)``: float images in ``[0, 1]`` ``(B, C, H, W)`` and labels ``(B,)``, on ``device``.

        Raises:
            IndexError: If ``index`` is not in ``range(len(self))``.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches")
        window = slice(index * self.batch_size, (index + 1) * self.batch_size)
        x = _to_unit_float(self.images[window].to(self.device))
        y = self.labels[window].to(self.device)
        if self.domain.corruption == "clean":
            return x, y
        generator = torch.Generator(device=self.device)
        generator.manual_seed(batch_seed(self.seed, self.domain.corruption, self.domain.severity, index))
        return _corrupt(x, self.domain.corruption, self.domain.severity, generator, self.table), y

    def __repr__(self) -> str:
        """Return a summary of the view."""
        return (
            f"CorruptedView({self.domain}, num_examples={self.num_examples}, batch_size={self.batch_size}, "
            f"seed={self.seed}, device={self.device})"
        )


def _to_unit_float(images: Tensor) -> Tensor:
    # Always a new tensor, so neither adapters nor corruptions can write into the clean data.
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.to(torch.float32, copy=True)


def _check_data(images: Tensor, labels: Tensor, batch_size: int, limit: int | None) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"labels must be ({len(images)},) to match the images, got shape {tuple(labels.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
