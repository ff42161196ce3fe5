"""The DANN training loop: paper schedules, a choice of what trains, per-epoch checkpoints, exact resume.

Each step takes one labeled source batch and one unlabeled target batch (loaders are cycled, as
Transfer-Learning-Library's ``ForeverDataIterator`` does), sets the reversal scale to
``λ_p`` and the learning rate to ``μ_p`` for the progress ``p = step / total_steps``, and runs
:func:`~tta.da.dann.dann_step`. After every epoch the DANN state, the optimizer state and the
history are written atomically to ``checkpoint``; calling :func:`fit_dann` again with the same
configuration resumes after the last finished epoch.

Resume is exact when the loaders yield the same batches for a given epoch: a fixed order, or
loaders with a ``set_epoch(epoch)`` method (as ``DistributedSampler``), which the loop calls at the
start of every epoch. Dropout draws from a generator seeded by ``(seed, epoch)`` inside
``torch.random.fork_rng``, so the caller's global random state is left as it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from tta.files import atomic_torch_save, read_torch_file
from tta.da.dann import DANN, DANNLosses, dann_step
from tta.da.grl import anneal_lr, dann_schedule
from tta.params import norm_affine_parameters

__all__ = ["EpochRecord", "FitConfig", "FitProgress", "fit_dann", "trainable_parameters"]

Trainable = Literal["all", "norm", "last"]
_FORMAT = "tta.da.fit/1"


@dataclass(frozen=True)
class FitConfig:
    """What :func:`fit_dann` trains and how; a checkpoint resumes only under the same configuration.

    Args:
        epochs: Number of epochs.
        steps_per_epoch: Steps per epoch; ``None`` takes ``len(source_loader)``.
        lr: Initial learning rate μ0 of the annealing ``μ_p = μ0 / (1 + α·p)^β`` (0.01 in the paper).
        lr_alpha: α (10 in the paper).
        lr_beta: β (0.75 in the paper).
        momentum: SGD momentum (0.9 in the paper).
        weight_decay: SGD L2 penalty.
        scale: ``"dann"`` for the paper's reversal schedule ``λ_p``, or a constant λ
            (``0.0`` keeps the discriminator but stops its gradient reaching the features).
        gamma: γ of the reversal schedule (10 in the paper).
        trainable: Classifier parameters that train: ``"all"`` (the paper), ``"norm"`` (the affine
            parameters of normalization layers) or ``"last"`` (the last ``last_blocks`` children of
            the classifier that own parameters). The discriminator always trains.
        last_blocks: Number of trailing blocks for ``trainable="last"``.
        seed: Seeds dropout, per epoch.
    """

    epochs: int = 1
    steps_per_epoch: int | None = None
    lr: float = 0.01
    lr_alpha: float = 10.0
    lr_beta: float = 0.75
    momentum: float = 0.9
    weight_decay: float = 0.0
    scale: Literal["dann"] | float = "dann"
    gamma: float = 10.0
    trainable: Trainable = "all"
    last_blocks: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or (self.steps_per_epoch is not None and self.steps_per_epoch < 1):
            raise ValueError(f"epochs and steps_per_epoch must be >= 1, got {self.epochs}, {self.steps_per_epoch}")
        if self.trainable not in ("all", "norm", "last"):
            raise ValueError(f"trainable must be 'all', 'norm' or 'last', got {self.trainable!r}")
        if self.last_blocks < 1:
            raise ValueError(f"last_blocks must be >= 1, got {self.last_blocks}")
        if not (self.scale == "dann" or isinstance(self.scale, (int, float))):
            raise ValueError(f"scale must be 'dann' or a number, got {self.scale!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    def scale_at(self, progress: float) -> float:
        """Return the reversal scale λ at training progress ``progress``."""
        return dann_schedule(progress, self.gamma) if self.scale == "dann" else float(self.scale)


@dataclass(frozen=True)
class FitProgress:
    """Reported after every step: position, this step's losses, and the schedules' current values."""

    epoch: int
    step: int
    total_steps: int
    task_loss: float
    domain_loss: float
    domain_accuracy: float
    scale: float
    lr: float


@dataclass(frozen=True)
class EpochRecord:
    """Means over one epoch's steps, and the schedules' values at its last step."""

    epoch: int
    steps: int
    task_loss: float
    domain_loss: float
    domain_accuracy: float
    scale: float
    lr: float


def trainable_parameters(model: nn.Module, which: Trainable = "all", *, last_blocks: int = 1) -> list[str]:
    """Return the names of the parameters of ``model`` that ``which`` selects.

    Args:
        model: The classifier.
        which: ``"all"``; ``"norm"``: weight and bias of every normalization layer; ``"last"``:
            every parameter of the last ``last_blocks`` direct children that own parameters
            (for a ResNet with blocks ``layer1..3`` and ``fc``, ``last_blocks=2`` gives ``layer3`` and ``fc``).
        last_blocks: See ``which``.

    Raises:
        ValueError: If the selection is empty or ``which`` is unknown.
    """
    if which == "all":
        names = [name for name, _ in model.named_parameters()]
    elif which == "norm":
        names = [name for name, _ in norm_affine_parameters(model)]
    elif which == "last":
        blocks = [name for name, child in model.named_children() if any(True for _ in child.parameters())]
        chosen = blocks[-last_blocks:]
        names = [n for n, _ in model.named_parameters() if n.split(".", 1)[0] in chosen]
    else:
        raise ValueError(f"trainable must be 'all', 'norm' or 'last', got {which!r}")
    if not names:
        raise ValueError(f"trainable={which!r} selects no parameters of {type(model).__name__}")
    return names


def _build_optimizer(dann: DANN, config: FitConfig) -> torch.optim.Optimizer:
    chosen = set(trainable_parameters(dann.model, config.trainable, last_blocks=config.last_blocks))
    params: list[Tensor] = []
    for name, param in dann.model.named_parameters():
        param.requires_grad_(name in chosen)
        if name in chosen:
            params.append(param)
    params += [p.requires_grad_(True) for p in dann.domain_head.parameters()]
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _forever(loader: Iterable[Any], name: str) -> Iterator[Any]:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError(
                f"{name} yielded no batches; it must be non-empty and re-iterable (a DataLoader or a list)"
            )


def _images(batch: Any) -> Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _save(path: Path, record: dict[str, Any]) -> None:
    atomic_torch_save(record, path)


def _resume(
    path: Path, dann: DANN, optimizer: torch.optim.Optimizer, config: FitConfig, tag: str
) -> list[EpochRecord]:
    try:
        record = read_torch_file(path, map_location=next(dann.parameters()).device, what="DANN fit checkpoint")
    except ValueError as error:  # unreadable, or it holds code: useless to this run
        raise ValueError(f"{error}; remove it to start afresh") from error
    if not isinstance(record, dict) or record.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a DANN fit checkpoint; remove it or pass another checkpoint path")
    if record.get("tag") != tag:
        raise ValueError(
            f"{path} belongs to another run (tag {record.get('tag')!r}, this run {tag!r}); "
            f"pass a new checkpoint path or remove the file"
        )
    saved = record["config"]
    changed = sorted(k for k, v in asdict(config).items() if saved.get(k) != v)
    if changed:
        raise ValueError(
            f"{path} was written with another configuration ({', '.join(f'{k}={saved.get(k)!r}' for k in changed)}); "
            f"rerun with the same settings to resume, or pass a new checkpoint path"
        )
    dann.load_state_dict(record["state_dict"])
    optimizer.load_state_dict(record["optimizer"])
    return [EpochRecord(**entry) for entry in record["history"]]


class _Epoch:
    """Running sums of one epoch's step losses."""

    def __init__(self) -> None:
        self.steps, self.task, self.domain, self.accuracy = 0, 0.0, 0.0, 0.0

    def add(self, losses: DANNLosses) -> tuple[float, float, float]:
        task, domain, accuracy = losses.task.item(), losses.domain.item(), losses.domain_accuracy.item()
        self.steps += 1
        self.task, self.domain, self.accuracy = self.task + task, self.domain + domain, self.accuracy + accuracy
        return task, domain, accuracy

    def record(self, epoch: int, scale: float, lr: float) -> EpochRecord:
        n = max(self.steps, 1)
        return EpochRecord(epoch, self.steps, self.task / n, self.domain / n, self.accuracy / n, scale, lr)


def _run_epoch(
    dann: DANN,
    optimizer: torch.optim.Optimizer,
    loaders: tuple[Iterable[Any], Iterable[Any]],
    epoch: int,
    steps: int,
    config: FitConfig,
    progress: Callable[[FitProgress], None] | None,
) -> EpochRecord:
    device = next(dann.parameters()).device
    sources, targets = _forever(loaders[0], "source_loader"), _forever(loaders[1], "target_loader")
    total, sums, scale, lr = config.epochs * steps, _Epoch(), 0.0, config.lr
    for i in range(steps):
        step = epoch * steps + i
        scale, lr = config.scale_at(step / total), anneal_lr(step / total, config.lr, config.lr_alpha, config.lr_beta)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x_s, y_s = next(sources)[:2]
        x_t = _images(next(targets))
        losses = dann_step(dann, optimizer, (x_s.to(device), y_s.to(device)), x_t.to(device), scale)
        task, domain, accuracy = sums.add(losses)
        if progress is not None:
            progress(FitProgress(epoch, step + 1, total, task, domain, accuracy, scale, lr))
    return sums.record(epoch, scale, lr)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)


def fit_dann(
    dann: DANN,
    source_loader: Iterable[Any],
    target_loader: Iterable[Any],
    config: FitConfig,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    progress: Callable[[FitProgress], None] | None = None,
    tag: str = "",
) -> list[EpochRecord]:
    """Train ``dann`` in place with the paper's schedules; return one record per epoch.

    Args:
        dann: The :class:`~tta.da.dann.DANN` module (on the device where training runs).
        source_loader: Re-iterable labeled batches ``(x, y)``.
        target_loader: Re-iterable unlabeled batches ``x`` or ``(x, ...)``; anything after ``x`` is ignored.
        config: Epochs, schedules and what trains.
        checkpoint: File written after every epoch; if it exists, training resumes from it.
        progress: Called after every step with a :class:`FitProgress`.
        tag: Names the data and model this run trains on; a checkpoint is resumed only under the
            same tag and configuration (the checkpoint cannot tell loaders apart by itself).

    Returns:
        The records of all epochs, those restored from ``checkpoint`` included. ``dann`` is left
        in ``eval()`` mode; ``requires_grad`` is left set on the trained parameters only.

    Raises:
        ValueError: If a loader is empty, ``steps_per_epoch`` is needed and missing, or the
            checkpoint belongs to another configuration.
    """
    if config.steps_per_epoch is None and not hasattr(source_loader, "__len__"):
        raise ValueError("source_loader has no len(); pass steps_per_epoch")
    steps = config.steps_per_epoch or len(source_loader)  # type: ignore[arg-type]
    if steps < 1:
        raise ValueError("source_loader is empty; it must yield labeled (x, y) batches")
    optimizer = _build_optimizer(dann, config)
    path = None if checkpoint is None else Path(checkpoint)
    history = _resume(path, dann, optimizer, config, tag) if path is not None and path.is_file() else []
    devices = [d for d in {p.device for p in dann.parameters()} if d.type == "cuda"]
    dann.train()
    try:
        for epoch in range(len(history), config.epochs):
            for loader in (source_loader, target_loader):
                if callable(getattr(loader, "set_epoch", None)):
                    loader.set_epoch(epoch)  # type: ignore[attr-defined]
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(_epoch_seed(config.seed, epoch))
                loaders = (source_loader, target_loader)
                history.append(_run_epoch(dann, optimizer, loaders, epoch, steps, config, progress))
            if path is not None:
                _save(path, {"format": _FORMAT, "tag": tag, "config": asdict(config), "epoch": epoch + 1,
                             "state_dict": dann.state_dict(), "optimizer": optimizer.state_dict(),
                             "history": [asdict(r) for r in history]})
    finally:
        dann.eval()
    return history
