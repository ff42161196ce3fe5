"""Run units in a pool of worker processes on this machine; the driver alone writes what comes back.

For a sweep on one multi-core machine without a Ray cluster: ``jobs`` worker processes, each with
``threads_per_job`` torch threads, take units from a queue. Workers are started with ``spawn`` (a
fork of a process that already runs torch's thread pools can deadlock) and keep the suite they
opened, so data and weights are read once per worker, not once per unit. Like the Ray executor, a
worker receives the small picklable unit work (a spec holding paths) and sends back only the
finished cells, each as soon as it is final (a stream's domains one by one, through the same queue
on which workers announce the units they start), so the driver stores them at once.

Failures: a unit that raises is submitted again (as ``resume`` returns it), at most ``max_retries`` times. A worker that dies
(killed, out of memory, a crash in native code) breaks the pool, and the pool is rebuilt. Each worker
announces the units it starts, so the driver knows which were running: if one was, it crashed and
is charged the attempt; if several were, none is charged and they run again one at a time, where a
repeated crash names its unit. Units that had not started run again uncharged.

Lifetime: workers never outlive the driver nor hold its pipes. Each worker sends its stdout and stderr
to a private log file that the driver relays into its own log, and exits when the driver dies, even
by SIGKILL (:mod:`eval.bench.executors.worker_lifetime`); an interrupt of the driver (Ctrl-C, or SIGTERM
during :func:`eval.bench.driver.run_bench`) terminates them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import torch

from eval.domains import Domain
from eval.bench.meters import CellStats
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
from eval.bench.executors.worker_lifetime import WorkerOutput, die_with_parent, send_output_to

__all__ = ["ProcessExecutor"]

logger = logging.getLogger(__name__)


_DRAIN_SECONDS = 0.5  # how often the driver reads the workers' events while it waits
_EVENTS: Any = None  # in a worker: the queue of its events (units started, cells finished)


def _start_worker(threads: int, events: Any, parent: int, parent_death_signal: bool, output: str) -> None:
    """Initializer of each worker process: leave the driver's pipes, die with it, its share of the cores for
    torch, and the queue of its events."""
    global _EVENTS
    send_output_to(output)
    die_with_parent(parent, parent_death_signal=parent_death_signal)
    _EVENTS = events
    torch.set_num_threads(threads)


def _run_unit(work: UnitWork, unit: WorkUnit, number: int, attempt: int) -> UnitOutcome:
    """The body of one unit in a worker: announce it, run it, pass each cell on as it is final, return them all.

    Events name the unit by its ``number`` in the run (and a cell by the ``start`` its unit ran from, which
    the work may have moved back): each message stays a few hundred bytes, which a pipe writes in one
    piece, so a worker that dies never leaves half a message in the queue.
    """
    if _EVENTS is None:
        return work(unit)
    _EVENTS.put(("started", number, attempt))  # a SimpleQueue writes at once: known even if the worker dies
    return work(unit, on_cell=lambda cell: _EVENTS.put(
        ("cell", number, (cell.unit.start, cell.domain, cell.stats, cell.device))))


class ProcessExecutor(Executor):
    """Fan units out to ``jobs`` local worker processes and hand their cells to the driver as each unit finishes.

    The workers start on the first :meth:`run` and stay up for later runs (they keep the suites they
    opened) until :meth:`close`, or until one dies; use the executor as a context manager to close it.

    Args:
        jobs: Worker processes; default: the CPU cores this process may use.
        threads_per_job: torch threads of each worker; default: the cores divided by ``jobs`` (at least 1).
        max_retries: Times a unit that raised, or whose worker died, is run again before it is reported.

    Raises:
        ValueError: If ``jobs`` or ``threads_per_job`` is below 1, or ``max_retries`` is negative.
    """

    name = "processes"

    def __init__(self, *, jobs: int | None = None, threads_per_job: int | None = None, max_retries: int = 0) -> None:
        super().__init__(max_retries=max_retries)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.jobs = cores if jobs is None else jobs
        self.threads_per_job = max(1, cores // max(1, self.jobs)) if threads_per_job is None else threads_per_job
        if self.jobs < 1 or self.threads_per_job < 1:
            raise ValueError(f"jobs and threads_per_job must be >= 1, got {self.jobs} and {self.threads_per_job}")
        self._workers: _Workers | None = None
        self._numbers: dict[WorkUnit, int] = {}  # each unit's number in the current run, as events name it
        self._resume: UnitResume | None = None
        self._submitted: set[WorkUnit] = set()  # units of the current run submitted at least once

    def run(self, work: UnitWork, units: Sequence[WorkUnit], *, on_cell: CellSink,
            on_unit: UnitHook | None = None, on_batch: BatchHook | None = None,
            resume: UnitResume | None = None) -> list[UnitFailure]:
        """Run every unit in the pool, collecting results as they finish (see :meth:`Executor.run`).

        ``on_batch`` is not called: batches run in the workers. On ``KeyboardInterrupt`` (or any error
        of the driver's own hooks) the queued units are cancelled and the workers terminated before
        it propagates; cells already handed on are complete.
        """
        attempts = dict.fromkeys(units, 0)
        self._numbers = {unit: number for number, unit in enumerate(units)}
        self._resume, self._submitted = resume, set[WorkUnit]()
        failures: list[UnitFailure] = []
        todo, suspects = list(units), list[WorkUnit]()
        while todo or suspects:
            if suspects:  # one worker: a crash among them now names its unit
                with _Workers(1, self.threads_per_job) as alone:
                    again, crashed = _PoolRun(self, alone, work, attempts, failures).run(suspects, on_cell, on_unit)
                suspects = crashed + again
                continue
            if self._workers is None:
                self._workers = _Workers(self.jobs, self.threads_per_job)
            try:
                todo, suspects = _PoolRun(self, self._workers, work, attempts, failures).run(todo, on_cell, on_unit)
            finally:
                if self._workers.broken:
                    self._workers.output.close()
                    self._workers = None
        return failures

    def close(self) -> None:
        """Stop the worker processes (they finish nothing more); a later :meth:`run` starts new ones."""
        if self._workers is not None:
            self._workers.close()
            self._workers = None

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def give_up(self, unit: WorkUnit, attempts: dict[WorkUnit, int], failures: list[UnitFailure], error: str) -> bool:
        """Report ``unit`` as failed and return True when it has no attempt left; else log the retry."""
        if attempts[unit] > self.max_retries:
            logger.warning("%s failed after %d attempt(s): %s", unit, attempts[unit], error)
            failures.append(UnitFailure(unit, attempts[unit], error))
            return True
        logger.warning("%s failed (attempt %d of %d), retrying: %s", unit, attempts[unit], self.max_retries + 1, error)
        return False


class _Workers:
    """A spawned process pool, the queue on which its workers announce the units they start, and their output.

    Workers are spawned by the thread that submits units; Linux's parent-death signal, which fires when
    that thread ends, is armed only when the pool is made in the main thread (the watchdog covers the rest).
    """

    def __init__(self, jobs: int, threads: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.events = context.SimpleQueue()
        self.started_attempts: set[tuple[int, int]] = set()  # (unit number, attempt)
        self.cells: list[tuple[int, tuple[int, Domain, CellStats, str]]] = []  # read from the queue, not handed on yet
        self.broken = False
        self.output = WorkerOutput()
        main_thread = threading.current_thread() is threading.main_thread()
        self.pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_start_worker,
                                        initargs=(threads, self.events, os.getpid(), main_thread,
                                                  str(self.output.path)))

    def drain(self) -> None:
        """Read the workers' events (units started, cells finished; often enough that the pipe never fills)
        and relay what they printed."""
        self.output.relay()
        while not self.events.empty():
            kind, number, value = self.events.get()
            if kind == "started":
                self.started_attempts.add((number, value))
            else:
                self.cells.append((number, value))

    def stop(self) -> None:
        """Cancel the queued units and terminate the workers, so an interrupt does not wait for units in flight."""
        self.broken = True
        processes = list((getattr(self.pool, "_processes", None) or {}).values())  # no public handle
        self.pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        self.output.close()

    def close(self) -> None:
        """Let the workers finish their units, stop them, and relay and delete their output."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.output.close()

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _PoolRun:
    """One run of units on a pool of workers, until every unit is done or a worker dies."""

    def __init__(self, executor: ProcessExecutor, workers: _Workers, work: UnitWork, attempts: dict[WorkUnit, int],
                 failures: list[UnitFailure]) -> None:
        self.executor, self.workers, self.work, self.attempts, self.failures = executor, workers, work, attempts, failures
        self.pending: dict[Future[UnitOutcome], WorkUnit] = {}
        self.running: dict[int, WorkUnit] = {}  # by number: each unit as its latest attempt runs it
        self.delivered: set[tuple[WorkUnit, Domain]] = set()
        self.on_cell: CellSink = lambda cell: None
        workers.drain()
        workers.started_attempts.clear()  # announcements of earlier runs, whose units all finished
        workers.cells.clear()

    def submit(self, unit: WorkUnit) -> None:
        """Queue ``unit``'s next attempt: as given the first time, as ``resume`` returns it after that."""
        self.attempts[unit] += 1
        executor, number = self.executor, self.executor._numbers[unit]
        runs = executor._resume(unit) if unit in executor._submitted and executor._resume is not None else unit
        executor._submitted.add(unit)
        self.running[number] = runs
        self.pending[self.workers.pool.submit(_run_unit, self.work, runs, number, self.attempts[unit])] = unit

    def run(self, units: list[WorkUnit], on_cell: CellSink,
            on_unit: UnitHook | None) -> tuple[list[WorkUnit], list[WorkUnit]]:
        """Run ``units``; after a worker died, return the units to run again and the suspects, else two ``[]``.

        Cells reach ``on_cell`` as the workers finish them (a stream's domains one by one, as in the
        driver's own process), and any the unit's result holds besides when the unit ends.
        """
        self.on_cell = on_cell
        try:
            for unit in units:
                self.submit(unit)
            while self.pending:
                done, _ = wait(self.pending, timeout=_DRAIN_SECONDS, return_when=FIRST_COMPLETED)
                self.hand_on_cells()
                for future in done:
                    unit = self.pending.pop(future)
                    try:
                        outcome = future.result()
                    except BrokenProcessPool:
                        return self._after_break([unit, *self.pending.values()])
                    except Exception as err:  # noqa: BLE001 - a unit's failure is retried, then reported
                        if not self.executor.give_up(unit, self.attempts, self.failures, f"{type(err).__name__}: {err}"):
                            self.submit(unit)
                        continue
                    for cell in outcome.finished_cells():
                        if (cell.unit, cell.domain) not in self.delivered:
                            on_cell(cell)
                    if on_unit is not None:
                        on_unit(outcome)
            return [], []
        except BaseException:
            try:
                self.hand_on_cells()  # cells finished before the interrupt are complete: keep them
            finally:
                self.workers.stop()
            raise

    def hand_on_cells(self) -> None:
        """Read the workers' events and hand on the cells finished since the last call."""
        self.workers.drain()
        cells, self.workers.cells = self.workers.cells, []
        for number, (start, domain, stats, device) in cells:
            unit = replace(self.running[number], start=start)  # as the work ran it
            self.delivered.add((unit, domain))
            self.on_cell(FinishedCell(unit, domain, stats, device))

    def _after_break(self, unfinished: list[WorkUnit]) -> tuple[list[WorkUnit], list[WorkUnit]]:
        """Sort the unfinished units after a worker died into (to run again, suspects to run one at a time).

        A unit that had not started does not lose the attempt. When exactly one unit was running it
        is the one that crashed: the attempt counts (and it is reported once out of attempts). When
        several were running, none is charged: they become suspects, run again one worker at a time.
        """
        self.workers.broken = True
        self.workers.pool.shutdown(wait=True, cancel_futures=True)
        self.hand_on_cells()  # a crashed stream's finished domains are complete cells
        started = self.workers.started_attempts
        in_flight = [u for u in unfinished if (self.executor._numbers[u], self.attempts[u]) in started]
        if not in_flight:
            raise RuntimeError("a worker process died before it started any unit (it could not start: see the "
                               "messages above); nothing more can run in worker processes")
        logger.warning("a worker process died while %d unit(s) ran: %s", len(in_flight), ", ".join(map(str, in_flight)))
        queued = [u for u in unfinished if u not in in_flight]
        for unit in queued if len(in_flight) == 1 else unfinished:
            self.attempts[unit] -= 1  # not charged for this attempt
        if len(in_flight) != 1:
            return queued, in_flight
        (crashed,) = in_flight
        if self.executor.give_up(crashed, self.attempts, self.failures, "a worker process died"):
            return queued, []
        return queued, [crashed]
