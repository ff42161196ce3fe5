"""WideResNet-28-10 with RobustBench's parameter names, so its CIFAR checkpoints load as they are.

RobustBench's ``Standard`` CIFAR-10 model (``robustbench/model_zoo/architectures/wide_resnet.py``)
is a pre-activation WideResNet: ``conv1`` -> ``block1..3`` (each ``layer.<i>`` a block with
``bn1, conv1, bn2, conv2`` and a ``convShortcut`` where the width changes) -> ``bn1`` -> ReLU ->
global average pool -> ``fc``. It takes unnormalized images in ``[0, 1]``. Here it is rebuilt with
the same state_dict keys; :func:`eval.models.architectures.load_weights` strips the ``module.``
prefix and the ``state_dict`` wrapper of the released file.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

__all__ = ["WideResNet", "wrn28_10"]


class _Block(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3 twice, plus a 1x1 projection when the width changes."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride=stride,
                                                                     bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Return the block's output; the projection sees the pre-activated input, as in RobustBench."""
        activated = torch.relu(self.bn1(x))
        out = self.conv2(torch.relu(self.bn2(self.conv1(activated))))
        shortcut = x if self.convShortcut is None else cast(Tensor, self.convShortcut(activated))
        return shortcut + cast(Tensor, out)


class _Stage(nn.Module):
    """``n`` blocks under the attribute ``layer`` (RobustBench's ``NetworkBlock``)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[_Block(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                                     for i in range(n)])

    def forward(self, x: Tensor) -> Tensor:
        """Return the output of the stage's blocks."""
        return cast(Tensor, self.layer(x))


class WideResNet(nn.Module):
    """WideResNet-``depth``-``widen_factor`` for ``3 x 32 x 32`` images in ``[0, 1]`` (no normalization inside).

    Shape:
        - Input: ``(B, 3, H, W)``; the pool is global, so other sizes run too.
        - Output: logits ``(B, num_classes)``.
    """

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (e.g. 28), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _Stage(n, widths[0], widths[1], 1)
        self.block2 = _Stage(n, widths[1], widths[2], 2)
        self.block3 = _Stage(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Return class logits."""
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = torch.relu(self.bn1(out))
        return cast(Tensor, self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)))


def wrn28_10(num_classes: int = 10) -> WideResNet:
    """Build WideResNet-28-10 (36.5M parameters), the architecture of RobustBench's ``Standard`` model.

    Example:
        >>> wrn28_10().fc.out_features
        10
    """
    return WideResNet(depth=28, widen_factor=10, num_classes=num_classes)
