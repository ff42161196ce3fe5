"""AdaptiveBatchNorm: each statistics mode computes what it claims, and source statistics survive."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from adapters_bn import AdaptiveBatchNorm, freeze_statistics
from tests.helpers import randomize_bn_statistics


def _bn(channels: int = 4, cls: type[nn.Module] = nn.BatchNorm2d) -> nn.Module:
    return randomize_bn_statistics(nn.Sequential(cls(channels)))[0].eval()


def test_source_mode_equals_eval_batchnorm() -> None:
    bn = _bn()
    x = torch.randn(5, 4, 6, 6)
    assert torch.equal(AdaptiveBatchNorm(bn, stats="source")(x), bn(x))


@pytest.mark.parametrize("grad", [True, False])
def test_batch_mode_equals_train_mode_batchnorm_exactly(grad: bool) -> None:
    bn = _bn()
    train_bn = nn.BatchNorm2d(4, track_running_stats=False).train()
    train_bn.load_state_dict({"weight": bn.weight, "bias": bn.bias}, strict=False)
    x = torch.randn(5, 4, 6, 6) * 3 + 2
    layer = AdaptiveBatchNorm(bn, stats="batch")
    with torch.set_grad_enabled(grad):
        assert torch.equal(layer(x), train_bn(x))
    torch.testing.assert_close(layer.running_mean, x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(layer.running_var, x.var(dim=(0, 2, 3), correction=0))


def test_batch_mode_gradient_flows_through_statistics_like_batchnorm() -> None:
    bn = _bn()
    x = torch.randn(5, 4, 3, 3, requires_grad=True)
    AdaptiveBatchNorm(bn, stats="batch")(x).pow(2).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    ref = nn.BatchNorm2d(4, track_running_stats=False).train()
    ref.load_state_dict({"weight": bn.weight, "bias": bn.bias}, strict=False)
    ref(x2).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize("prior", [0.0, 0.3, 1.0])
def test_mix_mode_mixes_source_and_batch_statistics(prior: float) -> None:
    bn = _bn()
    x = torch.randn(6, 4, 5, 5) + 1.5
    layer = AdaptiveBatchNorm(bn, stats="mix", prior=prior)
    out = layer(x)
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    mix_mean = prior * bn.running_mean + (1 - prior) * mean
    mix_var = prior * bn.running_var + (1 - prior) * var
    expected = torch.nn.functional.batch_norm(x, mix_mean, mix_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    torch.testing.assert_close(out, expected)


def test_ema_mode_updates_running_statistics_by_momentum() -> None:
    bn = _bn()
    x = torch.randn(6, 4, 5, 5) * 2 - 1
    layer = AdaptiveBatchNorm(bn, stats="ema", momentum=0.25)
    out = layer(x)
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=1)
    exp_mean = 0.75 * bn.running_mean + 0.25 * mean
    exp_var = 0.75 * bn.running_var + 0.25 * var
    torch.testing.assert_close(layer.running_mean, exp_mean)
    torch.testing.assert_close(layer.running_var, exp_var)
    torch.testing.assert_close(out, nn.functional.batch_norm(x, exp_mean, exp_var, bn.weight, bn.bias, False, 0.0, bn.eps))


def test_source_statistics_never_change() -> None:
    bn = _bn()
    layer = AdaptiveBatchNorm(bn, stats="ema", momentum=0.5)
    for stats in ("ema", "batch", "mix"):
        layer.stats = stats
        layer(torch.randn(4, 4, 3, 3) + 7)
    torch.testing.assert_close(layer.source_mean, bn.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(layer.source_var, bn.running_var, rtol=0, atol=0)


def test_freeze_statistics_stores_nothing() -> None:
    layer = AdaptiveBatchNorm(_bn(), stats="ema")
    before = layer.running_mean.clone()
    with freeze_statistics(layer):
        layer(torch.randn(4, 4, 3, 3) + 3)
    assert torch.equal(layer.running_mean, before)


def test_batch_of_one_image_works_but_one_value_per_channel_is_refused() -> None:
    layer = AdaptiveBatchNorm(_bn(), stats="batch")
    assert layer(torch.randn(1, 4, 3, 3)).shape == (1, 4, 3, 3)
    layer1d = AdaptiveBatchNorm(_bn(cls=nn.BatchNorm1d), stats="batch")
    with pytest.raises(ValueError, match="degenerate"):
        layer1d(torch.randn(1, 4))
    with pytest.raises(ValueError, match="empty"):
        layer(torch.randn(0, 4, 3, 3))


def test_mix_with_prior_accepts_one_value_per_channel() -> None:
    layer = AdaptiveBatchNorm(_bn(cls=nn.BatchNorm1d), stats="mix", prior=0.5)
    assert torch.isfinite(layer(torch.randn(1, 4))).all()


def test_wrong_channel_count_and_bad_options_raise() -> None:
    layer = AdaptiveBatchNorm(_bn(), stats="batch")
    with pytest.raises(ValueError, match=r"\(B, 4"):
        layer(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="statistics mode"):
        AdaptiveBatchNorm(_bn(), stats="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prior"):
        AdaptiveBatchNorm(_bn(), stats="mix", prior=1.5)
    with pytest.raises(ValueError, match="running statistics"):
        AdaptiveBatchNorm(nn.BatchNorm2d(4, track_running_stats=False))


def test_frozen_batchnorm_source_mode_is_bit_identical() -> None:
    frozen = FrozenBatchNorm2d(4)
    frozen.running_mean.uniform_(-1, 1)
    frozen.running_var.uniform_(0.5, 2)
    frozen.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 4, 5, 5)
    layer = AdaptiveBatchNorm(frozen, stats="source")
    assert torch.equal(layer(x), frozen(x))
    assert isinstance(layer.weight, nn.Parameter)


def test_to_batchnorm_matches_current_statistics() -> None:
    layer = AdaptiveBatchNorm(_bn(), stats="ema", momentum=0.3)
    for _ in range(3):
        layer(torch.randn(8, 4, 4, 4) + 2)
    folded = layer.to_batchnorm()
    x = torch.randn(5, 4, 4, 4)
    with freeze_statistics(layer):
        expected = layer(x)
    assert isinstance(folded, nn.BatchNorm2d) and not folded.training
    torch.testing.assert_close(folded(x), expected)
