"""What an executor runs and hands back: units of work, finished cells, failures, and the executor interface.

A *unit* is one method run from a fresh adapter over one or more domains in protocol order: one cell
under the episodic protocol, a whole stream under continual-like protocols (its cells depend on the
ones before, so it can never be split). An executor runs units wherever it likes (in this process, on
a Ray cluster) and hands every finished cell back to the driver process, which alone writes the
results store.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from torch import Tensor

from eval.domains import Domain
from eval.protocols.streams import StreamItem
from eval.bench.meters import CellStats

__all__ = ["WorkUnit", "FinishedCell", "UnitOutcome", "UnitFailure", "UnitWork", "Executor",
           "CellSink", "UnitHook", "BatchHook", "UnitResume"]


@dataclass(frozen=True)
class WorkUnit:
    """One method run from a fresh adapter over ``domains``, in the protocol's order.

    Args:
        method: The method's registered name.
        domains: The unit's domains, in stream order.
        start: Index of the first domain to run: a stream resumed after an interruption skips the
            domains already stored (their adapter state is loaded from ``checkpoints[start - 1]``).
        checkpoints: Where to save the adapter's state after each domain but the last (empty: no saving).
    """

    method: str
    domains: tuple[Domain, ...]
    start: int = 0
    checkpoints: tuple[str, ...] = ()

    def __str__(self) -> str:
        shown = ", ".join(str(d) for d in self.domains[:3]) + (", ..." if len(self.domains) > 3 else "")
        resumed = f" (resumed at {self.domains[self.start]})" if self.start else ""
        return f"{self.method} on {shown}{resumed}"


@dataclass(frozen=True)
class FinishedCell:
    """The final scores of one cell, and the device that produced them (recorded as provenance)."""

    unit: WorkUnit
    domain: Domain
    stats: CellStats
    device: str


@dataclass(frozen=True)
class UnitOutcome:
    """What a finished unit returns: the final scores of each of its domains and where it ran.

    Small and picklable on purpose: this, never tensors or data, is what travels back to the driver.
    """

    unit: WorkUnit
    cells: Mapping[Domain, CellStats]
    device: str

    def finished_cells(self) -> list[FinishedCell]:
        """Return the unit's cells in domain order."""
        return [FinishedCell(self.unit, d, s, self.device) for d, s in self.cells.items()]


@dataclass(frozen=True)
class UnitFailure:
    """A unit that still failed after every retry; its cells are not in the store."""

    unit: WorkUnit
    attempts: int
    error: str

    def __str__(self) -> str:
        return f"{self.unit}: failed {self.attempts} time(s), last error: {self.error}"


CellSink = Callable[[FinishedCell], None]
UnitHook = Callable[[UnitOutcome], None]
BatchHook = Callable[[StreamItem, Tensor], None]
UnitResume = Callable[[WorkUnit], WorkUnit]


class UnitWork(Protocol):
    """A picklable callable that runs one unit and returns its outcome.

    When ``on_cell`` is given it is called with every final cell of the unit, as early as the
    protocol allows; ``on_batch`` is called after every batch (both only where the work runs in
    the driver's process).
    """

    def __call__(self, unit: WorkUnit, *, on_cell: CellSink | None = None,
                 on_batch: BatchHook | None = None) -> UnitOutcome: ...


class Executor(ABC):
    """Runs units of work and hands every finished cell to the driver.

    Args:
        max_retries: How many times a failing unit is run again before it is reported as failed.

    Raises:
        ValueError: If ``max_retries`` is negative.
    """

    name: ClassVar[str]

    def __init__(self, *, max_retries: int = 2) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.max_retries = max_retries

    @abstractmethod
    def run(self, work: UnitWork, units: Sequence[WorkUnit], *, on_cell: CellSink,
            on_unit: UnitHook | None = None, on_batch: BatchHook | None = None,
            resume: UnitResume | None = None) -> list[UnitFailure]:
        """Run every unit; return the ones that failed after all retries.

        ``on_cell``, ``on_unit`` and ``resume`` are called in the calling (driver) process, once per
        final cell, once per finished unit and once per retry. A ``KeyboardInterrupt`` stops the work
        in flight and propagates; cells already handed to ``on_cell`` are complete.

        Args:
            work: Runs one unit; must be picklable for executors that run it in other processes.
            units: The units to run.
            on_cell: Receives each finished cell (e.g. writes it to the results store at once).
            on_unit: Called when a unit has finished, after its cells went to ``on_cell``.
            on_batch: Called after every batch; only executors that run the work in this process call it.
            resume: Given a unit that failed, returns the unit its retry runs: :func:`eval.bench.driver.run_bench`
                sets a stream to start after the domains it stored before failing. The retry's cells and
                outcome carry the returned unit; a failure is reported with the unit as it was given.
        """

    def close(self) -> None:  # noqa: B027 - a no-op default, not an abstract method
        """Release what the executor keeps between runs (worker processes); a no-op by default."""
