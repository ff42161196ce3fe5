"""Hostile batches and callers: a refused batch leaves every method exactly as a twin that never saw it,
and adapting never touches the caller's autograd graph."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

import tta
from eval.models.source import load_source_model
from tests.helpers import build_method, method_options, tiny_classifier
from tta.guard import CollapseGuard
from tta.registry import get_adapter_class
from tta.checks import finite_step_

METHODS = tta.list_methods()
GRADIENT_METHODS = [name for name in METHODS if get_adapter_class(name).uses_grad]
HUGE = [1e38, torch.finfo(torch.float32).max, -1e38]


def _wrap(model: nn.Module, method: str, **kwargs: Any) -> tta.TTAMethod:
    return build_method(method, model, **kwargs)


def _batch(n: int = 8, seed: int = 1, shape: tuple[int, ...] = (3, 16, 16)) -> Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed)) * 1.5


def _optimizer_states(adapter: tta.TTAMethod) -> list[dict[str, object]]:
    return [opt.state_dict() for opt in adapter.optimizers]


def _same(a: object, b: object) -> bool:
    """Bit-for-bit equality of nested state (dicts, lists, tensors, plain values)."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _assert_refused_like_twin_or_finite(adapter: tta.TTAMethod, twin: tta.TTAMethod, bad: Tensor, good: Tensor) -> None:
    """``bad`` is refused (then ``adapter`` equals ``twin`` bit for bit) or accepted with finite logits."""
    try:
        out = adapter(bad)
    except ValueError as error:
        assert str(error)
        assert _same(adapter.state_dict(), twin.state_dict()), "a refused batch changed the state"
        assert _same(_optimizer_states(adapter), _optimizer_states(twin)), "a refused batch changed the optimizer"
        assert torch.equal(adapter(good), twin(good)), "a refused batch changed the next prediction"
        assert _same(adapter.state_dict(), twin.state_dict())
    else:
        assert torch.isfinite(out).all()
        assert torch.isfinite(adapter(good)).all(), "an accepted batch left the method unable to predict"


@pytest.mark.parametrize("value", HUGE)
@pytest.mark.parametrize("method", METHODS)
def test_huge_values_are_refused_exactly_or_predicted_finitely(method: str, value: float) -> None:
    adapter, twin = _wrap(tiny_classifier(), method), _wrap(tiny_classifier(), method)
    adapter(_batch()), twin(_batch())
    _assert_refused_like_twin_or_finite(adapter, twin, torch.full((8, 3, 16, 16), value), _batch(seed=2))


def test_cotta_on_the_shipped_model_survives_an_overflowing_batch() -> None:
    adapter = tta.wrap(load_source_model(), "cotta", num_augmentations=4)
    twin = tta.wrap(load_source_model(), "cotta", num_augmentations=4)
    assert isinstance(adapter, tta.TTAMethod) and isinstance(twin, tta.TTAMethod)
    x = _batch(shape=(1, 28, 28)) / 1.5
    adapter(x), twin(x)
    with pytest.raises(ValueError, match="nothing was adapted"):
        adapter(torch.full((8, 1, 28, 28), 1e38))
    assert all(torch.isfinite(v).all() for v in adapter.state_dict().values() if v.is_floating_point())
    _assert_refused_like_twin_or_finite(adapter, twin, torch.full((8, 1, 28, 28), 1e38), x)


class _PoisonedLater(nn.Module):
    """A classifier whose ``poison_in``-th call from now returns NaN logits (a failure after an update)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_classifier()
        self.poison_in: int | None = None

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.net(x)
        if self.poison_in is not None:
            self.poison_in -= 1
            if self.poison_in == 0:
                return logits * float("nan")
        return logits

    @staticmethod
    def of(adapter: tta.TTAMethod) -> _PoisonedLater:
        """The poisoned classifier inside ``adapter``."""
        assert isinstance(adapter.model, _PoisonedLater)
        return adapter.model


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_failure_in_a_later_step_rolls_back_the_earlier_updates(method: str) -> None:
    adapter, twin = _wrap(_PoisonedLater(), method, steps=2), _wrap(_PoisonedLater(), method, steps=2)
    adapter(_batch()), twin(_batch())
    _PoisonedLater.of(adapter).poison_in = 2  # the student's second forward: after the first step has updated
    with pytest.raises(ValueError, match="nothing was adapted"):
        adapter(_batch(seed=3))
    _PoisonedLater.of(adapter).poison_in = None
    assert _same(adapter.state_dict(), twin.state_dict())
    assert _same(_optimizer_states(adapter), _optimizer_states(twin))
    assert torch.equal(adapter(_batch(seed=4)), twin(_batch(seed=4)))


@pytest.mark.parametrize("method", METHODS)
def test_adapting_leaves_the_callers_graph_alone(method: str) -> None:
    adapter = _wrap(tiny_classifier(), method)
    pre = nn.Conv2d(3, 3, 1)  # the caller's trainable preprocessing
    raw = _batch()
    x = pre(raw)
    out = adapter(x)
    assert all(p.grad is None for p in pre.parameters()), f"{method} backpropagated into the caller's module"
    assert not out.requires_grad, "the returned logits are documented as detached"
    x.square().mean().backward()  # the caller's own graph is intact
    (expected,) = torch.autograd.grad(pre(raw).square().mean(), pre.weight)
    assert pre.weight.grad is not None and torch.equal(pre.weight.grad, expected)


@pytest.mark.parametrize("value", HUGE)
@pytest.mark.parametrize("method", METHODS)
def test_guarded_method_answers_huge_values_finitely_or_refuses(method: str, value: float) -> None:
    guard = tta.wrap(tiny_classifier(), method, **method_options(method, production=True))
    assert isinstance(guard, CollapseGuard)
    guard(_batch())
    events = len(guard.events)
    try:
        out = guard(torch.full((8, 3, 16, 16), value))
    except ValueError:
        assert len(guard.events) == events, "a refused batch made the guard act"
    else:
        assert torch.isfinite(out).all(), "the guard answered with non-finite logits"
    assert torch.isfinite(guard(_batch(seed=2))).all()


def test_finite_step_refuses_infinite_gradients_before_stepping() -> None:
    weight = nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.Adam([weight], lr=0.1)
    with pytest.raises(ValueError, match="Step: the gradients are not finite"):
        finite_step_("Step", weight.sqrt().sum(), optimizer, logits=torch.zeros(2, 4))  # d sqrt(w) at 0 is Inf
    assert torch.equal(weight, torch.zeros(3)) and weight.grad is None and not optimizer.state_dict()["state"]


def test_finite_step_refuses_non_finite_returned_logits_before_backward() -> None:
    weight = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    logits = torch.tensor([[0.0, float("-inf")]])  # a target whose loss can still be finite
    with pytest.raises(ValueError, match="Step: the loss or the logits are not finite"):
        finite_step_("Step", weight.sum(), optimizer, logits=logits)
    assert torch.equal(weight, torch.ones(3)) and weight.grad is None
