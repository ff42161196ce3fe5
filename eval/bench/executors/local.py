"""The default executor: every unit in this process, one after another, cells handed on as they finish."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from eval.bench.executors.base import BatchHook, CellSink, Executor, UnitFailure, UnitHook, UnitResume, UnitWork, WorkUnit

__all__ = ["LocalExecutor"]

logger = logging.getLogger(__name__)


class LocalExecutor(Executor):
    """Run units in the calling process; a unit that raises is run again up to ``max_retries`` times.

    Cells reach ``on_cell`` as soon as the protocol lets the work finish them, and ``on_batch``
    sees every batch, so progress is live. A retried unit runs as ``resume`` returns it (from its
    start when there is none) and hands its cells on again; since a cell's key is its identity,
    storing it again replaces the earlier row instead of adding one.
    """

    name = "local"

    def __init__(self, *, max_retries: int = 0) -> None:
        super().__init__(max_retries=max_retries)

    def run(self, work: UnitWork, units: Sequence[WorkUnit], *, on_cell: CellSink,
            on_unit: UnitHook | None = None, on_batch: BatchHook | None = None,
            resume: UnitResume | None = None) -> list[UnitFailure]:
        """Run each unit in turn (see :meth:`Executor.run`)."""
        failures = []
        for unit in units:
            for attempt in range(1, self.max_retries + 2):
                runs = resume(unit) if attempt > 1 and resume is not None else unit
                try:
                    outcome = work(runs, on_cell=on_cell, on_batch=on_batch)
                except Exception as err:  # noqa: BLE001 - any failure of a unit is retried, then reported
                    if attempt <= self.max_retries:
                        logger.warning("%s failed (attempt %d of %d), retrying: %s: %s", unit, attempt,
                                       self.max_retries + 1, type(err).__name__, err)
                        continue
                    logger.warning("%s failed after %d attempt(s)", unit, attempt, exc_info=True)
                    failures.append(UnitFailure(unit, attempt, f"{type(err).__name__}: {err}"))
                    break
                if on_unit is not None:
                    on_unit(outcome)
                break
        return failures
