"""The benchmark job: methods x domains on a corrupted dataset, each finished cell stored at once.

Cells already in the results store are not recomputed, so an interrupted run resumes where it
stopped. Under the episodic protocol every domain is its own unit of work; under the continual
protocol a method's whole stream is one unit (its cells depend on the ones before).

The driver (:func:`run_bench`) plans the units and hands them to an executor (in this process by
default, worker processes or Ray tasks); a unit's work (:class:`~eval.bench.work.BenchWork`) re-opens
the suite from its paths wherever it runs and returns the finished cells, and the driver alone
writes them to the store. With ``stream_states``, a stream interrupted after some of its domains
resumes from the adapter state saved after the last stored one (:mod:`eval.bench.stream_checkpoints`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from tta.registry import MethodSettings, build_adapter, check_method_options
from eval.bench.spec import BenchSpec, check_device_available, for_seeds
from eval.bench.work import BenchWork
from eval.domains import Domain
from eval.bench.executors import BatchHook, Executor, FinishedCell, LocalExecutor, UnitFailure, UnitOutcome, WorkUnit
from eval.bench.executors.interrupts import sigterm_interrupts
from eval.bench.provenance import run_metadata
from eval.results.records import CellKey, Record
from eval.results.tables import Results
from eval.results.store import ResultsStore
from eval.bench.stream_checkpoints import checkpoint_paths, discard, remove_stale_temporaries_in, resumable
from eval.models.suites import Suite, open_suite

__all__ = ["IncompleteBench", "OpenedBench", "check_methods", "open_bench", "resolve_methods", "run_bench", "run_seeds",
           "plan_units", "open_for_executor"]


def plan_units(spec: BenchSpec) -> list[WorkUnit]:
    """Return the units of work, each run from one fresh adapter: a domain each under the episodic
    protocol, a method's whole stream otherwise."""
    if spec.protocol == "episodic":
        return [WorkUnit(m, (d,)) for m in spec.methods for d in spec.domains]
    return [WorkUnit(m, tuple(spec.domains)) for m in spec.methods]


def _key(spec: BenchSpec, suite: Suite, model: str, method: str, domain: Domain) -> CellKey:
    return CellKey.build(
        method, dict(spec.options.get(method, {})), dataset=suite.name, model=model, protocol=spec.protocol_label,
        domain=domain, seed=spec.seed, batch_size=spec.batch_size, limit=spec.limit,
    )


def resolve_methods(spec: BenchSpec, suite: Suite) -> dict[str, MethodSettings]:
    """Return each method's settings: the suite's defaults for it under the spec's options, checked once.

    Raises:
        ValueError: Naming the method and its options, if the method rejects them.
    """
    settings = {}
    for method in spec.methods:
        options = dict(spec.options.get(method, {}))
        try:
            settings[method] = check_method_options(method, {**suite.method_defaults(method), **options})
        except (TypeError, ValueError) as error:
            raise ValueError(f"method {method!r} rejects its options {options}: {error}") from error
    return settings


def check_methods(spec: BenchSpec, suite: Suite) -> dict[str, MethodSettings]:
    """Resolve each method's settings and build its adapter once on the suite's model, before any work.

    The options are checked once (:func:`resolve_methods`); the build then finds what needs the model
    (a model without normalization layers, a head LAME cannot find, a denoiser file). The adapters are
    built on deep copies and the global random state is restored afterwards, so the run's results are
    those it would have without this check.

    Returns:
        The settings the units build their adapters from, without checking them again.

    Raises:
        ValueError: Naming the method and its options, if the method rejects them or the model.
    """
    settings = resolve_methods(spec, suite)
    for method, resolved in settings.items():
        with torch.random.fork_rng(devices=[]):
            try:
                build_adapter(copy.deepcopy(suite.model), resolved)
            except (TypeError, ValueError) as error:
                options = dict(spec.options.get(method, {}))
                raise ValueError(f"method {method!r} rejects its options {options}: {error}") from error
    return settings


@dataclass(frozen=True)
class OpenedBench:
    """A spec's suite, opened and checked, and its methods' settings, checked: what :func:`run_bench` runs."""

    suite: Suite
    settings: Mapping[str, MethodSettings]


def open_bench(spec: BenchSpec, *, devices_here: bool = True) -> OpenedBench:
    """Open the spec's suite and check everything a run needs, before any work: device, data, model, method options.

    Args:
        spec: What to run.
        devices_here: Whether the units run on this machine, so its devices are checked (not for a Ray
            cluster, whose nodes may have devices this one lacks).

    Returns:
        The opened suite and the methods' checked settings, to pass to :func:`run_bench`.

    Raises:
        FileNotFoundError: If a data file, the model or another file an option names is missing.
        ValueError: If the device is missing here, a file is unreadable or a method rejects its options
            (see :func:`check_methods`).
    """
    if devices_here:
        check_device_available(spec.device)
    suite = open_suite(spec.suite)
    suite.check(spec.domains)
    return OpenedBench(suite, check_methods(spec, suite))


class IncompleteBench(RuntimeError):
    """Some units failed after every retry; every other cell was stored.

    Args:
        failures: The failed units and why.
        results: The records of the spec that are in the store.
    """

    def __init__(self, failures: list[UnitFailure], results: Results) -> None:
        cells = sum(len(f.unit.domains) for f in failures)
        super().__init__(f"{len(failures)} unit(s) ({cells} cell(s)) failed after retries:\n"
                         + "\n".join(f"  {f}" for f in failures))
        self.failures = failures
        self.results = results


def run_bench(
    spec: BenchSpec,
    store: ResultsStore,
    *,
    executor: Executor | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_batch: BatchHook | None = None,
    on_unit: Callable[[UnitOutcome, int], None] | None = None,
    stream_states: Path | None = None,
    on_cell: Callable[[FinishedCell, int], None] | None = None,
    opened: OpenedBench | None = None,
) -> Results:
    """Run every unit whose cells are not all stored yet; return the records of the whole spec.

    This process is the only one that writes ``store``: each finished cell the executor hands back
    is committed at once, as a whole row, so an interrupted run keeps every finished cell and a
    rerun (with any executor) skips them. While the units run, SIGTERM interrupts like Ctrl-C
    (:func:`~eval.bench.executors.interrupts.sigterm_interrupts`: the executor stops its work in flight and
    :class:`~eval.bench.executors.interrupts.Terminated`, a ``KeyboardInterrupt``, propagates).

    Args:
        spec: What to run.
        store: Where each finished cell is written at once (and read back to skip done work).
        executor: Where units run; default :class:`~eval.bench.executors.LocalExecutor` (this process).
        on_start: Called once with ``(batches to run, cells already stored)`` (progress bars).
        on_batch: Called after every batch, by executors that run units in this process.
        on_unit: Called with ``(outcome, batches of the unit)`` when a unit has finished and its cells are stored.
        on_cell: Called with ``(cell, batches of its domain)`` as soon as a cell is stored.
        stream_states: Folder for the adapter states saved at the domain boundaries of streams (see
            :mod:`eval.bench.stream_checkpoints`), so that a stream that failed or was interrupted after
            some domains resumes there, both when the executor retries it and on a rerun; ``None``
            recomputes an unfinished stream from its start. The CLI uses ``<results>.streams``. Temporary
            files that writers killed mid-save left there are removed first.
        opened: The suite and settings as :func:`open_bench` opened and checked them (for this executor's
            placement); ``None`` opens and checks them here.

    Raises:
        FileNotFoundError, ValueError: Before any work, as :func:`open_bench` (when ``suite`` is not given), and
            for a device this machine lacks when the units run here.
        IncompleteBench: After every other unit ran, if some unit failed after all retries.
    """
    executor = executor if executor is not None else LocalExecutor()
    opened = opened if opened is not None else open_for_executor(spec, executor.name)
    suite = opened.suite
    model_name = suite.model_name + ("" if spec.runtime == "torch" else f"+{spec.runtime}")
    keys = {(m, d): _key(spec, suite, model_name, m, d) for m in spec.methods for d in spec.domains}
    units = [_with_checkpoints(u, [keys[u.method, d] for d in u.domains], spec, stream_states)
             for u in plan_units(spec)]
    pending = [_resumed(u, keys, spec, store) for u in units
               if not all(store.has(keys[u.method, d]) for d in u.domains)]
    # Every domain of a pending unit: a stream whose planned state is gone when it starts runs earlier domains too.
    pending_domains = dict.fromkeys(d for u in pending for d in u.domains)
    batches = {d: -(-suite.num_examples(d, spec.limit) // spec.batch_size) for d in pending_domains}
    if on_start is not None:
        stored = len(keys) - sum(len(u.domains) - u.start for u in pending)
        on_start(sum(batches[d] for u in pending for d in u.domains[u.start:]), stored)
    metadata: dict[str, Mapping[str, object]] = {}

    def write(cell: FinishedCell) -> None:
        if cell.device not in metadata:
            metadata[cell.device] = run_metadata(spec, cell.device)
        store.put(Record.from_stats(keys[cell.unit.method, cell.domain], cell.stats, metadata[cell.device]))
        if on_cell is not None:
            on_cell(cell, batches[cell.domain])

    def unit_done(outcome: UnitOutcome) -> None:
        discard(outcome.unit)  # the whole stream is stored: its states are no longer needed
        if on_unit is not None:
            on_unit(outcome, sum(batches[d] for d in outcome.unit.domains[outcome.unit.start:]))

    if stream_states is not None:
        remove_stale_temporaries_in(stream_states)
    work = BenchWork(spec, suite=suite, settings=opened.settings)
    with sigterm_interrupts():
        failures = executor.run(work, pending, on_cell=write, on_unit=unit_done, on_batch=on_batch,
                                resume=lambda unit: _resumed(unit, keys, spec, store))
    records = (store.get(keys[m, d]) for d in spec.domains for m in spec.methods)
    results = Results(r for r in records if r is not None)
    if failures:
        raise IncompleteBench(failures, results)
    return results


def run_seeds(
    spec: BenchSpec,
    seeds: Sequence[int],
    store: ResultsStore,
    *,
    executor: Executor | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_batch: BatchHook | None = None,
    on_unit: Callable[[UnitOutcome, int], None] | None = None,
    stream_states: Path | None = None,
    on_cell: Callable[[FinishedCell, int], None] | None = None,
    opened: OpenedBench | None = None,
) -> Results:
    """Run ``spec`` once per seed (:func:`run_bench` each, seed after seed); return every seed's records.

    The suite is opened and checked once (the seed changes the corruption draws and the protocol's
    order, not the data, model or options); each seed's cells are stored under their own key. The
    arguments are those of :func:`run_bench`; ``on_start`` is called once per seed.

    Raises:
        ValueError: If ``seeds`` is empty, repeats a seed or holds an invalid one (:func:`~eval.bench.spec.for_seeds`),
            and as :func:`run_bench`.
        IncompleteBench: After every seed ran, if some unit of any seed failed after all retries.
    """
    specs = for_seeds(spec, seeds)
    executor = executor if executor is not None else LocalExecutor()
    opened = opened if opened is not None else open_for_executor(spec, executor.name)
    results, failures = Results(), []
    for one in specs:
        try:
            results.extend(run_bench(one, store, executor=executor, on_start=on_start, on_batch=on_batch,
                                     on_unit=on_unit, stream_states=stream_states, on_cell=on_cell, opened=opened))
        except IncompleteBench as incomplete:
            failures.extend(incomplete.failures)
            results.extend(incomplete.results)
    if failures:
        raise IncompleteBench(failures, results)
    return results


def open_for_executor(spec: BenchSpec, executor: str) -> OpenedBench:
    """Open and check ``spec`` for the executor named ``executor``: devices are checked here unless the units
    run on Ray (whose nodes may differ)."""
    return open_bench(spec, devices_here=executor != "ray")


def _resumable_stream(spec: BenchSpec, unit: WorkUnit) -> bool:
    """Whether ``unit`` is a stream whose cells are stored domain by domain and whose adapter lives in torch."""
    return (len(unit.domains) > 1 and spec.stream_protocol.contiguous and spec.runtime == "torch"
            and spec.online_cost is None)


def _with_checkpoints(unit: WorkUnit, keys: list[CellKey], spec: BenchSpec, folder: Path | None) -> WorkUnit:
    """Return ``unit`` with the paths of its domain-boundary states, when its stream carries state into them."""
    if folder is None or not _resumable_stream(spec, unit) or not spec.stream_protocol.carries_state:
        return unit
    return replace(unit, checkpoints=checkpoint_paths(folder, keys))


def _resumed(unit: WorkUnit, keys: Mapping[tuple[str, Domain], CellKey], spec: BenchSpec,
             store: ResultsStore) -> WorkUnit:
    """Return the pending ``unit``, set to skip the stored domains it can resume after."""
    if not _resumable_stream(spec, unit) or (spec.stream_protocol.carries_state and not unit.checkpoints):
        return unit
    return resumable(unit, lambda i: store.has(keys[unit.method, unit.domains[i]]), spec.stream_protocol)
