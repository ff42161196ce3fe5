"""The source (training) split of each benchmark suite, for methods whose ``needs`` has ``"source_data"``.

The batches are ``(x, y)`` with ``x`` in ``[0, 1]``, built by the same path as the suite's test data, so
the suite's model (which normalizes inside) takes them as they are:

- ``fmnist-c``: the Fashion-MNIST training split, from the folder of the test split (``--data-root``,
  ``$TTA_FASHION_MNIST``, then Debian's ``dataset-fashion-mnist``), batched like the clean test split;
- ``cifar10-c`` / ``cifar100-c``: the training files of the official CIFAR python release
  (``cifar-10-batches-py/data_batch_1..5``, ``cifar-100-python/train``), looked for inside ``--data-root``
  and beside it as the clean test split is, and read with the same restricted unpickler;
- ``imagenet-c``: an ImageNet training folder of ``<wnid>/<image>`` class folders, given with
  ``--source-data PATH`` (there is no default), preprocessed as the test images (``--preprocess``). Its
  images are taken one class after another (the first image of each class, then the second, ...), so
  any prefix of them, such as the first ``limit``, covers the classes evenly.

``--source-data PATH`` (``SuiteSpec.source_data``) replaces the default location for every dataset: the
IDX folder for ``fmnist-c``, the release folder or the folder holding it for CIFAR.

The files are found when the split is made (a missing file is an error before any work) and read
each time it is iterated, so a pass that stops early (a method's ``limit``) reads only what it uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Protocol

from torch import Tensor
from torch.utils.data import DataLoader, Subset

from tta.checks import check_int
from eval.datasets.cifar_clean import CIFAR_CLASSES, CIFAR_TEST_FILES, CIFAR_TRAIN_FILES, CifarCleanTest, find_cifar_train
from eval.datasets.fashion_mnist import load_fashion_mnist, resolve_fashion_mnist_root
from eval.datasets.folder import ImageFolderDomain, Preprocess, class_folders
from eval.datasets.on_the_fly import CorruptedView
from eval.domains import Domain

__all__ = ["DEFAULT_SOURCE_BATCH_SIZE", "SourceSpec", "SourceSplit", "check_source_data", "source_training_data"]

DEFAULT_SOURCE_BATCH_SIZE = 64
"""Images per source batch unless the caller asks for another size."""

_IMAGENET_CLASSES = 1000
Batches = Iterable[tuple[Tensor, Tensor]]
Part = Callable[[int | None], Batches]
"""One file or folder of a split: called with the images still wanted (``None``: all), returns their batches."""


class SourceSpec(Protocol):
    """The fields of a suite spec (:class:`eval.models.suites.SuiteSpec`) that locate its source data."""

    @property
    def dataset(self) -> str: ...

    @property
    def data_root(self) -> Path | None: ...

    @property
    def source_data(self) -> Path | None: ...

    @property
    def preprocess(self) -> Preprocess: ...

    @property
    def num_workers(self) -> int: ...


class SourceSplit:
    """A suite's training split as re-iterable ``(x, y)`` batches in ``[0, 1]``; each pass reads the files anew.

    Args:
        name: What the split is, for ``repr``.
        parts: The split's files or folders in reading order.
        limit: Yield at most this many images (``None``: all).
    """

    def __init__(self, name: str, parts: Sequence[Part], *, limit: int | None = None) -> None:
        self.name, self.parts, self.limit = name, tuple(parts), limit

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield the batches in order, reading no part beyond the one that reaches ``limit``."""
        remaining = self.limit
        for part in self.parts:
            for x, y in part(remaining):
                yield x, y
                remaining = None if remaining is None else remaining - len(x)
            if remaining is not None and remaining <= 0:
                return

    def __repr__(self) -> str:
        """Return what the split is and its limit."""
        return f"SourceSplit({self.name!r}, parts={len(self.parts)}, limit={self.limit})"


def check_source_data(spec: SourceSpec) -> None:
    """Raise unless the source data of ``spec``'s suite is where it is looked for (nothing is read).

    Raises:
        FileNotFoundError: Naming the files or folder missing, where they were looked for and the fix.
        ValueError: An ImageNet training folder with more class folders than the model's 1000 classes.
    """
    _locate(spec, DEFAULT_SOURCE_BATCH_SIZE)


def source_training_data(
    spec: SourceSpec, *, limit: int | None = None, batch_size: int = DEFAULT_SOURCE_BATCH_SIZE
) -> SourceSplit:
    """Return the suite's training split as ``(x, y)`` batches in ``[0, 1]`` (see the module docstring).

    Args:
        spec: The suite's spec; ``spec.source_data`` replaces the default location.
        limit: Yield only the first ``limit`` images (``None``: all of them).
        batch_size: Images per batch; the last may be smaller.

    Raises:
        FileNotFoundError, ValueError: As :func:`check_source_data`; ``ValueError``/``TypeError`` for a
            ``limit`` or ``batch_size`` that is not an int >= 1. A file that is unreadable raises
            ``ValueError`` naming it when it is read.
    """
    if limit is not None:
        check_int("limit", limit, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    name, parts = _locate(spec, batch_size)
    return SourceSplit(name, parts, limit=limit)


def _locate(spec: SourceSpec, batch_size: int) -> tuple[str, tuple[Part, ...]]:
    """Return the split's name and parts, raising if its files are not found."""
    if spec.dataset == "fmnist-c":
        return "fashion-mnist/train", (partial(_fmnist_batches, _fmnist_root(spec), batch_size),)
    if spec.dataset in CIFAR_TRAIN_FILES:
        files = _cifar_files(spec)
        return f"{spec.dataset}/train", tuple(partial(_cifar_batches, path, spec.dataset, batch_size) for path in files)
    if spec.dataset == "imagenet-c":
        folder = _imagenet_folder(spec.source_data)
        return f"imagenet/train:{folder}", (
            partial(_folder_batches, folder, spec.preprocess, batch_size, spec.num_workers),)
    raise ValueError(f"no source data is known for dataset {spec.dataset!r}")


def _fmnist_root(spec: SourceSpec) -> Path:
    """Return the Fashion-MNIST folder that holds the training split (``--source-data``, else as the test split)."""
    try:
        return resolve_fashion_mnist_root(spec.source_data or spec.data_root, splits=("train",))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"methods that use source data read the Fashion-MNIST training split: {error} "
                                "Or pass --source-data DIR, a folder of the training split's IDX files.") from None


def _fmnist_batches(root: Path, batch_size: int, limit: int | None) -> CorruptedView:
    images, labels = load_fashion_mnist("train", root)
    return CorruptedView(images, labels, "clean", 0, batch_size=batch_size, limit=limit)


def _cifar_files(spec: SourceSpec) -> list[Path]:
    """Return the CIFAR training files: in ``--source-data`` (the release folder, or as under ``--data-root``),
    else inside or beside ``--data-root``."""
    if spec.source_data is None:
        if spec.data_root is None:
            raise ValueError(f"{spec.dataset} needs --data-root (its training split is looked for there) "
                             "or --source-data PATH")
        try:
            return find_cifar_train(spec.data_root, spec.dataset)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"methods that use source data read the {spec.dataset} training split: {error}, "
                                    "or pass --source-data PATH (the release folder)") from None
    release = Path(spec.source_data)
    names = CIFAR_TRAIN_FILES[spec.dataset]
    if all((release / name).is_file() for name in names):
        return [release / name for name in names]
    try:
        return find_cifar_train(release, spec.dataset, flag="--source-data")
    except FileNotFoundError as error:
        folder = CIFAR_TEST_FILES[spec.dataset][0]
        raise FileNotFoundError(f"--source-data {release}: neither the {folder}/ release folder (holding "
                                f"{', '.join(names)}) nor a folder holding it; {error}") from None


def _cifar_batches(path: Path, dataset: str, batch_size: int, limit: int | None) -> DataLoader[tuple[Tensor, Tensor]]:
    return DataLoader(CifarCleanTest(path, dataset, limit=limit), batch_size=batch_size, shuffle=False)


def _imagenet_folder(source_data: Path | None) -> Path:
    """Return the ImageNet training folder after checking it has between 1 and 1000 class folders."""
    if source_data is None:
        raise FileNotFoundError("imagenet-c has no default source data: methods that use it need the ImageNet "
                                "training folder (<wnid>/<image> class folders, the classes of the test folders); "
                                "pass --source-data PATH")
    folder = Path(source_data)
    if not folder.is_dir():
        raise FileNotFoundError(f"--source-data {folder}: no such folder; pass the ImageNet training folder "
                                "(<wnid>/<image> class folders)")
    classes = class_folders(folder)
    if not classes:
        raise FileNotFoundError(f"--source-data {folder} has no class folders; pass the ImageNet training folder "
                                "(<wnid>/<image> class folders)")
    if len(classes) > _IMAGENET_CLASSES:
        raise ValueError(f"--source-data {folder} has {len(classes)} class folders but the model has "
                         f"{_IMAGENET_CLASSES} classes; pass the ImageNet training folder")
    return folder


def _folder_batches(folder: Path, preprocess: Preprocess, batch_size: int, workers: int,
                    limit: int | None) -> DataLoader[tuple[Tensor, Tensor]]:
    dataset = ImageFolderDomain(folder, Domain("clean", 0), preprocess=preprocess)
    order = _class_by_class([label for _, label in dataset.items])[:limit]
    return DataLoader(Subset(dataset, order), batch_size=batch_size, shuffle=False, num_workers=workers)


def _class_by_class(labels: Sequence[int]) -> list[int]:
    """Return the indices of ``labels`` round-robin over the classes: each class's first item, then its second, ..."""
    rank: dict[int, int] = {}
    keyed = []
    for index, label in enumerate(labels):
        rank[label] = rank.get(label, 0) + 1
        keyed.append((rank[label], label, index))
    return [index for _, _, index in sorted(keyed)]
