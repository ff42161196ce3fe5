"""The benchmark job: methods x domains on a corrupted dataset, each finished cell stored at once.

Cells already in the results store are not recomputed, so an interrupted run resumes where it
stopped. Under the episodic protocol every domain is its own unit of work; under the continual
protocol a method's whole stream is one unit (its cells depend on the ones before).

The driver (:func:`run_bench`) plans the units and hands them to an executor (in this process by
default, or Ray tasks); a unit's work (:class:`BenchWork`) re-opens the suite from its paths
wherever it runs and returns the finished cells, and the driver alone writes them to the store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

import tta
from eval.corruptions import DEFAULT_CORRUPTIONS
from eval.domains import Domain
from eval.edge_runtime import RUNTIMES, Runtime, check_runtime_methods, export_for_runtime
from eval.executors import (
    BatchHook,
    CellSink,
    Executor,
    FinishedCell,
    LocalExecutor,
    UnitFailure,
    UnitOutcome,
    WorkUnit,
)
from eval.executors.faults import maybe_fail
from eval.online import OnlineAdapter, relative_cost
from eval.protocols import Loaders, get_protocol
from eval.provenance import run_metadata
from eval.results import CellKey, Record, Results, ResultsStore
from eval.runner import CellStats, run_benchmark
from eval.suites import Suite, SuiteSpec, model_id, open_suite

__all__ = ["BenchSpec", "BenchWork", "IncompleteBench", "run_bench", "plan_units", "model_id", "resolve_device"]


@dataclass(frozen=True)
class BenchSpec:
    """What to run: methods (with keyword options) x corruptions x severities of a suite under one protocol.

    ``device``: where each unit runs, e.g. ``cpu``, ``cuda``, ``cuda:1``, or ``auto`` (CUDA when the
    process running the unit sees a GPU, else CPU; resolved where the unit runs).

    ``online_cost``: ``None`` scores the usual offline protocol (every batch waits for adaptation);
    a number ``C >= 1`` or ``"auto"`` (measured on the first batch) scores the online protocol where a
    method ``C`` times slower than plain inference adapts on one batch in ``ceil(C)``.
    """

    methods: tuple[str, ...] = ("source", "norm", "tent")
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    corruptions: tuple[str, ...] = tuple(DEFAULT_CORRUPTIONS)
    severities: tuple[int, ...] = (5,)
    protocol: str = "episodic"
    batch_size: int = 128
    seed: int = 0
    limit: int | None = None
    suite: SuiteSpec = field(default_factory=SuiteSpec)
    device: str = "cpu"
    runtime: Runtime = "torch"
    online_cost: float | str | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(tta.list_methods()))
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; available: {tta.list_methods()}")
        get_protocol(self.protocol)
        if self.runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {self.runtime!r}; choose one of {list(RUNTIMES)}")
        if self.runtime == "onnx":
            check_runtime_methods(self.methods)
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.online_cost not in (None, "auto") and not float(self.online_cost) >= 1.0:
            raise ValueError(f"online cost must be 'auto' or a number >= 1, got {self.online_cost!r}")

    @property
    def domains(self) -> list[Domain]:
        """Domains in benchmark order: corruption-major, severities as given; ``clean`` once, at severity 0."""
        domains = [Domain(c, 0 if c == "clean" else s) for c in self.corruptions for s in self.severities]
        return list(dict.fromkeys(domains))

    @property
    def protocol_label(self) -> str:
        """The protocol as recorded in results (``+online`` variants never mix with offline cells)."""
        return self.protocol if self.online_cost is None else f"{self.protocol}+online:{self.online_cost}"


# Protocols whose stream visits each domain in one contiguous run: a domain's cell is final as soon as
# its run ends, so it can be stored at once. Any other protocol (gradual and mixed revisit domains)
# hands its cells on only when the whole stream has ended, so the store never holds a partial cell.
_CONTIGUOUS_PROTOCOLS = frozenset({"episodic", "continual", "class-sorted", "dirichlet"})

# The suite opened last in this process, so a worker that runs several units opens it once.
_OPENED: dict[SuiteSpec, Suite] = {}


def resolve_device(device: str) -> str:
    """Return ``device``, with ``auto`` meaning CUDA when this process sees a GPU, else CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


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
) -> Results:
    """Run every unit whose cells are not all stored yet; return the records of the whole spec.

    This process is the only one that writes ``store``: each finished cell the executor hands back
    is committed at once, as a whole row, so an interrupted run keeps every finished cell and a
    rerun (with any executor) skips them.

    Args:
        spec: What to run.
        store: Where each finished cell is written at once (and read back to skip done work).
        executor: Where units run; default :class:`~eval.executors.LocalExecutor` (this process).
        on_start: Called once with ``(batches to run, cells already stored)`` (progress bars).
        on_batch: Called after every batch, by executors that run units in this process.
        on_unit: Called with ``(outcome, batches of the unit)`` when a unit has finished and its cells are stored.

    Raises:
        IncompleteBench: After every other unit ran, if some unit failed after all retries.
    """
    executor = executor if executor is not None else LocalExecutor()
    suite = open_suite(spec.suite)
    suite.check(spec.domains)
    model_name = suite.model_name + ("" if spec.runtime == "torch" else f"+{spec.runtime}")
    keys = {u: {d: _key(spec, suite, model_name, u.method, d) for d in u.domains} for u in plan_units(spec)}
    pending = [u for u, unit_keys in keys.items() if not all(store.has(k) for k in unit_keys.values())]
    pending_domains = dict.fromkeys(d for u in pending for d in u.domains)
    batches = {d: -(-suite.num_examples(d, spec.limit) // spec.batch_size) for d in pending_domains}
    if on_start is not None:
        stored = sum(len(u.domains) for u in keys) - sum(len(u.domains) for u in pending)
        on_start(sum(batches[d] for u in pending for d in u.domains), stored)
    metadata: dict[str, Mapping[str, object]] = {}

    def write(cell: FinishedCell) -> None:
        if cell.device not in metadata:
            metadata[cell.device] = run_metadata(replace(spec, device=cell.device))
        store.put(Record.from_stats(keys[cell.unit][cell.domain], cell.stats, metadata[cell.device]))

    def unit_done(outcome: UnitOutcome) -> None:
        if on_unit is not None:
            on_unit(outcome, sum(batches[d] for d in outcome.unit.domains))

    work = BenchWork(spec, suite=suite)
    failures = executor.run(work, pending, on_cell=write, on_unit=unit_done, on_batch=on_batch)
    records = (store.get(_key(spec, suite, model_name, m, d)) for d in spec.domains for m in spec.methods)
    results = Results(r for r in records if r is not None)
    if failures:
        raise IncompleteBench(failures, results)
    return results


class BenchWork:
    """Runs one unit of a spec: opens the suite from its paths (once per process), adapts, scores.

    Picklable and small: pickling keeps only the spec (paths made absolute), never an opened suite,
    so a Ray task re-reads data and weights from a path its node sees.

    Args:
        spec: The benchmark spec.
        suite: An already opened suite of ``spec.suite`` to reuse in this process.
    """

    def __init__(self, spec: BenchSpec, *, suite: Suite | None = None) -> None:
        self.spec = replace(spec, suite=_absolute_paths(spec.suite))
        self._suite = suite

    def __getstate__(self) -> dict[str, object]:
        return {"spec": self.spec, "_suite": None}

    def suite(self) -> Suite:
        """Return the opened suite: the one given, else this process's cached one, else a new one."""
        if self._suite is None:
            if self.spec.suite not in _OPENED:
                _OPENED.clear()
                _OPENED[self.spec.suite] = open_suite(self.spec.suite)
            self._suite = _OPENED[self.spec.suite]
        return self._suite

    def __call__(self, unit: WorkUnit, *, on_cell: CellSink | None = None,
                 on_batch: BatchHook | None = None) -> UnitOutcome:
        """Run ``unit`` from a fresh adapter and return its final cells (see :class:`~eval.executors.UnitWork`)."""
        spec = self.spec
        maybe_fail(unit.method, unit.domains)  # test-only fault injection; a no-op otherwise
        device = resolve_device(spec.device)
        suite = self.suite()
        suite.model.to(device)
        options = {**suite.method_defaults(unit.method), **spec.options.get(unit.method, {})}
        adapter = tta.wrap(suite.model, unit.method, **options).to(device)
        loaders = {
            d: suite.loader(d, batch_size=spec.batch_size, seed=spec.seed, limit=spec.limit, device=device)
            for d in unit.domains
        }
        runner: nn.Module = adapter
        if spec.runtime == "onnx":  # the unit's first batch traces the graph and checks its parity
            runner = export_for_runtime(adapter, _first_batch(loaders).to(device))
        elif spec.online_cost is not None:
            cost = spec.online_cost
            if cost == "auto":
                cost = relative_cost(adapter, suite.model, _first_batch(loaders).to(device))
            runner = OnlineAdapter(adapter, float(cost))

        streamed = on_cell is not None and spec.protocol in _CONTIGUOUS_PROTOCOLS

        def hand_on(domain: Domain, stats: CellStats) -> None:
            on_cell(FinishedCell(unit, domain, stats, device))  # type: ignore[misc]

        stream = get_protocol(spec.protocol, seed=spec.seed).stream(loaders)
        cells = run_benchmark(runner, stream, device=device, on_cell=hand_on if streamed else None,
                              on_batch=on_batch)
        outcome = UnitOutcome(unit, cells, device)
        if on_cell is not None and not streamed:
            for cell in outcome.finished_cells():
                on_cell(cell)
        return outcome


def _absolute_paths(suite: SuiteSpec) -> SuiteSpec:
    """Return ``suite`` with its paths made absolute, so the work finds them from any working folder."""
    return replace(suite, data_root=_absolute(suite.data_root), checkpoint=Path(suite.checkpoint).absolute(),
                   weights=_absolute(suite.weights), subset_file=_absolute(suite.subset_file))


def _absolute(path: Path | None) -> Path | None:
    return None if path is None else Path(path).absolute()


def _first_batch(loaders: Loaders) -> torch.Tensor:
    return next(iter(next(iter(loaders.values()))))[0]
