"""The class API follows the wrapper's convention: ``tta.Tent(model, lr=...)`` is ``tta.wrap(model, "tent", lr=...)``."""

from __future__ import annotations

import pytest
import torch

import tta
from tests.helpers import clone_state, state_equal, tiny_classifier


@pytest.mark.parametrize(("cls", "name", "options"), [
    (tta.Tent, "tent", {"lr": 1e-3}), (tta.Norm, "norm", {"stats": "ema"}), (tta.Source, "source", {}),
    (tta.CoTTA, "cotta", {"num_augmentations": 2}), (tta.LAME, "lame", {"knn": 3}),
])
def test_class_with_options_builds_as_wrap(cls: type, name: str, options: dict[str, object]) -> None:
    model = tiny_classifier()
    before = clone_state(model)
    by_class, by_wrap = cls(model, **options), tta.wrap(model, name, **options)
    assert type(by_class) is type(by_wrap) and by_class.hparams == by_wrap.hparams
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        assert torch.equal(by_class(x), by_wrap(x))
    assert state_equal(clone_state(model), before), "the user's model is copied, as tta.wrap does"


def test_inplace_adapts_the_model_itself_and_options_are_checked() -> None:
    model = tiny_classifier()
    assert tta.Tent(model, inplace=True).model is model
    with pytest.raises(ValueError, match="lr must be > 0"):
        tta.Tent(tiny_classifier(), lr=-1.0)
    with pytest.raises(TypeError, match="inplace must be True or False"):
        tta.Tent(tiny_classifier(), inplace="yes")


def test_the_configured_optimizer_form_still_constructs() -> None:
    from tta.methods.tent import collect_params, configure_model

    model = configure_model(tiny_classifier())
    optimizer = torch.optim.SGD(collect_params(model), lr=0.1)
    adapter = tta.Tent(model, optimizer)
    assert adapter.optimizer is optimizer and adapter.model is model


def test_a_builder_calling_its_class_constructs_it_without_rebuilding() -> None:
    """Norm's builder calls ``cls(model, episodic=...)``: that call constructs, it does not build again."""
    from adapters_bn import iter_adaptive

    for adapter in (tta.Norm(tiny_classifier(), stats="ema", momentum=0.2),
                    tta.wrap(tiny_classifier(), "norm", stats="ema", momentum=0.2)):
        assert {(layer.stats, layer.momentum) for _, layer in iter_adaptive(adapter.model)} == {("ema", 0.2)}


def test_a_builder_without_a_declared_check_still_builds_in_place() -> None:
    """A user's ``from_model`` that calls ``cls(model, option=...)`` adapts the model it was given, once."""
    from tta.base import TTAMethod

    class Plain(TTAMethod):
        changes = "nothing"
        exports = "none"
        built = 0

        def __init__(self, model: torch.nn.Module, *, scale: float = 1.0) -> None:
            super().__init__(model)
            self.scale = scale
            self.snapshot()

        def adapt_step(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x) * self.scale

        @classmethod
        def from_model(cls, model: torch.nn.Module, *, scale: float = 1.0) -> "Plain":
            cls.built += 1
            return cls(model, scale=scale)

    model = tiny_classifier()
    adapter = Plain.from_model(model, scale=2.0)
    assert adapter.model is model and adapter.scale == 2.0 and Plain.built == 1
    copied = Plain(model, scale=3.0)  # the class API: a copy, as tta.wrap
    assert copied.model is not model and copied.scale == 3.0 and Plain.built == 2
