"""Tent: matches the official update rule, adapts only norm affine parameters, on BN/GN/LN models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tta
from tests.helpers import small_resnet, small_vit, tiny_classifier


def _official_style_tent_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    (-(logits.softmax(1) * logits.log_softmax(1)).sum(1)).mean(0).backward()
    optimizer.step()
    optimizer.zero_grad()
    return logits.detach()


def _official_style_model(model: nn.Module) -> tuple[nn.Module, list[nn.Parameter]]:
    """Configure a copy the way Tent's official configure_model/collect_params do (train-mode BN, no stats)."""
    model = copy.deepcopy(model).train()
    model.requires_grad_(False)
    params = []
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.requires_grad_(True)
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None
            params += [module.weight, module.bias]
    return model, params


def test_tent_matches_official_update_bit_for_bit() -> None:
    model = tiny_classifier()
    reference, params = _official_style_model(model)
    ref_opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
    adapter = tta.wrap(model, "tent")
    for seed in range(4):
        x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) + seed * 0.2
        assert torch.equal(adapter(x), _official_style_tent_step(reference, ref_opt, x))


def test_tent_sgd_preset_matches_official_imagenet_setting() -> None:
    model = tiny_classifier()
    reference, params = _official_style_model(model)
    ref_opt = torch.optim.SGD(params, lr=0.00025, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=True)
    adapter = tta.wrap(model, "tent", optimizer="sgd")
    for seed in range(3):
        x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(adapter(x), _official_style_tent_step(reference, ref_opt, x))


def test_tent_entropy_falls_over_five_steps() -> None:
    adapter = tta.wrap(tiny_classifier(), "tent", lr=1e-2)
    x = torch.rand(16, 3, 16, 16) * 2
    entropies = [tta.softmax_entropy(adapter(x)).mean().item() for _ in range(6)]
    assert entropies[-1] < entropies[0]
    assert sum(b < a for a, b in zip(entropies, entropies[1:])) >= 4


@pytest.mark.parametrize(("build", "norm_type"), [(lambda: small_resnet("bn"), "AdaptiveBatchNorm"),
                                                  (lambda: small_resnet("gn"), "GroupNorm"),
                                                  (small_vit, "LayerNorm")])
def test_tent_adapts_norm_affine_of_bn_gn_and_ln_models(build, norm_type: str) -> None:  # type: ignore[no-untyped-def]
    adapter = tta.wrap(build(), "tent", lr=1e-2)
    size = 16 if norm_type == "LayerNorm" else 32
    trainable = {n for n, p in adapter.model.named_parameters() if p.requires_grad}
    affine = {n for n, _ in tta.norm_affine_parameters(adapter.model)}
    assert trainable == affine and trainable
    owners = {type(adapter.model.get_submodule(n.rsplit(".", 1)[0])).__name__ for n in trainable}
    assert owners == {norm_type}
    before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    adapter(torch.rand(4, 3, size, size))
    moved = {n for n, p in adapter.model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and moved <= affine


def test_tent_refuses_model_without_norm_layers() -> None:
    with pytest.raises(ValueError, match="normalization layers"):
        tta.wrap(tiny_classifier(norm="none"), "tent")


def test_tent_batch_of_one_image_works() -> None:
    assert tta.wrap(tiny_classifier(), "tent")(torch.rand(1, 3, 16, 16)).shape == (1, 10)


def test_tent_degenerate_batch_statistics_raise_clearly() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()
    adapter = tta.wrap(model, "tent", input_ndim=None)
    with pytest.raises(ValueError, match="one value per channel"):
        adapter(torch.rand(1, 3, 2, 2))
