"""What the runner accumulates per domain: error, ECE, NLL, time and peak memory, and the final scores."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from eval.bench.memory import PeakMemory
from eval.metrics import StreamingECE, StreamingError, StreamingNLL

__all__ = ["CellStats", "DomainMeter"]


@dataclass(frozen=True)
class CellStats:
    """Scores of one domain of a stream.

    Args:
        error: Top-1 error as a fraction in ``[0, 1]``.
        ece: Expected calibration error (15 equal-width bins) as a fraction in ``[0, 1]``.
        n: Number of examples scored.
        seconds: Time spent resetting, moving batches, adapting and scoring; data loading excluded.
        nll: Mean negative log-likelihood of the labels (nats).
        peak_memory_mb: Peak memory while the domain ran (CUDA allocator peak, or process RSS on CPU).
    """

    error: float
    ece: float
    n: int
    seconds: float
    nll: float | None = None
    peak_memory_mb: float | None = None


class DomainMeter:
    """Streaming error, ECE, NLL, time and peak memory of one domain."""

    def __init__(self, memory: PeakMemory) -> None:
        self.error = StreamingError()
        self.ece = StreamingECE()
        self.nll = StreamingNLL()
        self.seconds = 0.0
        self.memory = memory
        self.peak_mb = 0.0

    def update(self, logits: Tensor, y: Tensor) -> None:
        """Score one batch."""
        self.error.update(logits, y)
        self.ece.update(logits, y)
        self.nll.update(logits, y)

    def close(self) -> None:
        """End a run of this domain's batches: fold the memory peak of the run into the domain's peak."""
        self.peak_mb = max(self.peak_mb, self.memory.peak_mb())

    def stats(self) -> CellStats:
        """Return the scores accumulated up to the last :meth:`close`."""
        return CellStats(self.error.compute(), self.ece.compute(), self.error.count, self.seconds, self.nll.compute(),
                         self.peak_mb)
