"""Tests of eval.corruptions' input checks: types, shapes, values, severities and generators."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.corruptions import corrupt, list_corruptions
from tests.eval.test_corruptions import make_image


def test_corrupt_rejects_non_float_and_non_tensor_input() -> None:
    with pytest.raises(TypeError, match=r"dtype torch\.uint8"):
        corrupt(torch.zeros(1, 3, 28, 28, dtype=torch.uint8), "contrast", 1)
    with pytest.raises(TypeError, match="ndarray"):
        corrupt(np.zeros((1, 3, 28, 28)), "contrast", 1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("shape", "message"),
    [((3, 28, 28), r"got shape \(3, 28, 28\)"), ((1, 2, 28, 28), "C = 2"), ((1, 3, 4, 28), "H, W >= 8")],
)
def test_corrupt_rejects_bad_shapes(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        corrupt(torch.rand(shape), "gaussian_noise", 1)


def test_corrupt_rejects_non_finite_and_out_of_range_values() -> None:
    x = make_image(1)
    x[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        corrupt(x, "brightness", 1)
    with pytest.raises(ValueError, match=r"values in \[0, 1\], got \[22\.8\d*, 230\.\d*\]"):
        corrupt(make_image(3) * 255, "brightness", 1)
    with pytest.raises(ValueError, match="values in"):
        corrupt(make_image(3) - 0.5, "glass_blur", 1)
    slightly_over = corrupt(make_image(3) + 5e-4, "contrast", 1)  # within the tolerance: accepted
    assert float(slightly_over.max()) <= 1


@pytest.mark.parametrize("name", list_corruptions("all"))
def test_every_corruption_checks_the_values_of_every_image_and_clamps_round_off(name: str) -> None:
    x = make_image(3, 24, 24, batch=3)
    for bad in (float("nan"), float("inf"), 1.5, -0.2):
        broken = x.clone()
        broken[2, x.shape[1] - 1, 5, 7] = bad  # last image, last channel
        with pytest.raises(ValueError, match=r"NaN or Inf|values in \[0, 1\]"):
            corrupt(broken, name, 2, generator=torch.Generator().manual_seed(0))
    nudged = x.clone()
    nudged[1, 0, 0, 0], nudged[2, -1, -1, -1] = 1 + 5e-4, -5e-4  # round-off within the tolerance
    out = corrupt(nudged, name, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, corrupt(nudged.clamp(0, 1), name, 2, generator=torch.Generator().manual_seed(0)))
    assert 0 <= float(out.min()) and float(out.max()) <= 1


def test_corrupt_rejects_bad_severity_and_generator() -> None:
    x = make_image(3)
    for severity in (0, 6, -1):
        with pytest.raises(ValueError, match=r"severity must be in 1\.\.5"):
            corrupt(x, "frost", severity)
    for not_an_int in (2.0, "2", True):
        with pytest.raises(TypeError, match="severity must be an int"):
            corrupt(x, "gaussian_noise", not_an_int)  # type: ignore[arg-type]
    assert torch.equal(corrupt(x, "contrast", np.int64(2)), corrupt(x, "contrast", 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"torch\.Generator"):
        corrupt(x, "fog", 1, generator=np.random.default_rng(0))  # type: ignore[arg-type]
