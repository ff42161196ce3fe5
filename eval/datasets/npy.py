"""CIFAR-10-C / CIFAR-100-C ``.npy`` layout: ``<root>/<corruption>.npy`` (5 severities stacked) + ``labels.npy``.

Arrays are memory-mapped, so a domain is read batch by batch, never loaded whole.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from eval.domains import Domain

__all__ = ["NpyCorruptionDomain", "check_npy_root", "open_npy_array"]


def open_npy_array(path: Path) -> np.ndarray:
    """Memory-map an ``.npy`` file; a missing, unreadable or truncated file raises naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path} is not a complete .npy array (truncated or corrupt: {error})") from error
    if not isinstance(array, np.ndarray):  # an .npz archive loads as a mapping of arrays
        raise ValueError(f"{path} holds a {type(array).__name__}, expected a single .npy array")
    return array


def _check_shape(path: Path, array: np.ndarray, rows: int) -> str | None:
    if array.ndim != 4 or array.shape[0] != rows or array.shape[3] not in (1, 3) or array.dtype != np.uint8:
        return f"{path}: expected uint8 (5 x N = {rows}, H, W, C) images, found {array.dtype} {array.shape}"
    return None


def check_npy_root(root: str | os.PathLike[str], corruptions: Sequence[str]) -> int:
    """Check ``labels.npy`` and every ``<corruption>.npy``; return N (images per severity).

    Raises:
        FileNotFoundError: listing every missing file at once.
        ValueError: listing every truncated or mis-shaped file at once.
    """
    root = Path(root)
    files = [root / "labels.npy", *(root / f"{c}.npy" for c in corruptions)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-C layout under {root} is missing {len(missing)} file(s): {missing}")
    problems, rows = [], 0
    try:
        labels = open_npy_array(files[0])
        rows = int(labels.shape[0])
    except ValueError as error:
        problems.append(str(error))
    for path in files[1:]:
        try:
            problem = _check_shape(path, open_npy_array(path), rows)
        except ValueError as error:
            problem = str(error)
        if problem:
            problems.append(problem)
    if problems or rows % 5:
        problems += [f"{files[0]}: {rows} labels is not 5 severities x N"] if rows % 5 else []
        raise ValueError("CIFAR-C layout problems:\n  " + "\n  ".join(problems))
    return rows // 5


class NpyCorruptionDomain(Dataset[tuple[Tensor, Tensor]]):
    """One (corruption, severity) domain of a CIFAR-C style folder: items ``(x in [0,1] (C,H,W), y)``.

    Args:
        root: Folder holding ``<corruption>.npy`` and ``labels.npy``.
        domain: Which corruption and severity (1..5).
        limit: Use only the first ``limit`` images of the severity block (RobustBench's ``n_examples``).
    """

    def __init__(self, root: str | os.PathLike[str], domain: Domain, *, limit: int | None = None) -> None:
        if domain.corruption == "clean":
            raise ValueError("the CIFAR-C layout has no clean domain; use the clean CIFAR test set as its own folder")
        per_severity = check_npy_root(root, [domain.corruption])
        start = (domain.severity - 1) * per_severity
        count = per_severity if limit is None else min(limit, per_severity)
        self.images = open_npy_array(Path(root) / f"{domain.corruption}.npy")[start:start + count]
        self.labels = open_npy_array(Path(root) / "labels.npy")[start:start + count]
        self.domain = domain

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = torch.from_numpy(np.array(self.images[index], copy=True)).permute(2, 0, 1)
        return image.float().div_(255.0), torch.tensor(int(self.labels[index]))
