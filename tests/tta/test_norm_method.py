"""Norm: test-batch statistics fix a shift that the source statistics get wrong."""

from __future__ import annotations

import pytest
import torch

import tta
from tests.helpers import small_vit, tiny_classifier


def test_norm_fixes_a_shift_that_source_gets_wrong(analytic, shifted) -> None:  # type: ignore[no-untyped-def]
    x, y = shifted
    source_error = (tta.wrap(analytic, "source")(x).argmax(1) != y).float().mean()
    norm_error = (tta.wrap(analytic, "norm")(x).argmax(1) != y).float().mean()
    assert source_error == 0.5 and norm_error == 0.0


def test_mix_prior_interpolates_between_source_and_norm(analytic, shifted) -> None:  # type: ignore[no-untyped-def]
    x, _ = shifted
    source = tta.wrap(analytic, "source")(x)
    assert torch.equal(tta.wrap(analytic, "norm", stats="mix", prior=1.0)(x), source)
    torch.testing.assert_close(tta.wrap(analytic, "norm", stats="mix", prior=0.0)(x), tta.wrap(analytic, "norm")(x))


def test_ema_statistics_accumulate_across_batches_and_reset(analytic, shifted) -> None:  # type: ignore[no-untyped-def]
    x, y = shifted
    adapter = tta.wrap(analytic, "norm", stats="ema", momentum=0.5)
    errors = [(adapter(x).argmax(1) != y).float().mean().item() for _ in range(6)]
    assert errors[0] == 0.5 and errors[-1] == 0.0
    adapter.reset()
    assert (adapter(x).argmax(1) != y).float().mean().item() == 0.5


def test_norm_refuses_model_without_batchnorm() -> None:
    with pytest.raises(ValueError, match="no BatchNorm"):
        tta.wrap(small_vit(), "norm")


def test_norm_unknown_statistics_mode_raises() -> None:
    with pytest.raises(ValueError, match="stats must be one of"):
        tta.wrap(tiny_classifier(), "norm", stats="median")


@pytest.mark.parametrize(("options", "expected"), [
    ({"stats": "batch"}, lambda mean, var, unbiased: (mean, var)),
    ({"stats": "mix", "prior": 0.25}, lambda mean, var, unbiased: (0.75 * mean, 0.25 + 0.75 * var)),
    ({"stats": "ema", "momentum": 0.5}, lambda mean, var, unbiased: (0.5 * mean, 0.5 + 0.5 * unbiased)),
])
def test_norm_running_statistics_hold_the_last_forwards_and_the_source_ones_are_kept(  # type: ignore[no-untyped-def]
        analytic, shifted, options, expected) -> None:
    x, _ = shifted
    adapter = tta.wrap(analytic, "norm", **options)
    layer = adapter.model[0]
    adapter(x)
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    want_mean, want_var = expected(mean, var, torch.var(x, dim=(0, 2, 3)))
    torch.testing.assert_close(layer.running_mean, want_mean)  # what the last forward normalized with
    torch.testing.assert_close(layer.running_var, want_var)
    assert torch.equal(layer.source_mean, torch.zeros(1)) and torch.equal(layer.source_var, torch.ones(1))
    assert torch.equal(analytic[0].running_mean, torch.zeros(1))  # the model given to tta.wrap is untouched
    adapter.reset()
    assert torch.equal(layer.running_mean, layer.source_mean) and torch.equal(layer.running_var, layer.source_var)
