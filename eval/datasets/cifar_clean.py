"""The clean CIFAR-10/100 test split (torchvision's / the authors' python-pickle files), the source domain of CIFAR-C.

RobustBench keeps ``CIFAR-10-C/`` and ``cifar-10-batches-py/`` side by side under one data folder, so the
clean split is looked for inside the CIFAR-C root and, failing that, in its parent folder; a file found in
the parent is named in a logged warning, since it lies outside ``--data-root``.

The file is a pickle, and a pickle can run any code when loaded. It is read with an unpickler that only
builds what the official release holds (dicts, lists, tuples, bytes, str, numbers and numpy uint8 arrays)
and refuses every other global, so a crafted file is an error, never a command.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from eval.datasets.labels import labels_problem

__all__ = ["CIFAR_TEST_FILES", "CIFAR_TRAIN_FILES", "CIFAR_CLASSES", "find_clean_cifar", "find_cifar_train",
           "load_cifar_pickle", "CifarCleanTest"]

logger = logging.getLogger(__name__)

# dataset -> (folder of the official python release, test file, label key); from the CIFAR release page.
CIFAR_TEST_FILES: dict[str, tuple[str, str, str]] = {
    "cifar10-c": ("cifar-10-batches-py", "test_batch", "labels"),
    "cifar100-c": ("cifar-100-python", "test", "fine_labels"),
}
#: dataset -> the training files of the same release (in the folder of ``CIFAR_TEST_FILES``), read in this order.
CIFAR_TRAIN_FILES: dict[str, tuple[str, ...]] = {
    "cifar10-c": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "cifar100-c": ("train",),
}
#: Classes of each dataset: every label must be below it.
CIFAR_CLASSES: dict[str, int] = {"cifar10-c": 10, "cifar100-c": 100}
_announced: set[Path] = set()


def find_clean_cifar(root: str | os.PathLike[str], dataset: str) -> Path:
    """Return the clean test file for ``dataset`` found in ``root`` or, logging a warning that names it, beside it.

    Raises:
        FileNotFoundError: naming every place looked at and the expected layout.
    """
    if dataset not in CIFAR_TEST_FILES:
        raise ValueError(f"no clean CIFAR split for {dataset!r}; choose one of {list(CIFAR_TEST_FILES)}")
    folder, name, _ = CIFAR_TEST_FILES[dataset]
    root = Path(root)
    found = _release_folder(root, dataset, (name,), f"clean {dataset} test split", "--data-root")
    if found is not None:
        return found / name
    inside, beside = root / folder / name, root.parent / folder / name
    raise FileNotFoundError(
        f"the clean domain of {dataset} needs the CIFAR python test split; looked for {inside} (inside --data-root) "
        f"and {beside} (its parent folder, RobustBench's data/ layout). Put the extracted official archive's "
        f"{folder}/ folder inside or next to the CIFAR-C folder"
    )


def find_cifar_train(root: str | os.PathLike[str], dataset: str, *, flag: str = "--data-root") -> list[Path]:
    """Return the training files of ``dataset`` (:data:`CIFAR_TRAIN_FILES`), looked for as :func:`find_clean_cifar` does.

    ``flag`` names where ``root`` came from, in the warning about a folder found beside it.

    Raises:
        FileNotFoundError: naming the places looked at and the files missing there.
    """
    if dataset not in CIFAR_TRAIN_FILES:
        raise ValueError(f"no CIFAR training split for {dataset!r}; choose one of {list(CIFAR_TRAIN_FILES)}")
    folder, names, root = CIFAR_TEST_FILES[dataset][0], CIFAR_TRAIN_FILES[dataset], Path(root)
    found = _release_folder(root, dataset, names, f"{dataset} training split", flag)
    if found is not None:
        return [found / name for name in names]
    missing = [name for name in names if not (root / folder / name).is_file()]
    raise FileNotFoundError(
        f"the {dataset} training split (the official CIFAR python release) is not in {root / folder} (missing "
        f"{', '.join(missing)}) nor in {root.parent / folder} (RobustBench's data/ layout); put the extracted "
        f"archive's {folder}/ folder there"
    )


def _release_folder(root: Path, dataset: str, names: tuple[str, ...], what: str, flag: str) -> Path | None:
    """Return the release folder holding every file of ``names``, inside ``root`` or beside it (with a warning)."""
    folder = CIFAR_TEST_FILES[dataset][0]
    inside, beside = root / folder, root.parent / folder
    if all((inside / name).is_file() for name in names):
        return inside
    if not all((beside / name).is_file() for name in names):
        return None
    if beside / names[0] not in _announced:
        _announced.add(beside / names[0])
        shown = beside / names[0] if len(names) == 1 else beside
        logger.warning("using the %s %s from the parent folder of %s %s (outside %s, RobustBench's data/ layout)",
                       what, shown, flag, root, flag)
    return beside


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global that a CIFAR python file never holds."""


def _latin1_bytes(text: object, encoding: object = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 bytes pickled with protocol 2 use it; latin-1 text only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _RefusedGlobal(f"_codecs.encode of {type(text).__name__} with encoding {encoding!r}")
    return text.encode("latin1")


_reconstruct = np.empty(0).__reduce__()[0]  # numpy's array reconstructor, whatever module it lives in
# The only globals a CIFAR python file needs: numpy arrays (numpy 1 and 2 names) and protocol-2 bytes.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
}


class _CifarUnpickler(pickle.Unpickler):
    """Builds plain containers, bytes, str, numbers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


def load_cifar_pickle(path: str | os.PathLike[str]) -> object:
    """Unpickle a CIFAR python file without running code from it (Python 2 ``str`` is read as latin-1).

    Raises:
        ValueError: The file asks for anything but the release's types, or is truncated or not a pickle.
    """
    try:
        with open(path, "rb") as handle:
            return _CifarUnpickler(handle, encoding="latin1").load()
    except _RefusedGlobal as error:
        raise ValueError(
            f"{path}: refused to load it, it asks for {error} and a CIFAR python file holds only dicts, lists, "
            "bytes, str, numbers and numpy arrays; replace it with the file from the official CIFAR python archive"
        ) from None
    except (pickle.UnpicklingError, EOFError, AttributeError, IndexError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a complete CIFAR python test split ({error!r})") from error


def _field(entry: dict[Any, Any], key: str) -> Any:
    """Return ``entry[key]`` under a str key (latin-1 reading) or a bytes key (Python 3 writers)."""
    return entry[key] if key in entry else entry[key.encode()]


class CifarCleanTest(Dataset[tuple[Tensor, Tensor]]):
    """The clean CIFAR test images as items ``(x in [0,1] (3, 32, 32), y)``.

    Args:
        path: The pickle file returned by :func:`find_clean_cifar`.
        dataset: ``cifar10-c`` or ``cifar100-c`` (which label key to read and how many classes).
        limit: Use only the first ``limit`` images.

    Raises:
        ValueError: If the file is refused, truncated or not a CIFAR test split, or a label is not a class.
    """

    def __init__(self, path: str | os.PathLike[str], dataset: str, *, limit: int | None = None) -> None:
        label_key = CIFAR_TEST_FILES[dataset][2]
        entry = load_cifar_pickle(path)
        try:
            data, labels = _field(entry, "data"), np.asarray(_field(entry, label_key))  # type: ignore[arg-type]
        except (KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a CIFAR python test split (no {error} entry)") from error
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise ValueError(f"{path}: expected (N, 3072) uint8 images, found {found}")
        problem = labels_problem(path, labels, CIFAR_CLASSES[dataset])
        if problem or len(labels) != len(data):
            raise ValueError(problem or f"{path}: {len(data)} images but {len(labels)} labels")
        count = len(labels) if limit is None else min(limit, len(labels))
        self.images = data[:count].reshape(-1, 3, 32, 32)
        self.labels = labels[:count].astype(np.int64)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(self.images[index].copy()).float().div_(255.0), torch.tensor(int(self.labels[index]))
