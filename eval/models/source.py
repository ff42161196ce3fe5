"""Source models for the benchmark: input normalisation inside the model and the Fashion-MNIST ResNet.

Benchmark models take images in ``[0, 1]`` and normalise them themselves (the RobustBench
convention), so corruptions, adapters and exporters never need to know a dataset's mean and std.
The embedded default source model is :func:`fmnist_resnet`, trained by
:func:`eval.training.source_model.train_source` and shipped as :data:`DEFAULT_CHECKPOINT`.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import torch
from torch import Tensor, nn

from eval.datasets.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from tta.files import atomic_torch_save
from tta.files import read_torch_file

__all__ = [
    "ARCH",
    "CHECKPOINT_KEYS",
    "DEFAULT_CHECKPOINT",
    "BasicBlock",
    "FashionMNISTResNet",
    "Standardize",
    "fmnist_resnet",
    "load_source_model",
    "save_checkpoint",
    "with_normalization",
]

ARCH = "fmnist_resnet"
"""Architecture name stored in checkpoints of :func:`fmnist_resnet`."""

CHECKPOINT_KEYS = ("state_dict", "arch", "arch_kwargs", "clean_test_accuracy", "train_config", "torch_version")
"""Keys every source-model checkpoint holds."""

DEFAULT_CHECKPOINT = Path(__file__).parents[1] / "assets" / "fmnist_resnet.pt"
"""The shipped Fashion-MNIST source model (see :func:`load_source_model`)."""


class Standardize(nn.Module):
    """Per-channel ``(x - mean) / std`` with constant buffers.

    Deliberately a plain module with buffers and arithmetic, not a normalization-layer type, so
    that normalization-layer surgery and norm-parameter selection never mistake it for a BN layer.

    Shape:
        - Input: ``(B, C, H, W)`` in ``[0, 1]``.
        - Output: same shape, standardized.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or len(mean) == 0:
            raise ValueError(f"mean and std need the same non-zero length, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Return the standardized batch."""
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        """Return the constants for ``repr``."""
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def with_normalization(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Sequential:
    """Return ``model`` preceded by input standardization, so it takes images in ``[0, 1]``.

    The model is not copied. The result is ``nn.Sequential`` with children ``normalize`` and
    ``model``, so the original head stays reachable as ``result.model.fc`` (or similar).

    Args:
        model: A classifier that expects standardized inputs.
        mean: Per-channel mean of the training images, in ``[0, 1]`` units.
        std: Per-channel standard deviation, in ``[0, 1]`` units.

    Returns:
        The wrapped classifier; its logits are those of ``model`` on standardized inputs.

    Example:
        >>> net = with_normalization(nn.Identity(), mean=[0.5], std=[0.25])
        >>> net(torch.ones(1, 1, 1, 1)).item()
        2.0
    """
    return nn.Sequential(OrderedDict(normalize=Standardize(mean, std), model=model))


def _conv_bn(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN layers plus a (projected) identity shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv_bn(in_channels, out_channels, stride)
        self.conv2 = _conv_bn(out_channels, out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        """Return ``relu(conv2(relu(conv1(x))) + shortcut(x))``."""
        out = self.conv2(torch.relu(self.conv1(x)))
        return torch.relu(out + self.shortcut(x))


class FashionMNISTResNet(nn.Module):
    """Small BN ResNet for ``1x28x28`` images in ``[0, 1]``, normalisation included.

    Layout: ``normalize`` -> stem conv3x3-BN-ReLU -> ``layer1..3`` (one :class:`BasicBlock`
    each, widths ``w, 2w, 4w``, strides ``1, 2, 2``) -> global average pool -> ``fc``.

    Shape:
        - Input: ``(B, 1, 28, 28)`` in ``[0, 1]`` (other sizes work; the pool is global).
        - Output: logits ``(B, num_classes)``.
    """

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        if num_classes < 1 or width < 1:
            raise ValueError(f"num_classes and width must be positive, got {num_classes} and {width}")
        self.normalize = Standardize(FASHION_MNIST_MEAN, FASHION_MNIST_STD)
        self.stem = nn.Sequential(_conv_bn(1, width), nn.ReLU(inplace=True))
        self.layer1 = BasicBlock(width, width, stride=1)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.layer3 = BasicBlock(2 * width, 4 * width, stride=2)
        self.fc = nn.Linear(4 * width, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        # Zero the last BN scale of each block so every block starts as the identity (Goyal et al.).
        for block in (self.layer1, self.layer2, self.layer3):
            nn.init.zeros_(cast(Tensor, block.conv2[1].weight))

    def forward_features(self, x: Tensor) -> Tensor:
        """Return pooled features, shape ``(B, 4 * width)``."""
        x = self.stem(self.normalize(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: Tensor) -> Tensor:
        """Return class logits, shape ``(B, num_classes)``."""
        return cast(Tensor, self.fc(self.forward_features(x)))


def fmnist_resnet(num_classes: int = 10, width: int = 16) -> FashionMNISTResNet:
    """Build the benchmark's Fashion-MNIST source architecture (untrained).

    With ``width=16`` it has about 78k parameters and costs about 9.5M multiply-adds
    (19 MFLOPs) per image.

    Args:
        num_classes: Number of output logits.
        width: Channels of the first stage; later stages use ``2 * width`` and ``4 * width``.

    Returns:
        A :class:`FashionMNISTResNet` in training mode, taking images in ``[0, 1]``.

    Example:
        >>> fmnist_resnet()(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    return FashionMNISTResNet(num_classes=num_classes, width=width)


def save_checkpoint(path: str | os.PathLike[str], record: Mapping[str, object]) -> Path:
    """Write a source-model checkpoint atomically (temporary file, then rename).

    Args:
        path: Destination file; its folder is created if needed.
        record: A dict with the keys :data:`CHECKPOINT_KEYS`.

    Returns:
        The destination path.

    Raises:
        ValueError: If ``record`` lacks a key of :data:`CHECKPOINT_KEYS`.
    """
    missing = [key for key in CHECKPOINT_KEYS if key not in record]
    if missing:
        raise ValueError(f"checkpoint record lacks {missing}; it needs all of {list(CHECKPOINT_KEYS)}")
    # torch.__version__ is a str subclass that weights_only loading refuses; store a plain str.
    return atomic_torch_save({**record, "torch_version": str(record["torch_version"])}, path)


def _read_checkpoint(path: Path, map_location: str | torch.device) -> dict[str, object]:
    record = read_torch_file(path, map_location=map_location, what="source-model checkpoint")
    if not isinstance(record, dict) or any(key not in record for key in CHECKPOINT_KEYS):
        found = f"a dict of {len(record)} keys" if isinstance(record, dict) else f"a {type(record).__name__}"
        raise ValueError(
            f"{path} is not a source-model checkpoint of `tta train-source` (found {found}); "
            "for another model pass --model ARCH --weights FILE"
        )
    return record


def load_source_model(
    checkpoint: str | os.PathLike[str] | None = None, map_location: str | torch.device = "cpu"
) -> FashionMNISTResNet:
    """Load a trained :func:`fmnist_resnet` checkpoint, in eval mode.

    Args:
        checkpoint: A file written by :func:`eval.training.source_model.train_source`; defaults to the shipped
            :data:`DEFAULT_CHECKPOINT`.
        map_location: Device to load the tensors onto.

    Returns:
        The source model in ``eval()`` mode, taking images in ``[0, 1]``.

    Raises:
        FileNotFoundError: If the checkpoint file does not exist.
        ValueError: If the path is a folder, or the file is unreadable or not a checkpoint of this architecture.
    """
    path = Path(DEFAULT_CHECKPOINT if checkpoint is None else checkpoint)
    if not path.exists():
        raise FileNotFoundError(
            f"source-model checkpoint {path} not found; train one with "
            f"`tta train-source --epochs 10 --lr 0.1 --out {path}` or pass the path of an existing one"
        )
    record = _read_checkpoint(path, map_location)
    if record["arch"] != ARCH or not isinstance(record["arch_kwargs"], dict):
        raise ValueError(f"{path} holds arch {record['arch']!r}, expected {ARCH!r} with an arch_kwargs dict")
    model = fmnist_resnet(**record["arch_kwargs"])
    try:
        model.load_state_dict(record["state_dict"])  # type: ignore[arg-type]
    except (RuntimeError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: weights do not match {ARCH}({record['arch_kwargs']}): {error}") from error
    return model.to(map_location).eval()
