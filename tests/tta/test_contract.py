"""Contract every registered method must keep (parametrized over the registry)."""

from __future__ import annotations

import pytest
import torch

import tta
from tests.helpers import clone_state, state_equal, tiny_classifier
from tests.tta.projection.tiny_denoiser import TinyDenoiser

METHODS = tta.list_methods()
# Which parameters each method may change: none (False), the norm layers' affine ones ("norm"), or all.
CHANGES_PARAMS: dict[str, bool | str] = {
    "source": False, "norm": False, "tent": "norm", "cotta": "all", "lame": False, "dda": False,
}
# Methods whose state (parameters, buffers, optimizer) never changes while predicting.
STATELESS = {"source", "lame"}
# Options a method needs on the tiny model (LAME: its head has no conventional name) or to stay fast.
OPTIONS: dict[str, dict[str, object]] = {
    "lame": {"head": "8"}, "cotta": {"num_augmentations": 2},
    "dda": {"denoiser": TinyDenoiser(), "respacing": 10, "start_step": 2},  # DDA's state: its noise counter
}


def _wrap(model: torch.nn.Module, method: str, **kwargs: object) -> tta.TTAMethod:
    return tta.wrap(model, method, **OPTIONS.get(method, {}), **kwargs)


def _batch(n: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 1.5


def test_every_method_is_described_here() -> None:
    assert set(METHODS) <= set(CHANGES_PARAMS), "add new methods to this contract's table"


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
    adapter = _wrap(tiny_classifier(), method, episodic=True) if method != "source" else _wrap(tiny_classifier(), method)
    x = _batch()
    assert torch.equal(adapter(x), adapter(x))


@pytest.mark.parametrize("method", METHODS)
def test_works_under_callers_no_grad(method: str) -> None:
    adapter = _wrap(tiny_classifier(), method)
    state = clone_state(adapter)
    with torch.no_grad():
        adapter(_batch())
    changed = not state_equal({k: v for k, v in clone_state(adapter).items()}, state)
    assert changed == (method not in STATELESS)


@pytest.mark.parametrize("method", METHODS)
def test_inference_mode_raises_for_gradient_methods_only(method: str) -> None:
    adapter = _wrap(tiny_classifier(), method)
    with torch.inference_mode():
        if adapter.uses_grad:
            with pytest.raises(RuntimeError, match="inference_mode"):
                adapter(_batch())
        else:
            assert adapter(_batch()).shape == (8, 10)


@pytest.mark.parametrize("method", METHODS)
def test_only_intended_parameters_change(method: str) -> None:
    adapter = _wrap(tiny_classifier(), method)
    before = {k: v.detach().clone() for k, v in adapter.model.named_parameters()}
    for seed in range(2):
        adapter(_batch(seed=seed))
    after = dict(adapter.model.named_parameters())
    allowed = {
        "norm": {name for name, _ in tta.norm_affine_parameters(adapter.model)}, "all": set(before), False: set()
    }[CHANGES_PARAMS[method]]
    for name, value in before.items():
        if name not in allowed:
            assert torch.equal(after[name], value), f"{method} changed {name}"
    if allowed:
        assert any(not torch.equal(after[n], before[n]) for n in allowed)


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
