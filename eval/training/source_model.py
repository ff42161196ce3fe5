"""Train the benchmark's Fashion-MNIST source model (``tta train-source``).

Plain supervised training of :func:`eval.models.source.fmnist_resnet` on the 60,000 training images:
SGD with Nesterov momentum 0.9 and weight decay 5e-4, a one-cycle learning-rate schedule, and
light augmentation (random 28x28 crop of the image zero-padded by 2, horizontal flip). Every
random choice (initialisation, shuffling, augmentation) comes from ``seed``, so a rerun on the
same CPU build gives the same checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypedDict

import torch
from torch import Tensor, nn

from eval.datasets.fashion_mnist import load_fashion_mnist
from eval.models.source import ARCH, fmnist_resnet, save_checkpoint

__all__ = ["ProgressFn", "TrainingSummary", "augment_batch", "evaluate_accuracy", "train_source"]

ProgressFn = Callable[[int, int, float], None]
"""Called after each optimizer step with ``(step, total_steps, loss)``; ``step`` counts from 1."""


class TrainingSummary(TypedDict):
    """What :func:`train_source` returns: the trained model's figures and where it was written."""

    clean_test_accuracy: float
    final_train_loss: float
    epochs: int
    steps: int
    num_parameters: int
    train_config: dict[str, object]
    out: str

_PAD = 2
_MOMENTUM = 0.9
_WEIGHT_DECAY = 5e-4


def augment_batch(x: Tensor, generator: torch.Generator) -> Tensor:
    """Return a randomly shifted (crop of the zero-padded image) and horizontally flipped batch.

    Args:
        x: Images ``(B, C, H, W)``.
        generator: Source of the random offsets and flips (on ``x``'s device).

    Returns:
        A new batch of the same shape.
    """
    batch, _, height, width = x.shape
    offsets = torch.randint(0, 2 * _PAD + 1, (2, batch, 1), generator=generator, device=x.device)
    rows = (offsets[0] + torch.arange(height, device=x.device))[:, :, None]
    cols = (offsets[1] + torch.arange(width, device=x.device))[:, None, :]
    padded = nn.functional.pad(x, (_PAD, _PAD, _PAD, _PAD))
    shifted = padded[torch.arange(batch, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    flip = torch.rand(batch, generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], shifted.flip(3), shifted)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int = 500) -> float:
    """Return the top-1 accuracy of ``model`` (in its current mode) on uint8 or ``[0, 1]`` images.

    Args:
        model: A classifier taking float images in ``[0, 1]``.
        images: ``(N, C, H, W)``, uint8 or float in ``[0, 1]``.
        labels: ``(N,)`` class indices.
        batch_size: Images per forward pass.

    Returns:
        The fraction of correct predictions, in ``[0, 1]``.
    """
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(images), batch_size):
        x = _to_unit_float(images[start : start + batch_size]).to(device)
        correct += int((model(x).argmax(1).cpu() == labels[start : start + batch_size]).sum())
    return correct / max(len(images), 1)


def _to_unit_float(images: Tensor) -> Tensor:
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def _build_model(seed: int, width: int) -> nn.Module:
    # Initialise from `seed` without disturbing the caller's global random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fmnist_resnet(width=width)


def _build_optimizer(
    model: nn.Module, *, lr: float, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=_MOMENTUM, nesterov=True, weight_decay=_WEIGHT_DECAY
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps)
    return optimizer, scheduler


class _TrainState:
    """Mutable bookkeeping shared by the epochs of one training run."""

    def __init__(
        self, model: nn.Module, *, lr: float, total_steps: int, batch_size: int, seed: int, progress: ProgressFn | None
    ) -> None:
        self.optimizer, self.scheduler = _build_optimizer(model, lr=lr, total_steps=total_steps)
        self.generator = torch.Generator().manual_seed(seed)
        self.batch_size, self.total_steps, self.progress, self.step = batch_size, total_steps, progress, 0


def _train_epoch(model: nn.Module, data: tuple[Tensor, Tensor], state: _TrainState) -> float:
    images, labels = data
    order = torch.randperm(len(images), generator=state.generator)
    loss_sum, seen = 0.0, 0
    for start in range(0, len(images), state.batch_size):
        index = order[start : start + state.batch_size]
        x = augment_batch(_to_unit_float(images[index]), state.generator)
        loss = nn.functional.cross_entropy(model(x), labels[index])
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # Tensor.backward is unannotated in torch
        state.optimizer.step()
        state.scheduler.step()
        state.step += 1
        loss_value = loss.item()
        loss_sum, seen = loss_sum + loss_value * len(index), seen + len(index)
        if state.progress is not None:
            state.progress(state.step, state.total_steps, loss_value)
    return loss_sum / max(seen, 1)


def _check_arguments(epochs: int, batch_size: int, lr: float, width: int) -> None:
    if epochs < 1 or batch_size < 1 or width < 1:
        raise ValueError(f"epochs, batch_size and width must be >= 1, got {epochs}, {batch_size}, {width}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")


def _train_config(*, data_root: str | os.PathLike[str] | None, **arguments: float) -> dict[str, object]:
    fixed = {"momentum": _MOMENTUM, "nesterov": True, "weight_decay": _WEIGHT_DECAY, "schedule": "one_cycle"}
    augmentation = f"random_crop(pad={_PAD}) + horizontal_flip"
    root = None if data_root is None else str(data_root)
    return {**arguments, "data_root": root, **fixed, "augmentation": augmentation}


def train_source(
    out: str | os.PathLike[str],
    *,
    data_root: str | os.PathLike[str] | None = None,
    epochs: int,
    batch_size: int = 128,
    lr: float,
    seed: int = 0,
    width: int = 16,
    progress: ProgressFn | None = None,
) -> TrainingSummary:
    """Train :func:`~eval.models.source.fmnist_resnet` on Fashion-MNIST and write its checkpoint.

    Runs on CPU. The checkpoint (see :data:`eval.models.source.CHECKPOINT_KEYS`) is written atomically,
    so ``out`` is either the old file or the complete new one.

    Args:
        out: Checkpoint path, for example ``eval/assets/fmnist_resnet.pt``.
        data_root: Folder of the Fashion-MNIST IDX files (see
            :func:`~eval.datasets.fashion_mnist.resolve_fashion_mnist_root`).
        epochs: Passes over the 60,000 training images.
        batch_size: Images per SGD step.
        lr: Peak learning rate of the one-cycle schedule.
        seed: Seeds initialisation, shuffling and augmentation.
        width: Width of the first ResNet stage.
        progress: Called after every step with ``(step, total_steps, loss)``.

    Returns:
        ``clean_test_accuracy`` (fraction on the 10,000 test images), ``final_train_loss``
        (mean over the last epoch), ``epochs``, ``steps``, ``num_parameters``, ``train_config``
        and ``out`` (the written path, as a string).

    Raises:
        ValueError: If an argument is out of range or the data files are malformed.
        FileNotFoundError: If the data files are absent.
    """
    _check_arguments(epochs, batch_size, lr, width)
    config = _train_config(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, width=width, data_root=data_root)
    train, test = load_fashion_mnist("train", data_root), load_fashion_mnist("test", data_root)
    model = _build_model(seed, width).train()
    total_steps = epochs * -(-len(train[0]) // batch_size)
    state = _TrainState(model, lr=lr, total_steps=total_steps, batch_size=batch_size, seed=seed, progress=progress)
    final_loss = [_train_epoch(model, train, state) for _ in range(epochs)][-1]
    accuracy = evaluate_accuracy(model.eval(), *test)
    record = {
        "state_dict": model.state_dict(), "arch": ARCH, "arch_kwargs": {"num_classes": 10, "width": width},
        "clean_test_accuracy": accuracy, "train_config": config, "torch_version": str(torch.__version__),
    }  # fmt: skip
    path = save_checkpoint(out, record)
    num_parameters = sum(p.numel() for p in model.parameters())
    return {"clean_test_accuracy": accuracy, "final_train_loss": final_loss, "epochs": epochs, "steps": state.step,
            "num_parameters": num_parameters, "train_config": config, "out": str(path)}  # fmt: skip
