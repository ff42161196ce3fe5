"""Fuzzed inputs never produce anything but a prediction or a clear error, and errors change nothing."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tta
from tests.helpers import clone_state, state_equal, tiny_classifier

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool]


@st.composite
def batches(draw: st.DrawFn) -> torch.Tensor:
    rank = draw(st.integers(0, 5))
    shape = [draw(st.integers(0, 4)) if i == 0 else draw(st.integers(1, 20)) for i in range(rank)]
    if rank == 4 and draw(st.booleans()):
        shape[1] = 3  # often a plausible image batch, so deeper code paths are reached
    dtype = draw(st.sampled_from(DTYPES))
    x = (torch.rand(shape) * draw(st.sampled_from([1.0, 1e3, 1e30]))).to(dtype)
    if x.is_floating_point() and x.numel() and draw(st.booleans()):
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf")]))
    return x


@pytest.mark.parametrize("method", ["source", "norm", "tent"])
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
