"""The shared optimizer recipes: the official configs' settings, and their one option check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tta.optim import OPTIMIZERS, build_optimizer, check_optimizer_options


def _params() -> list[nn.Parameter]:
    return [nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize(("name", "cls", "expected"), [
    ("adam", torch.optim.Adam, {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.0}),
    ("adamw", torch.optim.AdamW, {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.0}),
    ("sgd", torch.optim.SGD, {"lr": 1e-3, "momentum": 0.9, "dampening": 0.0, "nesterov": True, "weight_decay": 0.0}),
    ("momentum", torch.optim.SGD, {"lr": 1e-3, "momentum": 0.9, "dampening": 0.0, "nesterov": False}),
])
def test_each_recipe_builds_the_official_settings(name: str, cls: type, expected: dict[str, object]) -> None:
    optimizer = build_optimizer(_params(), name, lr=1e-3)  # type: ignore[arg-type]
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert {key: group[key] for key in expected} == expected


def test_tent_imagenet_setting_is_nesterov_sgd() -> None:
    group = build_optimizer(_params(), "sgd", lr=2.5e-4, momentum=0.9).param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["dampening"]) == (2.5e-4, 0.9, True, 0.0)


def test_check_accepts_every_recipe_and_a_default_lr() -> None:
    for name in OPTIMIZERS:
        check_optimizer_options(name, None)


@pytest.mark.parametrize(("options", "error", "match"), [
    ({"optimizer": "rmsprop", "lr": 1e-3}, ValueError, r"optimizer must be one of \['adam', 'sgd', 'momentum', 'adamw'\]"),
    ({"optimizer": "adam", "lr": 0}, ValueError, "lr must be > 0, got 0"),
    ({"optimizer": "adam", "lr": "1e-3"}, TypeError, "lr must be a number"),
    ({"optimizer": "sgd", "lr": 1e-3, "momentum": 0}, ValueError, "momentum must be > 0 with optimizer='sgd'"),
    ({"optimizer": "momentum", "lr": 1e-3, "momentum": 1.5}, ValueError, r"momentum must be in \[0, 1\]"),
    ({"optimizer": "adamw", "lr": 1e-3, "weight_decay": -1}, ValueError, "weight_decay must be >= 0"),
])
def test_check_refuses_bad_options_in_one_line(options: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match) as info:
        check_optimizer_options(**options)
    assert "\n" not in str(info.value)


def test_a_method_may_offer_fewer_recipes() -> None:
    with pytest.raises(ValueError, match=r"optimizer must be one of \['adam', 'sgd'\], got 'adamw'"):
        check_optimizer_options("adamw", 1e-3, choices=("adam", "sgd"))
