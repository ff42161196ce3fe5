"""Peak memory of a stretch of work: CUDA allocator peak on GPUs, resident-set high-water mark on CPU.

Linux lets a process reset its own RSS high-water mark (``/proc/self/clear_refs``), so a CPU peak can
be measured per cell instead of per process; where that is not possible the process-wide peak is
reported and :attr:`PeakMemory.per_cell` says so.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

__all__ = ["PeakMemory"]

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _reset_rss_peak() -> bool:
    """Reset the process's RSS high-water mark (VmHWM); return whether the platform allowed it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _rss_peak_mb() -> float:
    """Return the RSS high-water mark in MiB (VmHWM, else ``ru_maxrss``)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


class PeakMemory:
    """Measure the peak memory between :meth:`reset` and :meth:`peak_mb` on one device.

    Args:
        device: ``cpu`` (process RSS) or a CUDA device (allocated tensor memory of that device).
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.per_cell = True

    def reset(self) -> None:
        """Start a new measurement."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.per_cell = _reset_rss_peak()

    def peak_mb(self) -> float:
        """Return the peak in MiB since the last :meth:`reset`."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return _rss_peak_mb()
