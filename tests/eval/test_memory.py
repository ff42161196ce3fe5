"""Tests for eval.bench.memory: the CPU peak is per measurement where Linux allows resetting it."""

from __future__ import annotations

import subprocess
import sys




_PEAK_CHECK = """
import numpy as np
from eval.bench.memory import PeakMemory
meter = PeakMemory("cpu")
meter.reset()
before = meter.peak_mb()
block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB, touched
during = meter.peak_mb()
del block
assert during >= before + 60, (before, during)
meter.reset()
if meter.per_cell:  # Linux: VmHWM reset to the current RSS
    assert meter.peak_mb() < during - 40, (during, meter.peak_mb())
"""


def test_cpu_peak_sees_an_allocation_and_a_reset_forgets_it() -> None:
    # in a fresh process: the test process's heap, shaped by earlier tests, may hold freed pages that the
    # allocation reuses without raising the resident set
    done = subprocess.run([sys.executable, "-c", _PEAK_CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
