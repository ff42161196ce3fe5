"""Tests for eval.training.diffusion and ``tta train-diffusion``: a few steps, interruption and exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eval.cli import main
from eval.training.diffusion import diffusion_loss, fmnist_ddpm_config, resume_path, train_diffusion
from tta.projection.adm import ADMUNet, load_adm
from tta.projection.denoisers import ADMDenoiser, load_denoiser
from tta.projection.schedule import NoiseSchedule

TINY = {"steps": 4, "batch_size": 4, "checkpoint_every": 2}


def test_interrupted_run_resumes_exactly_and_half_weights_stay_close(fmnist_dir: Path, tmp_path: Path) -> None:
    interrupted = tmp_path / "a.pt"
    summary = train_diffusion(interrupted, data_root=fmnist_dir, stop_after=2, **TINY)
    assert summary["steps_done"] == 2 and summary["out"] is None and resume_path(interrupted).is_file()
    assert not interrupted.exists()
    calls: list[int] = []
    summary = train_diffusion(interrupted, data_root=fmnist_dir, resume=True,
                              progress=lambda step, total, loss: calls.append(step), **TINY)
    assert calls == [3, 4] and summary["out"] == str(interrupted)
    straight = tmp_path / "b.pt"
    train_diffusion(straight, data_root=fmnist_dir, half=False, **TINY)
    # the float32 training states of the resumed and the uninterrupted run are identical
    a, b = (torch.load(resume_path(p), weights_only=True) for p in (interrupted, straight))
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    # the shipped float16 weights load as float32 and predict like the float32 ones
    half, full = load_adm(interrupted), load_adm(straight)
    assert half.config == fmnist_ddpm_config() and not half.config.learn_sigma
    assert next(half.parameters()).dtype == torch.float32
    x, t = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 100, 500, 999])
    with torch.no_grad():
        assert torch.allclose(half(x, t), full(x, t), atol=2e-3)
    denoiser = load_denoiser(interrupted)
    assert isinstance(denoiser, ADMDenoiser) and denoiser.image_size == 28 and denoiser.channels == 1


def test_resume_with_other_settings_is_refused(fmnist_dir: Path, tmp_path: Path) -> None:
    train_diffusion(tmp_path / "a.pt", data_root=fmnist_dir, stop_after=1, **TINY)
    with pytest.raises(ValueError, match="other settings"):
        train_diffusion(tmp_path / "a.pt", data_root=fmnist_dir, resume=True, lr=1e-3, **TINY)


def test_diffusion_loss_is_zero_for_a_perfect_noise_predictor() -> None:
    schedule = NoiseSchedule.linear(1000)
    x0, noise, t = torch.rand(2, 1, 4, 4) * 2 - 1, torch.randn(2, 1, 4, 4), torch.tensor([5, 900])
    def oracle(x_t: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        abar = schedule.alphas_cumprod[steps].float().view(-1, 1, 1, 1)
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()

    assert diffusion_loss(oracle, x0, t, noise, schedule).item() < 1e-8  # type: ignore[arg-type]
    assert isinstance(ADMUNet(fmnist_ddpm_config()), ADMUNet)


def test_cli_trains_interrupts_and_resumes(
    fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ddpm.pt"
    common = ["train-diffusion", "--steps", "3", "--batch-size", "2", "--checkpoint-every", "1",
              "--data-root", str(fmnist_dir), "--out", str(out)]
    train_diffusion(out, data_root=fmnist_dir, steps=3, batch_size=2, checkpoint_every=1, stop_after=1)
    assert main([*common, "--resume"]) == 0
    assert out.is_file() and "after 3 steps" in capsys.readouterr().out
