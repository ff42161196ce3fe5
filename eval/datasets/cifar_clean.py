"""The clean CIFAR-10/100 test split (torchvision's / the authors' python-pickle files), the source domain of CIFAR-C.

RobustBench keeps ``CIFAR-10-C/`` and ``cifar-10-batches-py/`` side by side under one data folder, so the
clean split is looked for inside the CIFAR-C root and next to it.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["CIFAR_TEST_FILES", "find_clean_cifar", "CifarCleanTest"]

# dataset -> (folder of the official python release, test file, label key); from the CIFAR release page.
CIFAR_TEST_FILES: dict[str, tuple[str, str, str]] = {
    "cifar10-c": ("cifar-10-batches-py", "test_batch", "labels"),
    "cifar100-c": ("cifar-100-python", "test", "fine_labels"),
}


def find_clean_cifar(root: str | os.PathLike[str], dataset: str) -> Path:
    """Return the clean test file for ``dataset`` found in ``root`` or beside it.

    Raises:
        FileNotFoundError: naming every place looked at and the expected layout.
    """
    if dataset not in CIFAR_TEST_FILES:
        raise ValueError(f"no clean CIFAR split for {dataset!r}; choose one of {list(CIFAR_TEST_FILES)}")
    folder, name, _ = CIFAR_TEST_FILES[dataset]
    root = Path(root)
    candidates = [root / folder / name, root.parent / folder / name]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"the clean domain of {dataset} needs the CIFAR python test split; looked for "
        f"{', '.join(str(p) for p in candidates)}. Put the extracted official archive's {folder}/ folder "
        "inside or next to the CIFAR-C folder (RobustBench's data/ layout)"
    )


class CifarCleanTest(Dataset[tuple[Tensor, Tensor]]):
    """The clean CIFAR test images as items ``(x in [0,1] (3, 32, 32), y)``.

    Args:
        path: The pickle file returned by :func:`find_clean_cifar`.
        dataset: ``cifar10-c`` or ``cifar100-c`` (which label key to read).
        limit: Use only the first ``limit`` images.

    Raises:
        ValueError: If the file is truncated or not a CIFAR test split.
    """

    def __init__(self, path: str | os.PathLike[str], dataset: str, *, limit: int | None = None) -> None:
        label_key = CIFAR_TEST_FILES[dataset][2]
        try:
            with open(path, "rb") as handle:
                entry = pickle.load(handle, encoding="latin1")  # the official release's own format
            data = np.asarray(entry["data"], dtype=np.uint8)
            labels = np.asarray(entry[label_key], dtype=np.int64)
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path} is not a complete CIFAR python test split ({error!r})") from error
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
            raise ValueError(f"{path}: expected (N, 3072) uint8 images and N labels, got {data.shape} and {labels.shape}")
        count = len(labels) if limit is None else min(limit, len(labels))
        self.images = data[:count].reshape(-1, 3, 32, 32)
        self.labels = labels[:count]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(self.images[index].copy()).float().div_(255.0), torch.tensor(int(self.labels[index]))
