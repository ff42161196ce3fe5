"""DANN on Fashion-MNIST: labeled clean source, unlabeled corrupted target, scored on held-out target images.

The protocol behind ``tta dann`` and its ``--compare`` table:

- source: the 60,000 clean training images with labels;
- target (unlabeled): the *training* images under one corruption (their labels are never read),
  or the images of a folder;
- evaluation: the corrupted *test* split through the benchmark runner (:func:`eval.bench.driver.run_bench`,
  method ``source``, same batches and seeds as ``tta bench``), so no target image used for
  training is ever scored.

Every arm starts from the same source checkpoint and gets the same budget (steps, batch size,
learning-rate schedule, trained parameters):

- ``source_only``: fine-tuning on source batches only (task loss);
- ``dann_lambda0``: the DANN forward (source and target concatenated, so BatchNorm sees both) and
  discriminator, but with reversal scale 0, so features get no adversarial gradient; it separates
  the effect of mixed-batch BN statistics from the adversarial loss;
- ``dann``: the paper's method, reversal scale on the ``λ_p`` schedule.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from eval.bench.spec import BenchSpec
from eval.bench.driver import run_bench
from eval.models.suites import SuiteSpec
from eval.datasets import CorruptedView, load_fashion_mnist
from eval.models.source import ARCH, load_source_model, save_checkpoint
from eval.results.store import ResultsStore
from eval.training.source_model import evaluate_accuracy
from tta.da import DANN, EpochRecord, FitConfig, FitProgress, fit_dann
from tta.da.fit import trainable_parameters
from tta.da.grl import anneal_lr
from tta.files import read_torch_file

__all__ = [
    "ARMS",
    "ArmReport",
    "ArmResult",
    "arm_output",
    "compare_arms",
    "ShuffledBatches",
    "evaluate_checkpoint",
    "load_target_images",
    "reports_markdown",
    "run_arm",
    "save_adapted",
]

Arm = Literal["source_only", "dann_lambda0", "dann"]
ARMS: tuple[Arm, ...] = ("source_only", "dann_lambda0", "dann")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class ShuffledBatches:
    """Re-iterable batches of an in-memory dataset, reshuffled per epoch from ``(seed, epoch)``.

    ``set_epoch`` (called by :func:`tta.da.fit_dann`) fixes the order, so a resumed run sees the
    same batches as an uninterrupted one.

    Args:
        images: ``(N, C, H, W)`` uint8 or float in ``[0, 1]``.
        labels: ``(N,)`` class indices, or ``None`` for unlabeled data (batches are then ``x`` only).
        batch_size: Images per batch; the last, smaller batch is dropped.
        seed: Base seed of the shuffles.
    """

    def __init__(self, images: Tensor, labels: Tensor | None, batch_size: int, seed: int = 0) -> None:
        if len(images) < batch_size or batch_size < 1:
            raise ValueError(f"need at least one batch of {batch_size} images, got {len(images)} images")
        self.images, self.labels, self.batch_size, self.seed, self.epoch = images, labels, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffle of epoch ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Return the number of full batches."""
        return len(self.images) // self.batch_size

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor] | Tensor]:
        """Yield float ``[0, 1]`` batches ``(x, y)``, or ``x`` when unlabeled."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.images), generator=generator)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            x = self.images[index]
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            yield x if self.labels is None else (x, self.labels[index])


def _corrupted_images(images: Tensor, corruption: str, severity: int, limit: int | None, seed: int) -> Tensor:
    view = CorruptedView(images, torch.zeros(len(images), dtype=torch.long), corruption, severity,
                         batch_size=256, seed=seed, limit=limit)
    return torch.cat([x for x, _ in view])


def _folder_images(folder: Path, size: tuple[int, int], limit: int | None) -> Tensor:
    import numpy as np
    from PIL import Image  # Pillow comes with torchvision; torchvision.io's decoders are deprecated

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)[:limit]
    if not files:
        raise ValueError(f"no images ({', '.join(_IMAGE_SUFFIXES)}) found under {folder}")
    images = []
    for file in files:
        with Image.open(file) as image:
            gray = image.convert("L").resize((size[1], size[0]), Image.Resampling.BILINEAR)
        images.append(torch.from_numpy(np.asarray(gray).copy()))
    return torch.stack(images).unsqueeze(1)


def load_target_images(target: str, *, severity: int, data_root: str | os.PathLike[str] | None = None,
                       limit: int | None = None, seed: int = 1) -> Tensor:
    """Return unlabeled target images: a corruption of the training split, or the images of a folder.

    Args:
        target: A corruption name (applied to the Fashion-MNIST *training* images) or a folder of
            PNG/JPEG images (read as grayscale, resized to 28x28).
        severity: Corruption severity 1..5 (ignored for a folder).
        data_root: Fashion-MNIST IDX folder.
        limit: Use only the first ``limit`` images.
        seed: Seed of the corruption (distinct from the benchmark's test seed 0).

    Returns:
        Float images in ``[0, 1]`` (corruption) or uint8 (folder), shape ``(N, 1, 28, 28)``.
    """
    if Path(target).is_dir():
        return _folder_images(Path(target), (28, 28), limit)
    images, _ = load_fashion_mnist("train", data_root)
    return _corrupted_images(images, target, severity, limit, seed)


def _source_only(model: nn.Module, loader: ShuffledBatches, config: FitConfig,
                 progress: Callable[[FitProgress], None] | None) -> list[EpochRecord]:
    """Fine-tune on source batches with DANN's optimizer, schedule and parameter choice (no target)."""
    chosen = set(trainable_parameters(model, config.trainable, last_blocks=config.last_blocks))
    params = [p.requires_grad_(n in chosen) for n, p in model.named_parameters()]
    optimizer = torch.optim.SGD([p for p in params if p.requires_grad], lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    steps = config.steps_per_epoch or len(loader)
    total, history = config.epochs * steps, []
    model.train()
    for epoch in range(config.epochs):
        loader.set_epoch(epoch)
        batches, loss_sum = iter(loader), 0.0
        for i in range(steps):
            step = epoch * steps + i
            lr = anneal_lr(step / total, config.lr, config.lr_alpha, config.lr_beta)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = next(batches, None)
            if batch is None:
                batches = iter(loader)
                batch = next(batches)
            loss = nn.functional.cross_entropy(model(batch[0]), batch[1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # Tensor.backward is unannotated in torch
            optimizer.step()
            loss_sum += loss.item()
            if progress is not None:
                progress(FitProgress(epoch, step + 1, total, loss.item(), float("nan"), float("nan"), 0.0, lr))
        history.append(EpochRecord(epoch, steps, loss_sum / steps, float("nan"), float("nan"), 0.0, lr))
    return history


@dataclass(frozen=True)
class ArmResult:
    """One trained arm: its per-epoch history and where its classifier checkpoint was written."""

    arm: str
    history: list[EpochRecord]
    checkpoint: Path
    clean_accuracy: float


def save_adapted(model: nn.Module, out: str | os.PathLike[str], *, source_record: dict[str, object],
                 clean_accuracy: float, train_config: dict[str, object]) -> Path:
    """Write ``model`` in the source-checkpoint format, so ``tta bench --checkpoint`` evaluates it."""
    record = {"state_dict": model.state_dict(), "arch": ARCH, "arch_kwargs": source_record["arch_kwargs"],
              "clean_test_accuracy": clean_accuracy, "train_config": train_config,
              "torch_version": str(torch.__version__)}  # fmt: skip
    return save_checkpoint(out, record)


def run_arm(
    arm: Arm,
    *,
    source_checkpoint: str | os.PathLike[str],
    target_images: Tensor,
    out: str | os.PathLike[str],
    config: FitConfig,
    batch_size: int = 64,
    hidden: Sequence[int] = (1024, 1024),
    data_root: str | os.PathLike[str] | None = None,
    fit_checkpoint: str | os.PathLike[str] | None = None,
    progress: Callable[[FitProgress], None] | None = None,
    tag: str = "",
) -> ArmResult:
    """Fine-tune the source checkpoint with one arm and write the adapted classifier to ``out``.

    Args:
        arm: ``source_only``, ``dann_lambda0`` or ``dann`` (see the module notes).
        source_checkpoint: The starting classifier (a :func:`~eval.models.source.load_source_model` file).
        target_images: Unlabeled target images (unused by ``source_only``).
        out: Where the adapted classifier is written, in the source-checkpoint format.
        config: Budget and schedules, shared by all arms (``scale`` is overridden per arm).
        batch_size: Source images per step, and as many target images.
        hidden: Hidden widths of the domain discriminator.
        data_root: Fashion-MNIST IDX folder.
        fit_checkpoint: Per-epoch resume file of the DANN arms.
        progress: Called after every step.
        tag: Identifies the target data in ``fit_checkpoint`` (see :func:`tta.da.fit_dann`).
    """
    record = read_torch_file(source_checkpoint, what="source-model checkpoint")
    if not isinstance(record, dict):
        raise ValueError(f"source-model checkpoint {source_checkpoint} holds a {type(record).__name__}, not the "
                         f"record that eval.models.source.save_checkpoint writes")
    model = load_source_model(source_checkpoint)
    train_images, train_labels = load_fashion_mnist("train", data_root)
    source = ShuffledBatches(train_images, train_labels, batch_size, seed=config.seed)
    if arm == "source_only":
        history = _source_only(model, source, config, progress)
    else:
        config = replace(config, scale=0.0 if arm == "dann_lambda0" else "dann")
        target = ShuffledBatches(target_images, None, batch_size, seed=config.seed + 1)
        dann = DANN(model, hidden=hidden)
        history = fit_dann(dann, source, target, config, checkpoint=fit_checkpoint, progress=progress,
                           tag=f"{tag}|batch_size={batch_size}|hidden={list(hidden)}|source={source_checkpoint}")
    test_images, test_labels = load_fashion_mnist("test", data_root)
    clean = evaluate_accuracy(model.eval(), test_images, test_labels)
    train_config = {"arm": arm, "batch_size": batch_size, "hidden": list(hidden), **asdict(config)}
    path = save_adapted(model, out, source_record=record, clean_accuracy=clean, train_config=train_config)
    return ArmResult(arm, history, path, clean)


def evaluate_checkpoint(checkpoint: str | os.PathLike[str], corruption: str, severity: int, *,
                        data_root: str | os.PathLike[str] | None = None, limit: int | None = None) -> float:
    """Return the top-1 error of a classifier checkpoint on the corrupted test split, via the benchmark runner."""
    suite = SuiteSpec(checkpoint=Path(checkpoint), data_root=None if data_root is None else Path(data_root))
    spec = BenchSpec(methods=("source",), corruptions=(corruption,), severities=(severity,), suite=suite, limit=limit)
    with tempfile.TemporaryDirectory() as tmp, ResultsStore(Path(tmp) / "results.sqlite") as store:
        (result,) = run_bench(spec, store)
    return result.error


@dataclass(frozen=True)
class ArmReport:
    """An arm's scores: target error on the held-out corrupted test split, clean accuracy, history."""

    arm: str
    target: str
    severity: int
    target_error: float | None
    clean_accuracy: float
    checkpoint: str
    history: list[EpochRecord]

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {**asdict(self), "history": [asdict(r) for r in self.history]}


def arm_output(out: Path, arm: Arm) -> Path:
    """Return where an arm's classifier goes: ``out`` for ``dann``, ``<stem>-<arm><suffix>`` otherwise."""
    return out if arm == "dann" else out.with_name(f"{out.stem}-{arm}{out.suffix}")


def compare_arms(arms: Sequence[Arm], *, target: str, severity: int, out: Path, config: FitConfig,
                 target_limit: int | None = None, evaluate: bool = True,
                 on_arm: Callable[[Arm], None] | None = None, **run_options: object) -> list[ArmReport]:
    """Train each arm from the same source checkpoint and score it on the held-out target test split.

    Args:
        arms: Arms to run, in order.
        target: Corruption name or image folder (see :func:`load_target_images`).
        severity: Corruption severity.
        out: Path of the ``dann`` arm's classifier; other arms go next to it (:func:`arm_output`).
        config: Budget shared by all arms.
        target_limit: Number of unlabeled target images.
        evaluate: Score on the corrupted test split (only possible when ``target`` is a corruption).
        on_arm: Called before each arm starts (progress bars).
        run_options: Passed to :func:`run_arm` (``source_checkpoint``, ``batch_size``, ``hidden``,
            ``data_root``, ``progress``).
    """
    data_root: str | None = run_options.get("data_root")  # type: ignore[assignment]
    images = load_target_images(target, severity=severity, data_root=data_root, limit=target_limit)
    reports = []
    for arm in arms:
        if on_arm is not None:
            on_arm(arm)
        path = arm_output(out, arm)
        fit_checkpoint = path.with_name(path.name + ".fit") if arm != "source_only" else None
        result = run_arm(arm, target_images=images, out=path, config=config, fit_checkpoint=fit_checkpoint,
                         tag=f"target={target}|severity={severity}|limit={target_limit}",
                         **run_options)  # type: ignore[arg-type]
        error = evaluate_checkpoint(path, target, severity, data_root=data_root) if evaluate else None
        reports.append(ArmReport(arm, target, severity, error, result.clean_accuracy, str(path), result.history))
    return reports


def reports_markdown(reports: Sequence[ArmReport], source_error: float | None = None) -> str:
    """Return a markdown table of target error, clean accuracy and discriminator accuracy per epoch."""
    lines = ["| arm | target error % | clean acc % | discriminator acc % per epoch |", "|---|---:|---:|---|"]
    if source_error is not None:
        lines.append(f"| no adaptation | {100 * source_error:.2f} | | |")
    for r in reports:
        error = "" if r.target_error is None else f"{100 * r.target_error:.2f}"
        trend = " → ".join(f"{100 * h.domain_accuracy:.1f}" for h in r.history if not math.isnan(h.domain_accuracy))
        lines.append(f"| {r.arm} | {error} | {100 * r.clean_accuracy:.2f} | {trend or '–'} |")
    return "\n".join(lines)
