"""Tests for tta.projection.schedule: betas, respacing and the closed forms, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from tta.projection.schedule import NoiseSchedule, linear_betas, space_timesteps


def test_linear_betas_endpoints_scale_with_length() -> None:
    betas = linear_betas(1000)
    assert betas.dtype == torch.float64 and len(betas) == 1000
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert linear_betas(100)[0].item() == pytest.approx(1e-3) and linear_betas(100)[-1].item() == pytest.approx(0.2)


def test_space_timesteps_matches_guided_diffusion_rounding() -> None:
    kept = space_timesteps(1000, 100)
    # stride (1000 - 1) / (100 - 1) = 10.0909..., each rounded: 50.45 -> 50, 60.55 -> 61
    assert kept[:8] == [0, 10, 20, 30, 40, 50, 61, 71] and kept[-1] == 999 and len(kept) == 100
    assert space_timesteps(10, 1) == [0]
    with pytest.raises(ValueError, match="cannot take"):
        space_timesteps(10, 11)


def test_respacing_keeps_alpha_bar_and_recomputes_betas_by_hand() -> None:
    schedule = NoiseSchedule.from_betas(torch.tensor([0.1, 0.2, 0.3]))
    # abar = 0.9, 0.72, 0.504; keeping steps 0 and 2 gives betas 0.1 and 1 - 0.504 / 0.9 = 0.44
    spaced = schedule.respaced([0, 2])
    assert torch.allclose(spaced.betas, torch.tensor([0.1, 0.44], dtype=torch.float64))
    assert spaced.timesteps.tolist() == [0, 2]
    full = NoiseSchedule.linear(1000)
    fast = NoiseSchedule.linear(1000, respacing=100)
    assert torch.allclose(fast.alphas_cumprod, full.alphas_cumprod[fast.timesteps])


def test_closed_forms_by_hand() -> None:
    schedule = NoiseSchedule.from_betas(torch.tensor([0.1, 0.2]))  # abar = 0.9, 0.72
    t = torch.tensor([1])
    x0, eps = torch.full((1, 1, 1, 1), 0.5), torch.full((1, 1, 1, 1), -1.0)
    x_t = schedule.q_sample(x0, t, eps)
    assert x_t.item() == pytest.approx(math.sqrt(0.72) * 0.5 - math.sqrt(0.28), rel=1e-6)
    assert schedule.predict_x0(x_t, t, eps, clip=False).item() == pytest.approx(0.5, rel=1e-6)
    assert schedule.predict_x0(torch.full_like(x_t, 5.0), t, eps).item() == 1.0  # clipped to [-1, 1]
    # posterior variance 0.2 * (1 - 0.9) / (1 - 0.72); mean coefficients per Ho et al. eq. 7
    assert schedule.posterior_variance[1].item() == pytest.approx(0.2 * 0.1 / 0.28)
    mean = schedule.posterior_mean(x0, torch.ones_like(x0), t)
    expected = 0.2 * math.sqrt(0.9) / 0.28 * 0.5 + 0.1 * math.sqrt(0.8) / 0.28 * 1.0
    assert mean.item() == pytest.approx(expected, rel=1e-6)


def test_model_log_variance_learned_range_and_fixed() -> None:
    schedule = NoiseSchedule.linear(1000, respacing=10)
    t = torch.tensor([3, 3])
    like = torch.zeros(2, 1, 2, 2)
    high = schedule.model_log_variance(t, like, torch.ones_like(like))
    low = schedule.model_log_variance(t, like, -torch.ones_like(like))
    assert torch.allclose(high, torch.log(schedule.betas[3]).float().expand_as(like))
    assert torch.allclose(low, schedule.posterior_log_variance_clipped[3].float().expand_as(like))
    assert torch.equal(schedule.model_log_variance(t, like, fixed="small"), low)
    assert torch.equal(schedule.model_log_variance(t, like, fixed="large"), high)
    # beta~_0 = 0 is replaced by beta~_1 (log 0 would be -inf)
    assert torch.isfinite(schedule.model_log_variance(torch.tensor([0]), like[:1])).all()


def test_invalid_betas_raise() -> None:
    with pytest.raises(ValueError, match="betas"):
        NoiseSchedule.from_betas(torch.tensor([0.0, 0.1]))
