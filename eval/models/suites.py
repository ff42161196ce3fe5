"""Benchmark suites: a dataset layout plus its model, opened into per-domain batch streams.

``fmnist-c`` corrupts the Fashion-MNIST test set on the fly for the shipped model; ``cifar10-c``
and ``cifar100-c`` read the ``.npy`` layout; ``imagenet-c`` reads the folder layout. For the last
three the model is an architecture name plus a local weights file (``ModelSpec``). The suite's
``name`` records what makes results comparable (layout, preprocessing, subset, corruption engine).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from eval.models.architectures import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, build_model
from eval.corruptions import ENGINE_VERSION
from eval.datasets import CorruptedView, load_fashion_mnist
from eval.datasets.cifar_clean import CifarCleanTest, find_clean_cifar
from eval.datasets.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from eval.datasets.folder import ImageFolderDomain, Preprocess, check_folder_root
from eval.datasets.indexed import IndexedLoader, dataset_labels
from eval.datasets.npy import NpyCorruptionDomain, check_npy_root
from eval.datasets.source_split import source_training_data
from eval.domains import Domain
from eval.models.source import DEFAULT_CHECKPOINT, load_source_model
from tta.base import Need
from tta.registry import get_adapter_class

__all__ = ["DATASETS", "SEVERITY_TABLES", "SUITE_SETTINGS", "SuiteSpec", "Suite", "normalization", "open_suite",
           "model_id", "used_settings"]

DatasetName = Literal["fmnist-c", "cifar10-c", "cifar100-c", "imagenet-c"]
DATASETS: tuple[str, ...] = ("fmnist-c", "cifar10-c", "cifar100-c", "imagenet-c")
_CLASSES = {"cifar10-c": 10, "cifar100-c": 100, "imagenet-c": 1000}
# RobustBench's CIFAR models (e.g. the Standard WideResNet-28-10) take unnormalized [0, 1] inputs;
# torchvision's ImageNet models expect the ImageNet statistics. Pass --mean/--std for other models.
_DEFAULT_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10-c": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), "cifar100-c": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "imagenet-c": (IMAGENET_MEAN, IMAGENET_STD),
}
SEVERITY_TABLES: tuple[str, ...] = ("cifar", "imagenet")
"""Severity constants ``fmnist-c`` can corrupt with (:mod:`eval.corruptions`); the first is the default."""
_ON_DISK = ("data_root", "arch", "weights", "mean", "std", "num_workers", "source_data")
SUITE_SETTINGS: dict[str, tuple[str, ...]] = {
    "fmnist-c": ("data_root", "checkpoint", "severity_table", "source_data"),
    "cifar10-c": _ON_DISK, "cifar100-c": _ON_DISK,
    "imagenet-c": (*_ON_DISK, "preprocess", "per_class", "subset_file", "classes"),
}
"""The :class:`SuiteSpec` fields each dataset uses; the others are refused by ``tta bench`` and not recorded."""

Loader = Iterable[tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class SuiteSpec:
    """Where the data and the model come from."""

    dataset: DatasetName = "fmnist-c"
    data_root: Path | None = None
    checkpoint: Path = DEFAULT_CHECKPOINT
    arch: str | None = None
    weights: Path | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    preprocess: Preprocess = "res256crop224"
    per_class: int | None = None
    subset_file: Path | None = None
    num_workers: int = 0
    source_data: Path | None = None
    """Where the source (training) split is, for methods that need source data; ``None``: the suite's default
    (:mod:`eval.datasets.source_split`)."""
    classes: Path | None = None
    """``imagenet-c``: the model's class names, one wnid a line in its output order; labels are indices in it."""
    severity_table: str = "cifar"
    """``fmnist-c``: the severity constants, CIFAR-10-C's (the default) or ImageNet-C's (see :data:`SEVERITY_TABLES`)."""

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {list(DATASETS)}")
        if self.severity_table not in SEVERITY_TABLES:
            raise ValueError(f"unknown severity table {self.severity_table!r}; choose one of {list(SEVERITY_TABLES)}")
        if self.dataset != "fmnist-c" and (self.data_root is None or self.arch is None or self.weights is None):
            raise ValueError(f"{self.dataset} needs --data-root (the corrupted data), --model (an architecture "
                             "name such as resnet50) and --weights (a local state_dict file)")


def used_settings(spec: SuiteSpec) -> dict[str, object]:
    """Return the dataset and the settings of ``spec`` it uses (:data:`SUITE_SETTINGS`), with the normalization resolved."""
    settings: dict[str, object] = {"dataset": spec.dataset}
    settings.update({name: getattr(spec, name) for name in SUITE_SETTINGS[spec.dataset]})
    if spec.dataset != "fmnist-c":
        settings["mean"], settings["std"] = normalization(spec)
    return settings


def normalization(spec: SuiteSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return the ``(mean, std)`` put inside an on-disk suite's model: ``--mean/--std``, else the dataset's default.

    The embedded ``fmnist-c`` model carries its own (Fashion-MNIST's statistics).
    """
    if spec.dataset == "fmnist-c":
        return FASHION_MNIST_MEAN, FASHION_MNIST_STD
    mean, std = _DEFAULT_NORMALIZATION[spec.dataset]
    return spec.mean or mean, spec.std or std


def model_id(checkpoint: Path) -> str:
    """Return ``<file name>@<sha256 prefix>``, so results of different weights never mix."""
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()[:12]
    return f"{Path(checkpoint).name}@{digest}"


class Suite:
    """An opened suite: the source model, its identity, and per-domain loaders."""

    def __init__(self, spec: SuiteSpec, name: str, model: nn.Module, model_name: str) -> None:
        self.spec, self.name, self.model, self.model_name = spec, name, model, model_name
        self._fmnist: tuple[Tensor, Tensor] | None = None

    def method_defaults(self, method: str) -> dict[str, object]:
        """Options a method needs from this suite unless the user gives them: one per declared need it has.

        Each of the method's ``needs`` is supplied as the option of the same name where this suite has it
        (:data:`_PROVIDERS`): ``denoiser`` only by the embedded default, which ships its own diffusion model
        (``eval/assets/fmnist_ddpm.pt``; other suites need ``--option dda.denoiser=<checkpoint>``, and DDA
        says so when it is missing); ``source_data`` by the suite's training split.
        """
        supplied = {need: _PROVIDERS[need](self) for need in sorted(get_adapter_class(method).needs)}
        return {need: value for need, value in supplied.items() if value is not None}

    def check(self, domains: Sequence[Domain]) -> None:
        """Raise listing every missing or truncated file/folder of the requested domains, before any work."""
        root = self.spec.data_root
        classes = _CLASSES.get(self.spec.dataset)
        if self.spec.dataset in ("cifar10-c", "cifar100-c"):
            corruptions = sorted({d.corruption for d in domains if d.corruption != "clean"})
            severities = sorted({d.severity for d in domains if d.corruption != "clean"})
            checks: list[Callable[[], object]] = [
                lambda: check_npy_root(root, corruptions, severities=severities, num_classes=classes)]  # type: ignore[arg-type]
            if any(d.corruption == "clean" for d in domains):
                checks.append(lambda: CifarCleanTest(find_clean_cifar(root, self.spec.dataset),  # type: ignore[arg-type]
                                                     self.spec.dataset))
            _all_problems(checks)
        elif self.spec.dataset == "imagenet-c":
            check_folder_root(root, [d for d in domains if d.corruption != "clean"],  # type: ignore[arg-type]
                              per_class=self.spec.per_class, subset_file=self.spec.subset_file,
                              preprocess=self.spec.preprocess, num_classes=classes, classes=self.spec.classes)
        else:
            self._fashion_mnist()

    def _fashion_mnist(self) -> tuple[Tensor, Tensor]:
        if self._fmnist is None:
            self._fmnist = load_fashion_mnist("test", self.spec.data_root)
        return self._fmnist

    def _dataset(self, domain: Domain, limit: int | None) -> Dataset[tuple[Tensor, Tensor]]:
        if self.spec.dataset == "imagenet-c":
            return ImageFolderDomain(self.spec.data_root, domain, preprocess=self.spec.preprocess,  # type: ignore[arg-type]
                                     per_class=self.spec.per_class, subset_file=self.spec.subset_file,
                                     classes=self.spec.classes)
        if domain.corruption == "clean":
            path = find_clean_cifar(self.spec.data_root, self.spec.dataset)  # type: ignore[arg-type]
            return CifarCleanTest(path, self.spec.dataset, limit=limit)
        return NpyCorruptionDomain(self.spec.data_root, domain, limit=limit)  # type: ignore[arg-type]

    def loader(self, domain: Domain, *, batch_size: int, seed: int, limit: int | None, device: str) -> Loader:
        """Return the domain's batches in a fixed order (corrupted on the fly for ``fmnist-c``)."""
        if self.spec.dataset == "fmnist-c":
            images, labels = self._fashion_mnist()
            return CorruptedView(images, labels, domain.corruption, domain.severity, batch_size=batch_size,
                                 seed=seed, limit=limit, device=device, table=self.spec.severity_table)
        dataset = self._dataset(domain, limit)
        if limit is not None and len(dataset) > limit:  # type: ignore[arg-type]
            dataset = torch.utils.data.Subset(dataset, range(limit))
        known = dataset_labels(dataset)
        if known is not None:  # re-orderable by the label-shift and sample-mixed protocols without buffering
            return IndexedLoader(dataset, known, batch_size=batch_size, num_workers=self.spec.num_workers,
                                 pin_memory=device.startswith("cuda"))
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=self.spec.num_workers,
                          pin_memory=device.startswith("cuda"))

    def num_examples(self, domain: Domain, limit: int | None) -> int:
        """Return how many examples the domain's loader yields."""
        if self.spec.dataset == "fmnist-c":
            n = len(self._fashion_mnist()[1])
        else:
            n = len(self._dataset(domain, limit))  # type: ignore[arg-type]
        return n if limit is None else min(n, limit)


def _shipped_denoiser(suite: Suite) -> str | None:
    """The embedded default's diffusion model; other suites ship none."""
    if suite.spec.dataset != "fmnist-c":
        return None
    # the diffusion code is loaded only when a method needs it
    from eval.training.diffusion import DEFAULT_DIFFUSION_CHECKPOINT

    return str(DEFAULT_DIFFUSION_CHECKPOINT)


def _source_training_data(suite: Suite) -> object:
    """The suite's source training split (:mod:`eval.datasets.source_split`), for methods that need source data."""
    return source_training_data(suite.spec)


_PROVIDERS: dict[Need, Callable[[Suite], object | None]] = {
    "denoiser": _shipped_denoiser, "source_data": _source_training_data,
}
"""What a suite supplies for each need a method declares (``None``: this suite has nothing to give)."""


def _suite_name(spec: SuiteSpec) -> str:
    if spec.dataset == "imagenet-c":
        subset = spec.subset_file.name if spec.subset_file else (f"{spec.per_class}perclass" if spec.per_class else "full")
        return f"imagenet-c/{spec.preprocess}/{subset}"
    if spec.dataset == "fmnist-c":
        # the default (CIFAR-10-C's table) keeps the id of the stores written before the choice existed
        table = "" if spec.severity_table == SEVERITY_TABLES[0] else f"/{spec.severity_table}-table"
        return f"fmnist-c/corruptions-v{ENGINE_VERSION}{table}"
    return spec.dataset


def open_suite(spec: SuiteSpec) -> Suite:
    """Build the suite's source model (eval mode, inputs in [0, 1]) and return the opened suite."""
    if spec.dataset == "fmnist-c":
        return Suite(spec, _suite_name(spec), load_source_model(spec.checkpoint), model_id(spec.checkpoint))
    mean, std = normalization(spec)
    model_spec = ModelSpec(spec.arch, spec.weights, num_classes=_CLASSES[spec.dataset],  # type: ignore[arg-type]
                           mean=mean, std=std)
    return Suite(spec, _suite_name(spec), build_model(model_spec), model_spec.describe())


def _all_problems(checks: Sequence[Callable[[], object]]) -> None:
    """Run every check and raise once with all their messages (``FileNotFoundError`` if any file is missing)."""
    errors: list[Exception] = []
    for check in checks:
        try:
            check()
        except (FileNotFoundError, ValueError) as error:
            errors.append(error)
    if errors:
        kind = FileNotFoundError if any(isinstance(e, FileNotFoundError) for e in errors) else ValueError
        raise kind("\n".join(str(e) for e in errors))
