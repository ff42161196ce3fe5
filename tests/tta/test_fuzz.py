"""Fuzzed inputs never produce anything but a prediction or a clear error, and errors change nothing."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tta
from tests.helpers import clone_state, state_equal, tiny_classifier

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool]
SCALES = [1.0, 1e3, 1e30, 1e38, torch.finfo(torch.float32).max]  # up to the largest float32, overflowing models


@st.composite
def batches(draw: st.DrawFn) -> torch.Tensor:
    if draw(st.booleans()):  # often a plausible float32 image batch, so the adaptation code paths are reached
        rank, dtype = 4, torch.float32
        shape = [draw(st.integers(1, 4)), 3, draw(st.integers(1, 20)), draw(st.integers(1, 20))]
    else:
        rank, dtype = draw(st.integers(0, 5)), draw(st.sampled_from(DTYPES))
        shape = [draw(st.integers(0, 4)) if i == 0 else draw(st.integers(1, 20)) for i in range(rank)]
    x = (torch.rand(shape) * draw(st.sampled_from(SCALES)) * draw(st.sampled_from([1.0, -1.0]))).to(dtype)
    if x.is_floating_point() and x.numel() and draw(st.booleans()):
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf")]))
    if x.is_floating_point() and draw(st.booleans()):
        x.requires_grad_(True)  # as from a caller's trainable preprocessing: must not be backpropagated into
    return x


@pytest.mark.parametrize("method", ["source", "norm", "tent"])
@pytest.mark.filterwarnings("ignore:.*statistics of a batch of 1 image")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=batches())
def test_fuzzed_input_gives_prediction_or_clear_error(method: str, x: torch.Tensor) -> None:
    adapter = tta.wrap(tiny_classifier(), method)
    state = clone_state(adapter)
    try:
        out = adapter(x)
    except (TypeError, ValueError) as error:
        assert str(error)
        assert state_equal(clone_state(adapter), state)
    else:
        assert out.shape == (x.shape[0], 10) and out.dtype == torch.float32 and torch.isfinite(out).all()
        assert not out.requires_grad
        assert all(torch.isfinite(v).all() for v in clone_state(adapter).values() if v.is_floating_point())
    assert x.grad is None, "adapting must not backpropagate into the caller's input"
