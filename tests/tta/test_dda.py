"""Tests for tta.methods.dda: ensemble rules on hand-made probabilities, wrapping, errors and norm base."""

from __future__ import annotations

import math

import pytest
import torch

import tta
from adapters_bn import iter_adaptive
from tests.helpers import tiny_classifier
from tests.tta.projection.tiny_denoiser import TinyDenoiser
from tta.methods.dda import ENSEMBLES, ensemble_probabilities

P = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.3, 0.3]])  # original
Q = torch.tensor([[0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])  # projected


def _entropy(row: list[float]) -> float:
    return -sum(v * math.log(v) for v in row)


def test_sum_rule_is_the_normalized_sum() -> None:
    assert torch.allclose(ensemble_probabilities(P, Q, "sum"), (P + Q) / 2)


def test_selection_rules_pick_per_image() -> None:
    # Q is sharper on both images (lower entropy, higher maximum), so both selection rules pick it
    assert _entropy([0.1, 0.8, 0.1]) < _entropy([0.7, 0.2, 0.1])
    assert torch.equal(ensemble_probabilities(P, Q, "entropy"), Q)
    assert torch.equal(ensemble_probabilities(P, Q, "confidence"), Q)
    sharp_p = torch.tensor([[0.98, 0.01, 0.01], [0.4, 0.3, 0.3]])
    picked = ensemble_probabilities(sharp_p, Q, "confidence")
    assert torch.equal(picked[0], sharp_p[0]) and torch.equal(picked[1], Q[1])
    assert torch.equal(ensemble_probabilities(sharp_p, Q, "entropy"), picked)


def test_weighted_sum_rules_by_hand() -> None:
    h_p, h_q = _entropy(P[0].tolist()), _entropy(Q[0].tolist())
    expected = P[0] * h_q + Q[0] * h_p
    assert torch.allclose(ensemble_probabilities(P, Q, "entropy_sum")[0], expected / expected.sum())
    expected = P[0] * 0.7 + Q[0] * 0.8
    assert torch.allclose(ensemble_probabilities(P, Q, "confidence_sum")[0], expected / expected.sum())
    assert torch.equal(ensemble_probabilities(P, Q, "original"), P)
    with pytest.raises(ValueError, match="unknown ensemble rule"):
        ensemble_probabilities(P, Q, "vote")  # type: ignore[arg-type]


def _dda(**kwargs: object) -> tta.TTAMethod:
    options = {"denoiser": TinyDenoiser(), "respacing": 10, "start_step": 3, **kwargs}
    return tta.wrap(tiny_classifier(), "dda", **options)


def test_wrap_returns_log_ensemble_probabilities() -> None:
    x = torch.rand(4, 3, 16, 16)
    logits = _dda(ensemble="original")(x)
    assert torch.allclose(logits, tiny_classifier()(x).log_softmax(1), atol=1e-5)
    logits = _dda()(x)
    assert torch.allclose(logits.exp().sum(1), torch.ones(4), atol=1e-5)
    assert set(ENSEMBLES) >= {"sum", "entropy", "confidence"}


def test_reset_replays_the_same_noise_and_batches_get_fresh_noise() -> None:
    adapter, x = _dda(ensemble="projected"), torch.rand(2, 3, 16, 16)
    first, second = adapter(x), adapter(x)
    assert not torch.equal(first, second)
    adapter.reset()
    assert torch.equal(adapter(x), first)


def test_norm_base_uses_batch_statistics() -> None:
    adapter = _dda(base="norm")
    assert any(iter_adaptive(adapter.model))
    assert not any(iter_adaptive(_dda().model))


def test_missing_denoiser_and_bad_options_raise_clearly() -> None:
    with pytest.raises(ValueError, match=r"denoiser=.*fmnist_ddpm.pt"):
        tta.wrap(tiny_classifier(), "dda")
    with pytest.raises(ValueError, match="base must be"):
        _dda(base="tent")
    with pytest.raises(FileNotFoundError, match="no diffusion checkpoint"):
        _dda(denoiser="/nonexistent/ddpm.pt")


def test_image_size_mismatch_says_what_the_denoiser_expects() -> None:
    from tta.projection.denoisers import ModuleDenoiser

    adapter = _dda(denoiser=ModuleDenoiser(TinyDenoiser(), image_size=28))
    with pytest.raises(ValueError, match="trained on 28x28 images, got 16x16"):
        adapter(torch.rand(2, 3, 16, 16))


def test_fp16_loads_an_adm_checkpoint_path_with_half_precision_blocks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tta.projection.adm_config import ADMConfig
    from tta.projection.adm import ADMUNet, save_adm

    config = ADMConfig(image_size=16, model_channels=32, channel_mult=(1, 2), attention_resolutions=(8,),
                       num_head_channels=8)
    save_adm(ADMUNet(config), tmp_path / "adm.pt")
    half = tta.wrap(tiny_classifier(), "dda", denoiser=str(tmp_path / "adm.pt"), fp16=True)
    full = tta.wrap(tiny_classifier(), "dda", denoiser=str(tmp_path / "adm.pt"))
    assert half.projector.denoiser.unet.block_dtype == torch.float16
    assert next(half.projector.denoiser.unet.input_blocks.parameters()).dtype == torch.float16
    assert full.projector.denoiser.unet.block_dtype == torch.float32
