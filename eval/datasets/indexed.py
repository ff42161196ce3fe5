"""Batches of a map-style dataset that protocols can re-order by index without reading every image first.

The label-shift protocols need a domain's labels to choose an order, and the sample-mixed protocol
draws samples of every domain in one random order. With a plain loader both must hold whole domains
in memory (a full ImageNet-C domain does not fit). An :class:`IndexedLoader` knows its dataset's
labels without decoding images and hands out a loader over any order of indices, so those protocols
read the samples batch by batch, in the order they are used; the batches equal the in-memory ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from eval.datasets.cifar_clean import CifarCleanTest
from eval.datasets.folder import ImageFolderDomain
from eval.datasets.npy import NpyCorruptionDomain

__all__ = ["IndexedLoader", "dataset_labels"]

Sample = tuple[Tensor, Tensor]


def dataset_labels(dataset: Dataset[Sample]) -> Tensor | None:
    """Return the labels of ``dataset`` in item order, read without loading images; ``None`` if unknown."""
    if isinstance(dataset, Subset):
        labels = dataset_labels(dataset.dataset)
        return None if labels is None else labels[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    if isinstance(dataset, (NpyCorruptionDomain, CifarCleanTest)):
        return torch.from_numpy(np.array(dataset.labels, dtype=np.int64))  # a copy: the labels may be memory-mapped
    if isinstance(dataset, ImageFolderDomain):
        return torch.tensor([label for _, label in dataset.items], dtype=torch.long)
    return None


class IndexedLoader:
    """A domain's batches in item order, which can also be drawn in any order of indices.

    Args:
        dataset: The domain's map-style dataset.
        labels: Its labels in item order (see :func:`dataset_labels`).
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        pin_memory: Pin batches for faster copies to a GPU.
    """

    def __init__(self, dataset: Dataset[Sample], labels: Tensor, *, batch_size: int, num_workers: int = 0,
                 pin_memory: bool = False) -> None:
        if len(labels) != len(dataset):  # type: ignore[arg-type]
            raise ValueError(f"{len(labels)} labels for a dataset of {len(dataset)} items")  # type: ignore[arg-type]
        self.dataset, self._labels = dataset, labels
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory

    def labels(self) -> Tensor:
        """Return the labels in item order (no image is read)."""
        return self._labels

    def __len__(self) -> int:
        return -(-len(self._labels) // self.batch_size)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self._loader(self.dataset))

    def in_order(self, indices: Tensor | Sequence[int]) -> DataLoader[Sample]:
        """Return a loader of the samples at ``indices``, in that order, at this loader's batch size."""
        return self._loader(Subset(self.dataset, _as_list(indices)))

    @staticmethod
    def mixed(loaders: Sequence[IndexedLoader], order: Tensor | Sequence[int]) -> DataLoader[Sample]:
        """Return a loader over the samples of all ``loaders`` (indexed one after another) in ``order``.

        Batches take the first loader's batch size and loading settings.
        """
        joined: ConcatDataset[Sample] = ConcatDataset([loader.dataset for loader in loaders])
        return loaders[0]._loader(Subset(joined, _as_list(order)))

    def _loader(self, dataset: Dataset[Sample]) -> DataLoader[Sample]:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          pin_memory=self.pin_memory)


def _as_list(indices: Tensor | Sequence[int]) -> list[int]:
    return indices.tolist() if isinstance(indices, Tensor) else [int(i) for i in indices]
