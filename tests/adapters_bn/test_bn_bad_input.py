"""Bad input gets a clear error before anything changes, and non-finite batches never reach stored statistics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from adapters_bn import (
    AdaptiveBatchNorm,
    adapt_batchnorm,
    fold_batchnorm,
    freeze_statistics,
    iter_adaptive,
    iter_batchnorms,
    iter_norm_layers,
    recompute_statistics,
    replace_modules,
    restore_batchnorm,
    set_statistics,
)
from tests.helpers import clone_state, state_equal, tiny_classifier

_X = torch.rand(4, 3, 8, 8)
_MODES: list[dict[str, Any]] = [{"stats": "ema"}, {"stats": "batch"}, {"stats": "mix", "prior": 0.5}]


def _modes(model: nn.Module) -> list[tuple[str, float, float, bool]]:
    return [(m.stats, m.momentum, m.prior, m.update_stats) for _, m in iter_adaptive(model)]


@pytest.mark.parametrize("options", _MODES)
def test_nan_batch_leaves_statistics_and_later_outputs_finite(options: dict[str, Any]) -> None:
    model = adapt_batchnorm(tiny_classifier(), **options)
    model(_X)
    state = clone_state(model)
    assert not torch.isfinite(model(torch.full_like(_X, float("nan")))).all()  # the caller sees the bad batch
    assert state_equal(clone_state(model), state)
    for _ in range(3):
        assert torch.isfinite(model(_X)).all()
    folded = fold_batchnorm(model)
    assert all(torch.isfinite(t).all() for t in folded.state_dict().values())


@pytest.mark.parametrize("options", [*_MODES, {"stats": "mix"}])
def test_forward_never_reads_a_tensor_value(options: dict[str, Any]) -> None:
    # On the meta device .item() / bool(tensor) raise: the forward path has no host-device sync (CUDA speed).
    model = adapt_batchnorm(tiny_classifier(), **options).to("meta")
    assert model(torch.empty(4, 3, 8, 8, device="meta")).shape == (4, 10)


def test_non_finite_statistics_are_skipped_per_channel() -> None:
    layer = AdaptiveBatchNorm(nn.BatchNorm1d(3).eval(), stats="ema", momentum=0.5)
    x = torch.randn(8, 3) + 4
    x[2, 1] = float("inf")
    layer(x)
    assert layer.running_mean[1] == 0 and layer.running_var[1] == 1  # channel 1 kept its source statistics
    assert (layer.running_mean[[0, 2]] > 1).all() and torch.isfinite(layer.running_var).all()


@pytest.mark.parametrize("options", _MODES)
def test_empty_batch_raises_before_any_change(options: dict[str, Any]) -> None:
    model = adapt_batchnorm(tiny_classifier(), **options)
    state = clone_state(model)
    with pytest.raises(ValueError, match=r"empty batch of shape \(0, 8, 8, 8\)"):
        model(_X[:0])
    assert state_equal(clone_state(model), state)


def test_source_mode_still_passes_an_empty_batch_like_eval_batchnorm() -> None:
    model = adapt_batchnorm(tiny_classifier(), stats="source")
    assert model(_X[:0]).shape == (0, 10)


def _converted() -> nn.Module:
    model = adapt_batchnorm(tiny_classifier(), stats="ema")
    model(_X)
    return model


@pytest.mark.parametrize(
    ("batches", "kwargs", "error", "match"),
    [
        ([_X, torch.rand(4, 1, 8, 8)], {}, ValueError, r"batch 1 has shape \(4, 1, 8, 8\).*channels"),
        ([torch.rand(4, 1, 8, 8)], {}, RuntimeError, "channels"),  # the model's own error, state still restored
        ([], {}, ValueError, "no batches"),
        ([_X], {"max_batches": 0}, ValueError, "max_batches must be >= 1"),
        ([_X], {"max_batches": 1.5}, TypeError, "max_batches must be a positive int"),
        ([_X, torch.full_like(_X, float("nan"))], {}, ValueError, "batch 1 .* NaN/Inf BatchNorm statistics"),
        ([_X, "x"], {}, TypeError, "batch 1 must be a torch.Tensor, got str"),
    ],
)
def test_recompute_statistics_failure_restores_statistics_and_modes(
    batches: list[Any], kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    model = _converted()
    state, modes = clone_state(model), _modes(model)
    with pytest.raises(error, match=match):
        recompute_statistics(model, batches, **kwargs)
    assert state_equal(clone_state(model), state)
    assert _modes(model) == modes


def test_recompute_statistics_collects_even_inside_freeze_statistics() -> None:
    model = _converted()
    reference = recompute_statistics(_converted(), [_X, _X * 2])
    with freeze_statistics(model):
        recompute_statistics(model, [_X, _X * 2])
        assert not any(layer.update_stats for _, layer in iter_adaptive(model))
    assert state_equal(clone_state(model), clone_state(reference))


def test_ema_batch_of_one_stream_through_batchnorm1d_head_moves_toward_the_stream() -> None:
    head = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()
    model = adapt_batchnorm(head, stats="ema", momentum=0.1)
    layer = model[1]
    stream = torch.randn(40, 3, generator=torch.Generator().manual_seed(0)) + 5
    target = model[0](stream).mean(0).detach()
    before = (layer.running_mean - target).abs()
    for x in stream:
        assert torch.isfinite(model(x[None])).all()
    assert ((layer.running_mean - target).abs() < 0.1 * before).all()
    assert torch.equal(layer.running_var, layer.source_var)  # one value per channel: no variance information


_CALLS: list[Callable[[Any], object]] = [
    adapt_batchnorm, fold_batchnorm, restore_batchnorm, iter_adaptive, iter_norm_layers, iter_batchnorms,
    freeze_statistics, lambda m: set_statistics(m, "batch"), lambda m: recompute_statistics(m, [_X]),
    lambda m: replace_modules(m, lambda _n, _m: False, lambda m: m),
]


@pytest.mark.parametrize("call", _CALLS)
@pytest.mark.parametrize(("value", "name"), [("x", "str"), (None, "NoneType"), (3, "int")])
def test_functions_taking_a_model_reject_non_modules_at_the_call(
    call: Callable[[Any], object], value: object, name: str
) -> None:
    with pytest.raises(TypeError, match=f"nn.Module, got {name}"):
        call(value)


@pytest.mark.parametrize("layer", [nn.LayerNorm(4), nn.Linear(4, 4), nn.InstanceNorm2d(4, track_running_stats=True)])
def test_adaptive_batchnorm_rejects_non_batchnorm_layers(layer: nn.Module) -> None:
    with pytest.raises(TypeError, match=f"wraps a BatchNorm layer.*got {type(layer).__name__}"):
        AdaptiveBatchNorm(layer)


def test_set_statistics_validates_the_mode_always_and_refuses_unconverted_batchnorm() -> None:
    plain = tiny_classifier()
    with pytest.raises(ValueError, match="unknown statistics mode 'bogus'"):
        set_statistics(plain, "bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="BatchNorm layers in Sequential but no AdaptiveBatchNorm; convert"):
        set_statistics(plain, "batch")
    bn_free = tiny_classifier(norm="gn")
    assert set_statistics(bn_free, "batch") is bn_free  # nothing to set, as adapt_batchnorm leaves it
    model = adapt_batchnorm(tiny_classifier(), stats="ema")
    modes = _modes(model)
    with pytest.raises(ValueError, match="momentum must be in"):
        set_statistics(model, "mix", momentum=2.0)
    with pytest.raises(TypeError, match="prior must be a number"):
        adapt_batchnorm(model, stats="mix", prior="0.5")  # type: ignore[arg-type]
    assert _modes(model) == modes
