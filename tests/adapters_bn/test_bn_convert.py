"""Whole-model conversion: adapt -> restore is exact, fold matches, any nesting and root work."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from adapters_bn import (
    AdaptiveBatchNorm,
    adapt_batchnorm,
    fold_batchnorm,
    freeze_statistics,
    iter_adaptive,
    iter_batchnorms,
    recompute_statistics,
    restore_batchnorm,
    set_statistics,
)
from tests.helpers import clone_state, randomize_bn_statistics, small_resnet, state_equal, tiny_classifier


def test_adapt_then_restore_is_exact_round_trip() -> None:
    model = small_resnet()
    x = torch.rand(2, 3, 32, 32)
    before_state, before_out = clone_state(model), model(x)
    types = [type(m) for m in model.modules()]
    adapt_batchnorm(model, stats="ema")
    model(torch.rand(4, 3, 32, 32) + 1)  # adapt: running estimates move, source must not
    restore_batchnorm(model)
    assert [type(m) for m in model.modules()] == types
    assert state_equal(clone_state(model), before_state)
    assert torch.equal(model(x), before_out)


def test_replaced_count_equals_batchnorm_count_and_keys_are_stable() -> None:
    model = small_resnet()
    count = len(list(iter_batchnorms(model)))
    keys = set(model.state_dict())
    adapt_batchnorm(model)
    assert len(list(iter_adaptive(model))) == count == 20
    added = set(model.state_dict()) - keys
    assert keys <= set(model.state_dict())
    assert all(k.endswith(("source_mean", "source_var")) for k in added)


def test_root_batchnorm_and_nested_containers() -> None:
    root = randomize_bn_statistics(nn.Sequential(nn.BatchNorm2d(3)))[0].eval()
    new_root = adapt_batchnorm(root)
    assert isinstance(new_root, AdaptiveBatchNorm)
    assert isinstance(restore_batchnorm(new_root), nn.BatchNorm2d)
    nested = nn.ModuleDict({"a": nn.Sequential(nn.Sequential(nn.BatchNorm1d(4))), "b": nn.BatchNorm3d(2)})
    adapt_batchnorm(nested)
    assert isinstance(nested["a"][0][0], AdaptiveBatchNorm) and isinstance(nested["b"], AdaptiveBatchNorm)
    restore_batchnorm(nested)
    assert isinstance(nested["a"][0][0], nn.BatchNorm1d) and isinstance(nested["b"], nn.BatchNorm3d)


@pytest.mark.parametrize("layer", [nn.SyncBatchNorm(4), FrozenBatchNorm2d(4), nn.BatchNorm1d(4)])
def test_every_batchnorm_kind_round_trips(layer: nn.Module) -> None:
    model = nn.Sequential(layer).eval()
    state = clone_state(model)
    adapt_batchnorm(model)
    assert isinstance(model[0], AdaptiveBatchNorm)
    restore_batchnorm(model)
    assert type(model[0]) is type(layer)
    assert state_equal(clone_state(model), state)


@pytest.mark.parametrize("stats", ["batch", "mix", "ema"])
def test_fold_matches_current_statistics(stats: str) -> None:
    model = tiny_classifier()
    adapt_batchnorm(model, stats=stats, prior=0.4, momentum=0.2)  # type: ignore[arg-type]
    x = torch.rand(8, 3, 16, 16) * 2
    adapted_out = model(x)
    if stats == "ema":
        with freeze_statistics(model):
            adapted_out = model(x)
    fold_batchnorm(model)
    assert not list(iter_adaptive(model))
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    torch.testing.assert_close(model(x), adapted_out, atol=1e-5, rtol=1e-4)


def test_set_statistics_switches_every_layer() -> None:
    model = adapt_batchnorm(tiny_classifier(), stats="batch")
    set_statistics(model, "source")
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(model(x), restore_batchnorm(model)(x))


def test_recompute_statistics_averages_batch_statistics() -> None:
    model = adapt_batchnorm(tiny_classifier())
    batches = [torch.rand(8, 3, 16, 16) + i for i in range(3)]
    recompute_statistics(model, batches)
    first = next(layer for _, layer in iter_adaptive(model))
    conv = model[0]
    expected = torch.stack([conv(b).mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    torch.testing.assert_close(first.running_mean, expected.detach())
    assert first.stats == "ema" and first.momentum == 0.0
    with pytest.raises(ValueError, match="no batches"):
        recompute_statistics(model, [])
