"""Gradient reversal against the plain gradient (the pytorch-adapt oracle) and the DANN paper's schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tta.da import GradientReversal, anneal_lr, dann_schedule, grad_reverse


def _loss(x: torch.Tensor) -> torch.Tensor:
    return (x.sin() * torch.linspace(-1.0, 2.0, x.shape[-1])).pow(2).sum()


@pytest.mark.parametrize("scale", [0.0, 0.3, 1.0, 2.7])
def test_grad_reverse_gradient_is_minus_scale_times_plain_gradient(scale: float) -> None:
    x = torch.randn(4, 5, requires_grad=True)
    (plain,) = torch.autograd.grad(_loss(x), x)
    (reversed_grad,) = torch.autograd.grad(_loss(grad_reverse(x, scale)), x)
    assert torch.equal(reversed_grad, -scale * plain)


def test_gradient_reversal_flips_parameter_gradients_below_it() -> None:
    torch.manual_seed(0)
    below, above = nn.Linear(6, 5), nn.Sequential(nn.Tanh(), nn.Linear(5, 2))
    x = torch.randn(8, 6)
    plain = torch.autograd.grad(above(below(x)).logsumexp(1).sum(), list(below.parameters()))
    layer = GradientReversal(scale=0.0)
    layer.scale = 0.45  # set by a schedule between steps
    reversed_grads = torch.autograd.grad(above(layer(below(x))).logsumexp(1).sum(), list(below.parameters()))
    # Exact at the layer (test above); below it the matmul rounds (-λg)ᵀx and -λ(gᵀx) differently.
    for got, want in zip(reversed_grads, plain, strict=True):
        torch.testing.assert_close(got, -0.45 * want, rtol=1e-6, atol=1e-7)


def test_grad_reverse_forward_is_identity() -> None:
    x = torch.randn(3, 4)
    assert torch.equal(grad_reverse(x, 5.0), x)
    assert torch.equal(GradientReversal(0.5)(x), x)


@pytest.mark.parametrize("scale", [float("nan"), float("inf")])
def test_grad_reverse_rejects_non_finite_scale(scale: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        grad_reverse(torch.ones(2), scale)


def test_dann_schedule_matches_the_paper_formula() -> None:
    assert dann_schedule(0.0) == 0.0
    assert dann_schedule(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1, abs=1e-15)
    assert dann_schedule(1.0) == pytest.approx(0.9999092, abs=1e-7)
    assert dann_schedule(0.1) == pytest.approx(math.tanh(0.5), abs=1e-12)  # 2/(1+e^-x) - 1 = tanh(x/2)
    assert dann_schedule(0.5, gamma=2.0) == pytest.approx(math.tanh(0.5), abs=1e-12)
    values = [dann_schedule(p / 10) for p in range(11)]
    assert values == sorted(values)


@pytest.mark.parametrize("progress", [-0.01, 1.01])
def test_schedules_reject_progress_outside_unit_interval(progress: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dann_schedule(progress)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        anneal_lr(progress)


def test_anneal_lr_matches_the_paper_formula() -> None:
    assert anneal_lr(0.0) == 0.01
    assert anneal_lr(1.0) == pytest.approx(0.01 / 11**0.75, rel=1e-12)
    assert anneal_lr(0.5, base_lr=0.1, alpha=2.0, beta=1.0) == pytest.approx(0.05, rel=1e-12)
    assert anneal_lr(0.3) > anneal_lr(0.6)
