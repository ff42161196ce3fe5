"""Classification metrics: functional forms and streaming twins that accumulate over batches.

The streaming classes keep sufficient statistics (counts per confidence bin, number of
mistakes), so ``update`` over any split of the data followed by ``compute`` equals the
functional metric on the concatenated batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from eval.results.baselines import ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS
from eval.domains import Domain

__all__ = [
    "mean_corruption_error",
    "relative_mean_corruption_error",
    "negative_log_likelihood",
    "error_rate",
    "expected_calibration_error",
    "StreamingError",
    "StreamingNLL",
    "StreamingECE",
]


def _check_inputs(logits: Tensor, y: Tensor) -> None:
    """Raise if ``logits`` and ``y`` are not a non-empty ``(B, K)`` / ``(B,)`` pair."""
    if not isinstance(logits, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"expected two tensors (logits, y), got {type(logits).__name__} and {type(y).__name__}")
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (B, K), got shape {tuple(logits.shape)}")
    if y.ndim != 1 or y.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels must have shape (B,) = ({logits.shape[0]},) to match logits {tuple(logits.shape)}, "
            f"got shape {tuple(y.shape)}"
        )
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"cannot score an empty batch: logits have shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor of class indices, got dtype {y.dtype}")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= logits.shape[1]:
        raise ValueError(f"labels must lie in [0, {logits.shape[1] - 1}] for {logits.shape[1]} classes, "
                         f"got values in [{low}, {high}]")


def _count_errors(logits: Tensor, y: Tensor) -> int:
    """Return the number of samples whose arg-max prediction differs from the label."""
    return int((logits.argmax(dim=1) != y.to(logits.device)).sum())


def _bin_statistics(logits: Tensor, y: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Return per-bin sample counts, summed confidences and summed correct predictions.

    Bins are equal-width intervals ``(i / n_bins, (i + 1) / n_bins]`` of the top-class
    softmax probability (Guo et al., 2017); all three results are float64 on the CPU, shape
    ``(n_bins,)``.
    """
    probs = logits.detach().double().softmax(dim=1)
    confidence, prediction = probs.max(dim=1)
    correct = (prediction == y.to(logits.device)).double()
    inner_edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=logits.device)[1:-1]
    index = torch.bucketize(confidence, inner_edges, right=False)
    counts = torch.zeros(n_bins, dtype=torch.float64, device=logits.device)
    counts.index_add_(0, index, torch.ones_like(correct))
    conf_sums = torch.zeros_like(counts).index_add_(0, index, confidence)
    correct_sums = torch.zeros_like(counts).index_add_(0, index, correct)
    return counts.cpu(), conf_sums.cpu(), correct_sums.cpu()


def _ece_from_bins(counts: Tensor, conf_sums: Tensor, correct_sums: Tensor) -> Tensor:
    """Return ``sum_b |B_b| / N * |acc(B_b) - conf(B_b)|`` from accumulated bin statistics."""
    return (conf_sums - correct_sums).abs().sum() / counts.sum()


def _check_n_bins(n_bins: int) -> None:
    """Raise unless ``n_bins`` is a positive integer."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")


def error_rate(logits: Tensor, y: Tensor) -> Tensor:
    """Return the top-1 error: the fraction of samples whose arg-max class is not the label.

    Args:
        logits: Class scores, shape ``(B, K)`` (probabilities work too: only the arg-max counts).
        y: Integer labels in ``[0, K)``, shape ``(B,)``.

    Returns:
        A float64 scalar tensor in ``[0, 1]``.

    Raises:
        ValueError: If shapes do not match, the batch is empty or labels are out of range.
        TypeError: If the inputs are not tensors of floating logits and integer labels.

    Example:
        >>> error_rate(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
        tensor(0.5000, dtype=torch.float64)
    """
    _check_inputs(logits, y)
    return torch.tensor(_count_errors(logits, y) / logits.shape[0], dtype=torch.float64)


def expected_calibration_error(logits: Tensor, y: Tensor, *, n_bins: int = 15) -> Tensor:
    """Return the expected calibration error of ``softmax(logits)`` with equal-width bins.

    Each sample falls in the bin ``(i / n_bins, (i + 1) / n_bins]`` holding its top-class
    probability; the ECE is the sample-weighted mean over bins of ``|accuracy - confidence|``.

    Args:
        logits: Unnormalized class scores, shape ``(B, K)``.
        y: Integer labels in ``[0, K)``, shape ``(B,)``.
        n_bins: Number of equal-width confidence bins (15 as in Guo et al.).

    Returns:
        A float64 scalar tensor in ``[0, 1]``.

    Raises:
        ValueError: If shapes do not match, the batch is empty, labels are out of range or
            ``n_bins`` is not positive.
        TypeError: If the inputs are not tensors of floating logits and integer labels.

    Reference:
        Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.

    Example:
        >>> expected_calibration_error(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]))
        tensor(0., dtype=torch.float64)
    """
    _check_n_bins(n_bins)
    _check_inputs(logits, y)
    return _ece_from_bins(*_bin_statistics(logits, y, n_bins))


class StreamingError:
    """Top-1 error accumulated over batches; equals :func:`error_rate` on their concatenation.

    Example:
        >>> metric = StreamingError()
        >>> metric.update(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
        >>> metric.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
        >>> metric.compute()
        0.5
    """

    def __init__(self) -> None:
        self.n_errors = 0
        self.count = 0

    def update(self, logits: Tensor, y: Tensor) -> None:
        """Add one batch of logits ``(B, K)`` and labels ``(B,)``."""
        _check_inputs(logits, y)
        self.n_errors += _count_errors(logits, y)
        self.count += logits.shape[0]

    def compute(self) -> float:
        """Return the error over every sample seen since the last reset.

        Raises:
            ValueError: If no sample was added.
        """
        if self.count == 0:
            raise ValueError("StreamingError.compute() called before any update(); add a batch first")
        return self.n_errors / self.count

    def reset(self) -> None:
        """Forget every sample seen so far."""
        self.n_errors = 0
        self.count = 0


class StreamingECE:
    """Expected calibration error accumulated over batches with equal-width bins.

    Keeps per-bin counts, confidence sums and correct counts, so the result equals
    :func:`expected_calibration_error` on the concatenated batches.

    Args:
        n_bins: Number of equal-width confidence bins.
    """

    def __init__(self, *, n_bins: int = 15) -> None:
        _check_n_bins(n_bins)
        self.n_bins = n_bins
        self.reset()

    @property
    def count(self) -> int:
        """Number of samples seen since the last reset."""
        return int(self._counts.sum())

    def update(self, logits: Tensor, y: Tensor) -> None:
        """Add one batch of logits ``(B, K)`` and labels ``(B,)``."""
        _check_inputs(logits, y)
        counts, conf_sums, correct_sums = _bin_statistics(logits, y, self.n_bins)
        self._counts += counts
        self._conf_sums += conf_sums
        self._correct_sums += correct_sums

    def compute(self) -> float:
        """Return the ECE over every sample seen since the last reset.

        Raises:
            ValueError: If no sample was added.
        """
        if self.count == 0:
            raise ValueError("StreamingECE.compute() called before any update(); add a batch first")
        return float(_ece_from_bins(self._counts, self._conf_sums, self._correct_sums))

    def reset(self) -> None:
        """Forget every sample seen so far."""
        self._counts = torch.zeros(self.n_bins, dtype=torch.float64)
        self._conf_sums = torch.zeros(self.n_bins, dtype=torch.float64)
        self._correct_sums = torch.zeros(self.n_bins, dtype=torch.float64)


class StreamingNLL:
    """Mean negative log-likelihood accumulated over batches; equals :func:`negative_log_likelihood` on their concatenation."""

    def __init__(self) -> None:
        self._sum: Tensor | float = 0.0
        self.count = 0

    def update(self, logits: Tensor, y: Tensor) -> None:
        """Add one batch of logits ``(B, K)`` and labels ``(B,)``."""
        _check_inputs(logits, y)
        # kept on the logits' device (float64) until compute(): no extra device synchronisation per batch
        self._sum = self._sum + torch.nn.functional.cross_entropy(logits.double(), y, reduction="sum")
        self.count += logits.shape[0]

    def compute(self) -> float:
        """Return the mean NLL (nats) over every sample seen since the last reset.

        Raises:
            ValueError: If no sample was added.
        """
        if self.count == 0:
            raise ValueError("StreamingNLL.compute() called before any update(); add a batch first")
        return float(self._sum) / self.count

    def reset(self) -> None:
        """Forget every sample seen so far."""
        self._sum = 0.0
        self.count = 0


def _severity_errors(errors: Mapping[Domain, float], corruption: str) -> dict[int, float]:
    return {d.severity: e for d, e in errors.items() if d.corruption == corruption}


def _check_baseline(corruption: str, baseline: Mapping[str, Sequence[float]]) -> Sequence[float]:
    if corruption not in baseline:
        raise ValueError(
            f"no baseline errors for {corruption!r}: corruption errors are defined for {sorted(baseline)} "
            "(the held-out corruptions have no AlexNet normalizers)"
        )
    return baseline[corruption]


def mean_corruption_error(
    errors: Mapping[Domain, float], baseline: Mapping[str, Sequence[float]] = ALEXNET_ERRORS
) -> float:
    """Return mCE: the mean over corruptions of ``sum_s E_s,c / sum_s E^base_s,c`` (as a fraction).

    Sums run over the severities present in ``errors`` (the paper uses all five; with severity 5
    only this is the per-severity ratio). The clean domain is ignored.

    Reference: Hendrycks & Dietterich, ICLR 2019, Sec. 4 (mCE with AlexNet normalization).

    Example:
        >>> errs = {Domain("fog", 5): 0.4725, Domain("contrast", 5): 0.49635}
        >>> round(mean_corruption_error(errs), 4)
        0.5
    """
    corruptions = sorted({d.corruption for d in errors if d.corruption != "clean"})
    if not corruptions:
        raise ValueError("mean_corruption_error needs errors on at least one corrupted domain")
    ratios = []
    for corruption in corruptions:
        table = _check_baseline(corruption, baseline)
        by_severity = _severity_errors(errors, corruption)
        ratios.append(sum(by_severity.values()) / sum(table[s - 1] for s in by_severity))
    return sum(ratios) / len(ratios)


def relative_mean_corruption_error(
    errors: Mapping[Domain, float],
    clean_error: float,
    baseline: Mapping[str, Sequence[float]] = ALEXNET_ERRORS,
    baseline_clean_error: float = ALEXNET_CLEAN_ERROR,
) -> float:
    """Return relative mCE: mean over corruptions of ``sum_s (E_s,c - E_clean) / sum_s (E^base_s,c - E^base_clean)``.

    Reference: Hendrycks & Dietterich, ICLR 2019, Sec. 4 (relative mCE).
    """
    corruptions = sorted({d.corruption for d in errors if d.corruption != "clean"})
    if not corruptions:
        raise ValueError("relative_mean_corruption_error needs errors on at least one corrupted domain")
    ratios = []
    for corruption in corruptions:
        table = _check_baseline(corruption, baseline)
        by_severity = _severity_errors(errors, corruption)
        gap = sum(e - clean_error for e in by_severity.values())
        ratios.append(gap / sum(table[s - 1] - baseline_clean_error for s in by_severity))
    return sum(ratios) / len(ratios)


def negative_log_likelihood(logits: Tensor, y: Tensor) -> Tensor:
    """Return the mean negative log-likelihood (cross-entropy, nats) of the labels under ``softmax(logits)``."""
    _check_inputs(logits, y)
    return torch.nn.functional.cross_entropy(logits.double(), y, reduction="mean")
