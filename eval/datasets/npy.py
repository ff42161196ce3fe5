"""CIFAR-10-C / CIFAR-100-C ``.npy`` layout: ``<root>/<corruption>.npy`` (severities stacked) + ``labels.npy``.

The official release stacks all five severities (``5 * 10000`` rows). A folder written by ``tta corrupt``
may hold fewer; it records which in ``severities.json`` (``{"severities": [...], "images_per_severity": N}``),
so that a severity is never read from rows that hold another. Arrays are memory-mapped, so a domain is read
batch by batch, never loaded whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from eval.datasets.labels import labels_problem
from eval.domains import Domain

__all__ = ["NPY_LAYOUT_FILE", "NpyLayout", "NpyCorruptionDomain", "check_npy_root", "open_npy_array",
           "read_npy_layout", "write_npy_layout"]

#: The record of which severities a folder's arrays stack (written by ``tta corrupt``).
NPY_LAYOUT_FILE = "severities.json"
_ALL_SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class NpyLayout:
    """What every array of a folder stacks: ``severities`` (increasing), each a block of ``per_severity`` rows."""

    severities: tuple[int, ...]
    per_severity: int
    recorded: bool = True

    @property
    def rows(self) -> int:
        """Rows of every ``<corruption>.npy`` and of ``labels.npy``."""
        return len(self.severities) * self.per_severity

    def describe(self) -> str:
        """Say where the severities come from, for messages."""
        return f"recorded in {NPY_LAYOUT_FILE}" if self.recorded else f"no {NPY_LAYOUT_FILE}: all five, as released"


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


def write_npy_layout(root: str | os.PathLike[str], layout: NpyLayout) -> Path:
    """Write ``<root>/severities.json`` atomically; return its path."""
    path = Path(root) / NPY_LAYOUT_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"severities": list(layout.severities), "images_per_severity": layout.per_severity}))
    os.replace(tmp, path)
    return path


def read_npy_layout(root: str | os.PathLike[str], label_rows: int) -> NpyLayout:
    """Return the severities stacked in ``root``'s arrays, given the rows of its ``labels.npy``.

    Without ``severities.json`` the folder must be the official release's shape: five severities,
    so ``label_rows`` must be ``5 * N``.

    Raises:
        ValueError: The record is unreadable or does not match ``label_rows``, or there is no record
            and ``label_rows`` is not a multiple of 5.
    """
    root = Path(root)
    record = root / NPY_LAYOUT_FILE
    labels = root / "labels.npy"
    if not record.is_file():
        if label_rows % 5 or label_rows == 0:
            raise ValueError(f"{labels}: {label_rows} labels is not 5 severities x N, and there is no {record} "
                             "saying which severities the arrays hold (tta corrupt writes one)")
        return NpyLayout(_ALL_SEVERITIES, label_rows // 5, recorded=False)
    layout = _parse_record(record)
    if label_rows != layout.rows:
        raise ValueError(f"{labels} holds {label_rows} labels but {record} records {len(layout.severities)} "
                         f"severities x {layout.per_severity} images = {layout.rows}; "
                         "rewrite the folder with tta corrupt")
    return layout


def _parse_record(record: Path) -> NpyLayout:
    try:
        entry = json.loads(record.read_text())
        severities, count = entry["severities"], entry["images_per_severity"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{record} is not a severity record ({error}); rewrite the folder with tta corrupt") from None
    valid = (isinstance(severities, list) and severities == sorted(set(severities))
             and all(type(s) is int and s in _ALL_SEVERITIES for s in severities) and bool(severities)
             and type(count) is int and count > 0)
    if not valid:
        raise ValueError(f"{record} must hold increasing distinct severities in 1..5 and a positive "
                         f"images_per_severity, found {entry}; rewrite the folder with tta corrupt")
    return NpyLayout(tuple(severities), count)


def _check_shape(path: Path, array: np.ndarray, layout: NpyLayout | None) -> str | None:
    rows_ok = layout is None or array.shape[:1] == (layout.rows,)
    if array.ndim != 4 or not rows_ok or array.shape[3] not in (1, 3) or array.dtype != np.uint8:
        rows = "N" if layout is None else f"{len(layout.severities)} x {layout.per_severity} = {layout.rows}"
        return f"{path}: expected uint8 ({rows}, H, W, C) images, found {array.dtype} {array.shape}"
    return None


def _severity_problem(path: Path, layout: NpyLayout, severities: Sequence[int]) -> str | None:
    absent = sorted(set(severities) - set(layout.severities))
    if not absent:
        return None
    return (f"{path} holds severities {list(layout.severities)} ({layout.describe()}); it has no severity "
            f"{', '.join(map(str, absent))}: ask for those it holds or write the others with tta corrupt")


def _check_root(root: Path, corruptions: Sequence[str], severities: Sequence[int],
                num_classes: int | None) -> NpyLayout:
    files = [root / "labels.npy", *(root / f"{c}.npy" for c in corruptions)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-C layout under {root} is missing {len(missing)} file(s): {missing}")
    problems: list[str] = []
    layout = None
    try:
        labels = open_npy_array(files[0])
        problem = labels_problem(files[0], labels, num_classes)
        if problem is None:
            layout = read_npy_layout(root, int(labels.shape[0]))
        else:
            problems.append(problem)
    except ValueError as error:
        problems.append(str(error))
    for path in files[1:]:
        try:
            problem = _check_shape(path, open_npy_array(path), layout)
        except ValueError as error:
            problem = str(error)
        if problem is None and layout is not None:
            problem = _severity_problem(path, layout, severities)
        if problem:
            problems.append(problem)
    if problems or layout is None:
        raise ValueError("CIFAR-C layout problems:\n  " + "\n  ".join(problems))
    return layout


def check_npy_root(root: str | os.PathLike[str], corruptions: Sequence[str], *, severities: Sequence[int] = (),
                   num_classes: int | None = None) -> int:
    """Check ``labels.npy`` and every ``<corruption>.npy``; return N (images per severity).

    Args:
        root: The CIFAR-C folder.
        corruptions: The corruption files to check.
        severities: Severities that will be read; each must be stacked in the files.
        num_classes: When known, labels must be below it.

    Raises:
        FileNotFoundError: listing every missing file at once.
        ValueError: listing every truncated, mis-shaped or mislabelled file and every absent severity at once.
    """
    return _check_root(Path(root), corruptions, severities, num_classes).per_severity


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
        layout = _check_root(Path(root), [domain.corruption], [domain.severity], None)
        start = layout.severities.index(domain.severity) * layout.per_severity
        count = layout.per_severity if limit is None else min(limit, layout.per_severity)
        self.images = open_npy_array(Path(root) / f"{domain.corruption}.npy")[start:start + count]
        self.labels = open_npy_array(Path(root) / "labels.npy")[start:start + count]
        self.domain = domain

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = torch.from_numpy(np.array(self.images[index], copy=True)).permute(2, 0, 1)
        return image.float().div_(255.0), torch.tensor(int(self.labels[index]))
