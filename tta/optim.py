"""Optimizer recipes of the official TTA configs, shared by the gradient-based methods, with their option checks.

Recipes (``OptimizerName``), each as the official code builds it:

- ``adam``: ``Adam(lr, betas=(0.9, 0.999), weight_decay)`` (Tent's and CoTTA's CIFAR configs, lr 1e-3, wd 0).
- ``sgd``: Nesterov ``SGD(lr, momentum, dampening=0, weight_decay, nesterov=True)`` (Tent's ImageNet setting,
  lr 2.5e-4, momentum 0.9; CoTTA's ImageNet config, lr 0.01, momentum 0.9).
- ``momentum``: plain momentum ``SGD(lr, momentum, dampening=0, weight_decay)`` (no Nesterov).
- ``adamw``: ``AdamW(lr, betas=(0.9, 0.999), weight_decay)``.

The options are checked once, by :func:`check_optimizer_options`, before a method touches the model;
:func:`build_optimizer` then builds without checking again.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Literal, get_args

import torch
from torch import nn

from tta.checks import check_choice, check_non_negative, check_positive, check_probability

__all__ = ["BETAS", "OPTIMIZERS", "OptimizerName", "build_optimizer", "check_optimizer_options"]

OptimizerName = Literal["adam", "sgd", "momentum", "adamw"]
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
BETAS = (0.9, 0.999)
"""Adam's and AdamW's betas in every official config."""


def check_optimizer_options(
    optimizer: object, lr: object, momentum: object = 0.9, weight_decay: object = 0.0, *,
    choices: Collection[str] = OPTIMIZERS,
) -> None:
    """Raise a clear ``TypeError``/``ValueError`` for optimizer options no recipe can use.

    Args:
        optimizer: The recipe's name, one of ``choices`` (a method may offer fewer than :data:`OPTIMIZERS`).
        lr: Learning rate, ``> 0``; ``None`` where the method fills in its recipe's default.
        momentum: SGD momentum in ``[0, 1]``; ``> 0`` for Nesterov ``sgd`` (torch requires it).
        weight_decay: L2 penalty, ``>= 0``.
        choices: The recipes the calling method offers.
    """
    check_choice("optimizer", optimizer, choices)
    if lr is not None:
        check_positive("lr", lr)
    check_probability("momentum", momentum)
    if optimizer == "sgd" and momentum == 0:  # torch's Nesterov SGD needs a momentum
        raise ValueError("momentum must be > 0 with optimizer='sgd' (Nesterov momentum), got 0")
    check_non_negative("weight_decay", weight_decay)


def build_optimizer(
    params: Iterable[nn.Parameter], optimizer: OptimizerName, *, lr: float, momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """Return the ``optimizer`` recipe over ``params`` (options checked by :func:`check_optimizer_options`)."""
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=BETAS, weight_decay=weight_decay)
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=BETAS, weight_decay=weight_decay)
    if optimizer in ("sgd", "momentum"):
        return torch.optim.SGD(params, lr=lr, momentum=momentum, dampening=0.0, weight_decay=weight_decay,
                               nesterov=optimizer == "sgd")
    raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
