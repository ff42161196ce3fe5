"""Tests for eval.bench.memory: the CPU peak is per measurement where Linux allows resetting it."""

from __future__ import annotations

import numpy as np

from eval.bench.memory import PeakMemory


def test_cpu_peak_sees_an_allocation_and_a_reset_forgets_it() -> None:
    meter = PeakMemory("cpu")
    meter.reset()
    before = meter.peak_mb()
    block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB, touched
    during = meter.peak_mb()
    del block
    assert during >= before + 60
    meter.reset()
    if meter.per_cell:  # Linux: VmHWM reset to the current RSS
        assert meter.peak_mb() < during - 40
