"""Run units as Ray tasks, on this machine or a cluster; the driver alone writes what comes back.

Each unit is one Ray task with the resources it asks for (``num_cpus``, ``num_gpus``). The task
receives the small, picklable unit work (a benchmark spec holding *paths*) and re-opens the data and
the model from those paths on its node, so no dataset or weight tensor goes through the object store;
only the finished cells (a few numbers per domain) come back, each as soon as it is final, through a
queue actor (a stream's domains one by one), so the driver stores them at once. A task whose worker
died or which raised is submitted again by the driver (as ``resume`` returns its unit, so a stream
goes on after the domains it stored), at most ``max_retries`` times; a task that still fails is
reported and the rest of the grid goes on.

Ray is an optional dependency (``pip install 'tta-plugin[ray]'``); it is imported only when this
executor runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from eval.domains import Domain
from eval.bench.executors.base import (
    BatchHook,
    CellSink,
    Executor,
    FinishedCell,
    UnitFailure,
    UnitHook,
    UnitOutcome,
    UnitResume,
    UnitWork,
    WorkUnit,
)

__all__ = ["QUIET_INIT", "RayExecutor", "import_ray"]

logger = logging.getLogger(__name__)

QUIET_INIT: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR, "include_dashboard": False}
"""``ray.init`` arguments by default: no worker output forwarded, only Ray's errors logged, no dashboard."""

_POLL_SECONDS = 0.5  # how often the driver reads the finished cells while tasks run
_SEND_SECONDS = 10.0  # how long a task waits for the driver's queue to take a cell

INSTALL_HINT = "pip install 'tta-plugin[ray]' (or pip install '.[ray]' in a checkout of this project)"


def import_ray() -> Any:
    """Return the ``ray`` module.

    Raises:
        ImportError: If Ray is not installed; the message names the extra to install.
    """
    try:
        import ray
        import ray.util.queue  # noqa: F401 - the queue the tasks hand their cells on through
    except ImportError:
        raise ImportError(f"the ray executor needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def _run_unit_task(work: UnitWork, unit: WorkUnit, cells: Any) -> UnitOutcome:
    """The body of one Ray task: run the unit on this node, pass each cell on as it is final, return them all.

    A cell is sent and acknowledged before the unit goes on, so it reaches the driver even if the
    worker dies right after; a driver that was killed (its queue actor with it) costs a task at most
    ``_SEND_SECONDS`` per cell, and every cell also comes back in the task's result.
    """
    ray = import_ray()

    def send(cell: FinishedCell) -> None:
        try:
            ray.get(cells.actor.put_nowait.remote(cell), timeout=_SEND_SECONDS)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
            logger.warning("the driver did not take the cell of %s on %s; it is in the unit's result", unit, cell.domain)

    return work(unit, on_cell=send)


class RayExecutor(Executor):
    """Fan units out as Ray tasks and hand their cells to the driver as each task finishes.

    Args:
        address: Ray cluster to join: ``"auto"`` (a cluster started on this machine with ``ray start``),
            ``"host:port"`` of the head node, or ``None`` to use ``RAY_ADDRESS`` or start a
            private local instance for this run.
        cpus_per_unit: CPU cores each task reserves (Ray's ``num_cpus``; fractions allowed).
        gpus_per_unit: GPUs each task reserves (Ray's ``num_gpus``; fractions share a GPU).
        max_retries: Times a unit is submitted again after its task's worker died or it raised.
        init_kwargs: Further keyword arguments of ``ray.init`` when this executor starts Ray; they override
            :data:`QUIET_INIT` (Ray's own start-up messages, dashboard and worker output are off by default,
            so a run's terminal shows the progress bar and the results only).

    Raises:
        ValueError: If a resource request is negative or ``cpus_per_unit`` and ``gpus_per_unit`` are both 0.
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, cpus_per_unit: float = 1.0, gpus_per_unit: float = 0.0,
                 max_retries: int = 2, init_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(max_retries=max_retries)
        if cpus_per_unit < 0 or gpus_per_unit < 0 or cpus_per_unit + gpus_per_unit == 0:
            raise ValueError(f"a unit must reserve some CPUs or GPUs, got cpus_per_unit={cpus_per_unit}, "
                             f"gpus_per_unit={gpus_per_unit}")
        self.address = address
        self.cpus_per_unit = cpus_per_unit
        self.gpus_per_unit = gpus_per_unit
        self.init_kwargs = {**QUIET_INIT, **(init_kwargs or {})}

    def run(self, work: UnitWork, units: Sequence[WorkUnit], *, on_cell: CellSink,
            on_unit: UnitHook | None = None, on_batch: BatchHook | None = None,
            resume: UnitResume | None = None) -> list[UnitFailure]:
        """Submit every unit as a task, then collect results in completion order (see :meth:`Executor.run`).

        ``on_batch`` is not called: batches run on the workers. On ``KeyboardInterrupt`` the tasks
        still in flight are cancelled before the interrupt propagates.
        """
        ray = import_ray()
        if not units:
            return []
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, **self.init_kwargs)
        try:
            return self._collect(ray, work, units, on_cell, on_unit, resume)
        finally:
            if started:
                ray.shutdown()

    def _collect(self, ray: Any, work: UnitWork, units: Sequence[WorkUnit], on_cell: CellSink,
                 on_unit: UnitHook | None, resume: UnitResume | None) -> list[UnitFailure]:
        # Retries are the driver's, not Ray's: a retry then starts from what the store holds by then.
        task = ray.remote(_run_unit_task).options(num_cpus=self.cpus_per_unit, num_gpus=self.gpus_per_unit,
                                                  max_retries=0, retry_exceptions=False)
        work_ref = ray.put(work)  # a spec with paths: a few hundred bytes, shipped once
        # Cells reach the driver as they are final (a stream's domains one by one) through a queue actor.
        cells = _CellQueue(ray.util.queue.Queue(actor_options={"num_cpus": 0}), on_cell)
        pending = {task.remote(work_ref, unit, cells.queue): unit for unit in units}
        attempts = dict.fromkeys(units, 1)
        failures: list[UnitFailure] = []
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=_POLL_SECONDS)
                cells.hand_on()
                for ref in ready:
                    unit = pending.pop(ref)
                    try:
                        outcome: UnitOutcome = ray.get(ref)
                    except ray.exceptions.RayError as err:
                        if attempts[unit] > self.max_retries:
                            failures.append(UnitFailure(unit, attempts[unit], _describe(err)))
                            logger.warning("%s failed after %d attempt(s): %s", unit, attempts[unit], err)
                            continue
                        logger.warning("%s failed (attempt %d of %d), retrying: %s", unit, attempts[unit],
                                       self.max_retries + 1, _describe(err))
                        attempts[unit] += 1
                        runs = resume(unit) if resume is not None else unit
                        pending[task.remote(work_ref, runs, cells.queue)] = unit
                        continue
                    cells.hand_on(outcome)
                    if on_unit is not None:
                        on_unit(outcome)
        except BaseException:  # Ctrl-C, or the driver failed to store a cell: stop the work in flight
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            cells.close(ray)
        return failures


class _CellQueue:
    """The driver's end of the queue on which tasks put their cells: hands each cell on once."""

    def __init__(self, queue: Any, on_cell: CellSink) -> None:
        self.queue, self.on_cell = queue, on_cell
        self.delivered: set[tuple[WorkUnit, Domain]] = set()

    def hand_on(self, outcome: UnitOutcome | None = None) -> None:
        """Hand on the cells in the queue, then those of ``outcome`` not handed on yet."""
        finished = list(self.queue.get_nowait_batch(self.queue.qsize()))
        finished += outcome.finished_cells() if outcome is not None else []
        for cell in finished:
            if (cell.unit, cell.domain) not in self.delivered:
                self.delivered.add((cell.unit, cell.domain))
                self.on_cell(cell)

    def close(self, ray: Any) -> None:
        """Stop the queue's actor."""
        ray.kill(self.queue.actor)


def _describe(err: BaseException) -> str:
    """Return a one-line reason for a failed task: the worker's own exception when there is one."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    first = str(err).strip().splitlines()
    return f"{type(err).__name__}: {first[0] if first else ''}"
