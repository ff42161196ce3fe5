"""Tests for eval.metrics: hand-computed cases, streaming equals concatenation, validation."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from eval.results.baselines import ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS
from eval.domains import Domain
from eval.metrics import (
    StreamingECE,
    StreamingError,
    StreamingNLL,
    error_rate,
    expected_calibration_error,
    mean_corruption_error,
    negative_log_likelihood,
    relative_mean_corruption_error,
)


def _logits_from_probs(rows: list[list[float]]) -> torch.Tensor:
    """Return logits whose softmax equals the given probability rows."""
    return torch.tensor(rows, dtype=torch.float64).log()


def test_error_rate_hand_computed() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 0, 1, 1])  # predictions 0, 1, 0, 1: two mistakes
    assert error_rate(logits, y).item() == pytest.approx(0.5)


def test_error_rate_extremes() -> None:
    logits = torch.eye(3)
    assert error_rate(logits, torch.tensor([0, 1, 2])).item() == 0.0
    assert error_rate(logits, torch.tensor([1, 2, 0])).item() == 1.0


def test_error_rate_returns_scalar_tensor() -> None:
    result = error_rate(torch.zeros(2, 3), torch.tensor([0, 1]))
    assert isinstance(result, torch.Tensor)
    assert result.ndim == 0


def test_ece_hand_computed_two_bins() -> None:
    # Bin (13/15, 14/15]: confidences 0.9, 0.9, one correct -> |0.5 - 0.9| with weight 2/3.
    # Bin (10/15, 11/15]: confidence 0.7, correct -> |1.0 - 0.7| with weight 1/3.
    logits = _logits_from_probs([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7]])
    y = torch.tensor([0, 1, 1])
    expected = 2 / 3 * 0.4 + 1 / 3 * 0.3
    assert expected_calibration_error(logits, y).item() == pytest.approx(expected, abs=1e-12)


def test_ece_perfectly_calibrated_is_zero() -> None:
    # Four samples at confidence 0.75 with three correct, two at 0.5 with one correct.
    logits = _logits_from_probs([[0.75, 0.25]] * 4 + [[0.5, 0.5]] * 2)
    y = torch.tensor([0, 0, 0, 1, 0, 1])
    assert expected_calibration_error(logits, y).item() == pytest.approx(0.0, abs=1e-12)


def test_ece_one_bin_is_gap_between_mean_confidence_and_accuracy() -> None:
    logits = _logits_from_probs([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    y = torch.tensor([0, 0, 0])  # accuracy 2/3, mean confidence (0.9 + 0.8 + 0.6) / 3
    expected = abs((0.9 + 0.8 + 0.6) / 3 - 2 / 3)
    assert expected_calibration_error(logits, y, n_bins=1).item() == pytest.approx(expected, abs=1e-12)


def test_ece_confidence_one_falls_in_last_bin() -> None:
    logits = torch.tensor([[100.0, 0.0], [0.0, 100.0]])
    assert expected_calibration_error(logits, torch.tensor([0, 1])).item() == pytest.approx(0.0, abs=1e-12)


def test_ece_confident_mistakes_equal_confidence() -> None:
    logits = torch.tensor([[100.0, 0.0], [0.0, 100.0]])
    assert expected_calibration_error(logits, torch.tensor([1, 0])).item() == pytest.approx(1.0)


@pytest.mark.parametrize("sizes", [[50], [7, 13, 30], [1] * 10 + [40]])
def test_streaming_equals_concatenation(sizes: list[int]) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(50, 5, generator=generator)
    y = torch.randint(0, 5, (50,), generator=generator)
    error, ece, nll = StreamingError(), StreamingECE(), StreamingNLL()
    for logits_batch, y_batch in zip(logits.split(sizes), y.split(sizes)):
        error.update(logits_batch, y_batch)
        ece.update(logits_batch, y_batch)
        nll.update(logits_batch, y_batch)
    assert error.compute() == pytest.approx(error_rate(logits, y).item(), abs=1e-12)
    assert nll.compute() == pytest.approx(negative_log_likelihood(logits, y).item(), abs=1e-9)
    assert ece.compute() == pytest.approx(expected_calibration_error(logits, y).item(), abs=1e-12)
    assert error.count == ece.count == 50


def test_streaming_returns_python_float() -> None:
    metric = StreamingECE(n_bins=10)
    metric.update(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]))
    assert isinstance(metric.compute(), float)


def test_streaming_reset_forgets_samples() -> None:
    error = StreamingError()
    error.update(torch.eye(2), torch.tensor([1, 0]))
    error.reset()
    error.update(torch.eye(2), torch.tensor([0, 1]))
    assert error.compute() == 0.0
    assert error.count == 2


@pytest.mark.parametrize("metric", [StreamingError(), StreamingECE()])
def test_streaming_compute_before_update_raises(metric: StreamingError | StreamingECE) -> None:
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()


def test_metrics_accept_float32_and_uint8_labels() -> None:
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float32)
    y = torch.tensor([1, 0], dtype=torch.uint8)
    assert error_rate(logits, y).item() == 0.0
    assert math.isfinite(expected_calibration_error(logits, y).item())


@pytest.mark.parametrize("function", [error_rate, expected_calibration_error])
def test_metric_rejects_mismatched_shapes(function: Callable[..., torch.Tensor]) -> None:
    with pytest.raises(ValueError, match=r"labels must have shape \(B,\) = \(3,\).*got shape \(2,\)"):
        function(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("function", [error_rate, expected_calibration_error])
def test_metric_rejects_empty_batch(function: Callable[..., torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="empty batch"):
        function(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))


def test_metric_rejects_one_dimensional_logits() -> None:
    with pytest.raises(ValueError, match=r"logits must have shape \(B, K\)"):
        error_rate(torch.zeros(4), torch.zeros(4, dtype=torch.long))


def test_metric_rejects_labels_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\].*got values in \[0, 3\]"):
        StreamingError().update(torch.zeros(2, 3), torch.tensor([0, 3]))


def test_metric_rejects_float_labels() -> None:
    with pytest.raises(TypeError, match="integer tensor"):
        error_rate(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))


def test_ece_rejects_non_positive_bins() -> None:
    with pytest.raises(ValueError, match="n_bins must be a positive integer, got 0"):
        expected_calibration_error(torch.zeros(2, 3), torch.tensor([0, 1]), n_bins=0)


def test_mean_corruption_error_worked_example() -> None:

    # Two corruptions at severities 1 and 5: CE_c = (E_1 + E_5) / (A_1 + A_5); mCE = mean of the two.
    errors = {Domain("fog", 1): 0.30, Domain("fog", 5): 0.50, Domain("snow", 5): 0.475, Domain("clean", 0): 0.1}
    fog = ALEXNET_ERRORS["fog"]
    expected = ((0.30 + 0.50) / (fog[0] + fog[4]) + 0.475 / ALEXNET_ERRORS["snow"][4]) / 2
    assert abs(mean_corruption_error(errors) - expected) < 1e-12
    assert abs(mean_corruption_error({Domain("fog", 5): 0.945}) - 1.0) < 1e-12  # AlexNet itself scores 100


def test_relative_mean_corruption_error_and_holdout_refusal() -> None:

    alex = {Domain("contrast", s): ALEXNET_ERRORS["contrast"][s - 1] for s in range(1, 6)}
    assert abs(relative_mean_corruption_error(alex, ALEXNET_CLEAN_ERROR) - 1.0) < 1e-12
    no_gap = {Domain("contrast", 5): 0.2}
    assert relative_mean_corruption_error(no_gap, clean_error=0.2) == 0.0
    with pytest.raises(ValueError, match="held-out"):
        mean_corruption_error({Domain("spatter", 5): 0.5})
    with pytest.raises(ValueError, match="at least one"):
        mean_corruption_error({Domain("clean", 0): 0.1})


def test_negative_log_likelihood_matches_hand_computation() -> None:

    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    y = torch.tensor([0, 0])
    expected = (-math.log(0.5) - math.log(0.75)) / 2
    assert abs(negative_log_likelihood(logits, y).item() - expected) < 1e-6  # float32 logits
