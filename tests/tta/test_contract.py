"""Contract every registered method must keep (parametrized over the registry)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch

import tta
from tests.helpers import build_method, clone_state, state_equal, tiny_classifier
from tta.base import CHANGES, EXPORTS, NEEDS, TTAMethod
from tta.registry import get_adapter_class

METHODS = tta.list_methods()


def _wrap(model: torch.nn.Module, method: str, **kwargs: object) -> tta.TTAMethod:
    return build_method(method, model, **kwargs)


def _batch(n: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 1.5


@pytest.mark.parametrize("method", METHODS)
def test_every_method_declares_valid_values(method: str) -> None:
    cls = get_adapter_class(method)
    for attribute in ("changes", "exports"):  # stated by the method, not left to TTAMethod's cautious values
        assert any(attribute in vars(c) for c in cls.__mro__ if c is not TTAMethod), f"{method} must set {attribute}"
    assert cls.changes in CHANGES and cls.exports in EXPORTS
    assert isinstance(cls.needs, frozenset) and cls.needs <= set(NEEDS) and cls.needs <= set(tta.method_options(method))
    assert set(cls.quick_options) <= set(tta.method_options(method)) - cls.needs
    assert not (cls.uses_grad and cls.exports == "adaptive"), "a gradient step has no inference graph"


@pytest.mark.parametrize("method", METHODS)
def test_output_shape_dtype_and_detached(method: str) -> None:
    out = _wrap(tiny_classifier(), method)(_batch())
    assert out.shape == (8, 10) and out.dtype == torch.float32 and not out.requires_grad


@pytest.mark.parametrize("method", METHODS)
def test_reset_restores_state_and_logits_exactly(method: str) -> None:
    adapter = _wrap(tiny_classifier(), method)
    x = _batch()
    state, first = clone_state(adapter), adapter(x)
    for seed in range(3):
        adapter(_batch(seed=seed + 10))
    adapter.reset()
    assert state_equal(clone_state(adapter), state)
    assert torch.equal(adapter(x), first)
    for opt in adapter.optimizers:
        adapter.reset()
        assert not opt.state_dict()["state"], "optimizer state must be back to its (empty) source state"


@pytest.mark.parametrize("method", METHODS)
def test_episodic_gives_identical_outputs_twice(method: str) -> None:
    episodic = {"episodic": True} if "episodic" in tta.method_options(method) else {}
    adapter = _wrap(tiny_classifier(), method, **episodic)
    x = _batch()
    assert torch.equal(adapter(x), adapter(x))


@pytest.mark.parametrize("method", METHODS)
def test_works_under_callers_no_grad(method: str) -> None:
    adapter = _wrap(tiny_classifier(), method)
    state = clone_state(adapter)
    with torch.no_grad():
        adapter(_batch())
    changed = not state_equal(clone_state(adapter), state)
    assert changed == (adapter.changes != "nothing")


@pytest.mark.parametrize("method", METHODS)
def test_inference_mode_raises_for_gradient_methods_only(method: str) -> None:
    adapter = _wrap(tiny_classifier(), method)
    with torch.inference_mode():
        if adapter.uses_grad:
            with pytest.raises(RuntimeError, match="inference_mode"):
                adapter(_batch())
        else:
            assert adapter(_batch()).shape == (8, 10)


def _changed(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]) -> set[str]:
    return {name for name, value in before.items() if not torch.equal(after[name], value)}


@pytest.mark.parametrize("method", METHODS)
def test_declared_changes_are_what_adapting_changes(method: str) -> None:
    """``changes`` is the narrowest truthful value: params changed within it, buffers changed unless ``nothing``."""
    adapter = _wrap(tiny_classifier(), method)
    params, buffers = dict(adapter.named_parameters()), dict(adapter.named_buffers())
    params_before, buffers_before = ({k: v.detach().clone() for k, v in d.items()} for d in (params, buffers))
    for seed in range(3):
        adapter(_batch(seed=seed))
    changed_params, changed_buffers = _changed(params_before, params), _changed(buffers_before, buffers)
    norm_affine = {name for name, _ in tta.norm_affine_parameters(adapter)}
    observed = ("all" if changed_params - norm_affine else "norm_affine" if changed_params
                else "statistics" if changed_buffers else "nothing")
    assert observed == adapter.changes, (
        f"{method} declares changes={adapter.changes!r}; it changed parameters {sorted(changed_params)} "
        f"and buffers {sorted(changed_buffers)}"
    )
    assert bool(changed_buffers) == (adapter.changes != "nothing")
    if adapter.changes == "nothing":
        assert not any(opt.state_dict()["state"] for opt in adapter.optimizers)


@pytest.mark.parametrize("method", METHODS)
def test_user_model_is_not_mutated_unless_inplace(method: str) -> None:
    model = tiny_classifier()
    state, types = clone_state(model), [type(m) for m in model.modules()]
    adapter = _wrap(model, method)
    adapter(_batch())
    assert state_equal(clone_state(model), state) and [type(m) for m in model.modules()] == types
    assert _wrap(model, method, inplace=True).model is model


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_run(method: str) -> None:
    outs = []
    for _ in range(2):
        adapter = _wrap(tiny_classifier(), method)
        outs.append(torch.cat([adapter(_batch(seed=s)) for s in range(3)]))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("method", METHODS)
def test_frozen_predicts_without_changing_state(method: str) -> None:
    adapter = _wrap(tiny_classifier(), method)
    adapter(_batch())
    state = clone_state(adapter)
    with adapter.frozen():
        adapter(_batch(seed=5))
    assert state_equal(clone_state(adapter), state)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (torch.rand(3, 16, 16), ValueError, "4-D"),
        (torch.full((2, 3, 16, 16), float("nan")), ValueError, "NaN"),
        (torch.full((2, 3, 16, 16), float("inf")), ValueError, "Inf"),
        (torch.rand(0, 3, 16, 16), ValueError, "empty"),
        (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), TypeError, "floating"),
    ],
)
def test_bad_input_raises_clearly_and_changes_nothing(method: str, bad: torch.Tensor, error: type, match: str) -> None:
    adapter = _wrap(tiny_classifier(), method)
    state = clone_state(adapter)
    with pytest.raises(error, match=match):
        adapter(bad)
    assert state_equal(clone_state(adapter), state)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (torch.rand(2, 4, 16, 16), ValueError, "rejected a batch of shape"),  # wrong channel count
        (torch.rand(2, 3, 16, 16, dtype=torch.float64), TypeError, "float64"),
    ],
)
def test_model_mismatch_raises_clearly_and_changes_nothing(method: str, bad: torch.Tensor, error: type, match: str) -> None:
    adapter = _wrap(tiny_classifier(), method)
    state = clone_state(adapter)
    with pytest.raises(error, match=match):
        adapter(bad)
    assert state_equal(clone_state(adapter), state)


def test_batch_rejected_half_way_leaves_statistics_untouched() -> None:
    # 4x4 input passes the first conv+BN, then the second stage cannot pool below 1x1 with stride tricks:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 4, 5),
        torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.LazyLinear(2),
    ).eval()
    model(torch.rand(2, 3, 8, 8))
    adapter = tta.wrap(model, "norm", stats="ema")
    state = clone_state(adapter)
    with pytest.raises(ValueError, match="rejected"):
        adapter(torch.rand(2, 3, 4, 4))  # first BN updates, then the 5x5 conv fails on 4x4
    assert state_equal(clone_state(adapter), state)
