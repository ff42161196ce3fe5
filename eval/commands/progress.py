"""Progress bars for long commands: live in a terminal, sparse lines in logs."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm import tqdm

from eval.domains import Domain
from eval.bench.executors import FinishedCell, UnitOutcome, WorkUnit
from eval.protocols.streams import StreamItem

__all__ = ["progress_bar", "BenchProgress"]


class _Bar(tqdm):  # type: ignore[misc]  # tqdm has no type information here
    """A tqdm bar that draws nothing while it has nothing to count (no empty ``0batch`` line)."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Draw the bar once its total is known; before, or with nothing to do, draw nothing."""
        if not self.total:
            return False
        return bool(super().display(msg, pos))

    def close(self) -> None:
        """Close the bar; one that never counted anything leaves no line behind."""
        if not self.total:
            self.leave = False
        super().close()


def progress_bar(desc: str, unit: str, **kwargs: Any) -> tqdm:
    """Return a tqdm bar on stderr, drawn once its total is set; outside a terminal it refreshes every 15 s."""
    interactive = sys.stderr.isatty()
    return _Bar(total=0, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.2 if interactive else 15.0, **kwargs)


class BenchProgress:
    """The ``tta bench`` bar: batches done, with the domain, the batch within it, the running error
    of the current cell and images per second.

    Batches run in this process advance the bar one by one; a unit that runs elsewhere (a worker
    process, a Ray task) advances it by each cell's batches as the cell is stored, and shows that cell. The running error is kept
    as a tensor on the logits' device and read back only when the postfix is redrawn (at most twice per
    ``bar.mininterval``), so the bar adds no per-batch device synchronisation. A cell's rate is shown
    from its second batch on (``–`` before).

    Args:
        bar: The tqdm bar to drive (see :func:`progress_bar`).
        clock: Seconds counter (tests pass a fake one).
    """

    def __init__(self, bar: tqdm, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self.bar = bar
        self.clock = clock
        self._domain: Domain | None = None
        self._batches = 0
        self._images = 0
        self._wrong: torch.Tensor | int = 0
        self._cell_start = 0.0
        self._first_images = 0
        self._drawn = float("-inf")
        self._unit_batches = 0
        self._local = False  # batches run in this process (then cells need no accounting)
        self._remote: dict[WorkUnit, int] = {}  # batches of the cells of units that run elsewhere

    def start(self, total: int, stored: int, *, where: str = "", methods: Sequence[str] = ()) -> None:
        """Set the number of batches to run and name the methods; say how many cells a resumed run skips."""
        if methods:
            self._name(",".join(methods))
        self.bar.reset(total=total)
        if stored:
            self.bar.write(f"resuming: {stored} cell(s) already in {where or 'the results store'}, not recomputed",
                           file=sys.stderr)

    def batch(self, item: StreamItem, logits: torch.Tensor) -> None:
        """Count one batch of ``item.domain`` scored with ``logits``."""
        now = self.clock()
        self._local = True
        if item.domain != self._domain:
            self._domain, self._batches, self._images, self._wrong = item.domain, 0, 0, 0
            self._cell_start, self._first_images = now, int(item.y.shape[0])
        self._batches += 1
        self._unit_batches += 1
        self._images += int(item.y.shape[0])
        self._wrong = self._wrong + (logits.argmax(dim=1) != item.y.to(logits.device)).sum()
        # fresh whenever tqdm next prints; a disabled bar (TQDM_DISABLE=1) has no interval and draws nothing
        if not self.bar.disable and now - self._drawn >= self.bar.mininterval / 2:
            self._drawn = now
            error = float(self._wrong) / self._images
            # the clock starts after the cell's first batch, so that batch's images are not in the rate
            elapsed = now - self._cell_start
            rate = (self._images - self._first_images) / elapsed if elapsed > 0 else float("nan")
            self._postfix(str(item.domain), f"{self._batches}", error, rate)
        self.bar.update(1)

    def cell(self, cell: FinishedCell, batches: int) -> None:
        """Account for a stored cell of ``batches`` batches; one that ran elsewhere advances the bar now."""
        self._name(cell.unit.method)
        if self._local:  # its batches were counted one by one
            return
        self._remote[cell.unit] = self._remote.get(cell.unit, 0) + batches
        self.bar.update(batches)
        rate = cell.stats.n / cell.stats.seconds if cell.stats.seconds > 0 else float("nan")
        self._postfix(f"{cell.unit.method}/{cell.domain}", "done", cell.stats.error, rate)
        self.bar.refresh()

    def unit(self, outcome: UnitOutcome, batches: int) -> None:
        """Account for a finished unit of ``batches`` batches (those not already counted by batch or cell)."""
        self.bar.update(max(0, batches - self._unit_batches - self._remote.pop(outcome.unit, 0)))
        self._unit_batches = 0
        if not outcome.cells:
            return
        domain, stats = list(outcome.cells.items())[-1]
        if self._domain != domain or self._batches == 0:  # ran elsewhere: show the unit's last cell
            rate = stats.n / stats.seconds if stats.seconds > 0 else float("nan")
            self._postfix(f"{outcome.unit.method}/{domain}", "done", stats.error, rate)
            self.bar.refresh()

    def _name(self, method: str) -> None:
        """Show ``method`` (the one whose cells were last reported) in the bar's description."""
        self.bar.set_description_str(f"bench {method}", refresh=False)

    def _postfix(self, domain: str, batch: str, error: float, rate: float) -> None:
        shown = "–" if rate != rate else f"{rate:,.0f}"  # NaN: no time measured yet
        self.bar.set_postfix_str(f"domain={domain} batch={batch} err={100 * error:.1f}% {shown} img/s", refresh=False)

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()
