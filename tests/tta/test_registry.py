"""Registry and wrap: names, options, errors."""

from __future__ import annotations

import pytest
import torch

import tta
from tta.registry import register_adapter
from tests.helpers import tiny_classifier


def test_builtin_methods_are_registered() -> None:
    assert {"source", "norm", "tent"} <= set(tta.list_methods())


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_adapter("tent")(tta.Source)


def test_unknown_method_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="available: .*tent"):
        tta.wrap(tiny_classifier(), "tnet")


def test_unknown_option_lists_valid_options() -> None:
    with pytest.raises(TypeError, match="valid options: .*lr"):
        tta.wrap(tiny_classifier(), "tent", learning_rate=1e-3)


def test_wrap_rejects_non_modules_and_double_wrapping() -> None:
    with pytest.raises(TypeError, match="nn.Module"):
        tta.wrap(lambda x: x, "norm")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="already wrapped"):
        tta.wrap(tta.wrap(tiny_classifier(), "norm"), "tent")


def test_softmax_entropy_values() -> None:
    assert torch.allclose(tta.softmax_entropy(torch.zeros(2, 4)), torch.full((2,), torch.log(torch.tensor(4.0))))
    confident = torch.tensor([[100.0, 0.0, 0.0]])
    assert tta.softmax_entropy(confident).item() < 1e-6


def test_wrap_checks_the_statistics_mode_once_not_in_every_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    import adapters_bn.convert
    import adapters_bn.layers

    calls: list[object] = []
    real = adapters_bn.layers.check_stats_options

    def spy(stats: object, momentum: object = None, prior: object = None) -> None:
        calls.append(stats)
        real(stats, momentum, prior)

    monkeypatch.setattr(adapters_bn.layers, "check_stats_options", spy)
    monkeypatch.setattr(adapters_bn.convert, "check_stats_options", spy)
    model = tiny_classifier()
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) >= 2
    tta.wrap(model, "norm", stats="ema")
    assert calls == ["ema"]


def test_method_options_are_the_builders_keywords_with_real_types() -> None:
    from typing import Literal

    options = tta.method_options("tent")
    assert options["lr"].default is None and options["lr"].type == float | None
    assert options["optimizer"].type == Literal["adam", "sgd"]
    assert options["steps"].type is int and options["steps"].default == 1
    assert tta.method_options("lame")["head"].type == str | None


def test_shared_options_are_checked_once_per_wrap(monkeypatch: pytest.MonkeyPatch) -> None:
    """``steps``/``episodic``/``input_ndim``: checked by the method's builder check, not again by TTAMethod."""
    import tta.checks
    import tta.methods.tent

    calls: list[object] = []
    original = tta.checks.check_base_options

    def counting(**options: object) -> None:
        calls.append(options["steps"])
        original(**options)

    monkeypatch.setattr(tta.checks, "check_base_options", counting)
    monkeypatch.setattr(tta.methods.tent, "check_base_options", counting)
    tta.wrap(tiny_classifier(), "tent", steps=2)
    assert calls == [2]
    calls.clear()
    tta.methods.tent.Tent.from_model(tiny_classifier(), steps=2)
    assert calls == [2]
