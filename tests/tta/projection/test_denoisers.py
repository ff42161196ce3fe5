"""Tests for tta.projection.denoisers: output splitting, geometry checks, loading errors, the CPU warning."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.tta.projection.tiny_denoiser import TinyDenoiser
from tta.projection.adm_config import ADMConfig
from tta.projection.adm import ADMUNet, save_adm
from tta.projection.denoisers import (
    ADMDenoiser,
    ModuleDenoiser,
    as_denoiser,
    load_denoiser,
    split_output,
)


def test_split_output_reads_eps_and_learned_variance() -> None:
    raw = torch.randn(2, 6, 4, 4)
    out = split_output(raw, 3)
    assert torch.equal(out.eps, raw[:, :3]) and out.var_values is not None and torch.equal(out.var_values, raw[:, 3:])
    assert split_output(raw[:, :3], 3).var_values is None
    with pytest.raises(ValueError, match="returned 5 channels"):
        split_output(raw[:, :5], 3)


def test_module_denoiser_checks_size_and_channels() -> None:
    denoiser = ModuleDenoiser(TinyDenoiser(), image_size=16, channels=3)
    assert denoiser(torch.randn(2, 3, 16, 16), torch.tensor([1, 2])).eps.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="trained on 16x16 images, got 32x32"):
        denoiser(torch.randn(1, 3, 32, 32), torch.tensor([1]))
    with pytest.raises(ValueError, match="3-channel images, got 1"):
        denoiser(torch.randn(1, 1, 16, 16), torch.tensor([1]))


def _tiny_adm(image_size: int = 16, learn_sigma: bool = True) -> ADMUNet:
    config = ADMConfig(image_size=image_size, in_channels=3, model_channels=32, num_res_blocks=1,
                       attention_resolutions=(), channel_mult=(1, 1), learn_sigma=learn_sigma)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ADMUNet(config).eval()


def test_adm_denoiser_splits_learned_sigma_and_rejects_other_sizes(tmp_path: Path) -> None:
    denoiser = as_denoiser(_tiny_adm())
    assert isinstance(denoiser, ADMDenoiser) and denoiser.image_size == 16
    out = denoiser(torch.randn(2, 3, 16, 16), torch.tensor([10, 500]))
    assert out.eps.shape == (2, 3, 16, 16) and out.var_values is not None
    with pytest.raises(ValueError, match="16x16 images, got 32x32"):
        denoiser(torch.randn(1, 3, 32, 32), torch.tensor([1]))
    save_adm(_tiny_adm(), tmp_path / "adm.pt")
    loaded = load_denoiser(tmp_path / "adm.pt")
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([7])
    assert torch.equal(loaded(x, t).eps, denoiser(x, t).eps)


class _Stub256(torch.nn.Module):
    """Stands in for the 256x256 ADM (building the real one takes too long for a unit test)."""

    config = SimpleNamespace(image_size=256, in_channels=3)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def test_adm_256_on_cpu_warns_with_expected_time() -> None:
    denoiser = ADMDenoiser(_Stub256())
    with pytest.warns(RuntimeWarning, match=r"on CPU: each guided step costs roughly .* minutes per image"):
        denoiser(torch.randn(1, 3, 256, 256), torch.tensor([3]))


def test_missing_checkpoint_says_where_to_put_it(tmp_path: Path) -> None:
    where = r"no diffusion checkpoint at .*256x256_diffusion_uncond.pt.*train-diffusion"
    with pytest.raises(FileNotFoundError, match=where):
        load_denoiser(tmp_path / "missing.pt")


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is not None, reason="diffusers is installed")
def test_diffusers_folder_without_the_extra_names_it(tmp_path: Path) -> None:
    with pytest.raises(ImportError, match=r"'diffusion' extra"):
        load_denoiser(tmp_path)


def test_as_denoiser_rejects_other_objects() -> None:
    with pytest.raises(TypeError, match="denoiser module or a checkpoint path"):
        as_denoiser(42)
