"""The benchmark job: methods x domains on a corrupted dataset, each finished cell stored at once.

Cells already in the results store are not recomputed, so an interrupted run resumes where it
stopped. Under the episodic protocol every domain is its own unit of work; under the continual
protocol a method's whole stream is one unit (its cells depend on the ones before).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import tta
from eval.corruptions import DEFAULT_CORRUPTIONS
from eval.domains import Domain
from eval.edge_runtime import RUNTIMES, Runtime, check_runtime_methods, export_for_runtime
from eval.online import OnlineAdapter, relative_cost
from eval.protocols import StreamItem, get_protocol
from eval.provenance import run_metadata
from eval.results import CellKey, Record, Results, ResultsStore
from eval.runner import CellStats, run_benchmark
from eval.suites import Suite, SuiteSpec, model_id, open_suite

__all__ = ["BenchSpec", "run_bench", "plan_units", "model_id"]


@dataclass(frozen=True)
class BenchSpec:
    """What to run: methods (with keyword options) x corruptions x severities of a suite under one protocol.

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
        if self.online_cost not in (None, "auto") and not float(self.online_cost) >= 1.0:  # type: ignore[arg-type]
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


def plan_units(spec: BenchSpec) -> list[tuple[str, list[Domain]]]:
    """Return the units of work: ``(method, domains)`` run from one fresh adapter each."""
    if spec.protocol == "episodic":
        return [(m, [d]) for m in spec.methods for d in spec.domains]
    return [(m, spec.domains) for m in spec.methods]


def _key(spec: BenchSpec, suite: Suite, model: str, method: str, domain: Domain) -> CellKey:
    return CellKey.build(
        method, dict(spec.options.get(method, {})), dataset=suite.name, model=model, protocol=spec.protocol_label,
        domain=domain, seed=spec.seed, batch_size=spec.batch_size, limit=spec.limit,
    )


def run_bench(
    spec: BenchSpec,
    store: ResultsStore,
    *,
    on_start: Callable[[int, int], None] | None = None,
    on_batch: Callable[[StreamItem, torch.Tensor], None] | None = None,
) -> Results:
    """Run every unit whose cells are not all stored yet; return the records of the whole spec.

    Args:
        spec: What to run.
        store: Where each finished cell is written at once (and read back to skip done work).
        on_start: Called once with ``(batches to run, cells already stored)`` (progress bars).
        on_batch: Called after every batch.
    """
    suite = open_suite(spec.suite)
    suite.check(spec.domains)
    suite.model.to(spec.device)
    model_name = suite.model_name + ("" if spec.runtime == "torch" else f"+{spec.runtime}")
    units = [(m, {d: _key(spec, suite, model_name, m, d) for d in ds}) for m, ds in plan_units(spec)]
    pending = [(m, keys) for m, keys in units if not all(store.has(k) for k in keys.values())]
    if on_start is not None:
        batches = sum(-(-suite.num_examples(d, spec.limit) // spec.batch_size) for _, keys in pending for d in keys)
        on_start(batches, sum(len(keys) for _, keys in units) - sum(len(keys) for _, keys in pending))
    for method, keys in pending:
        _run_unit(spec, suite, method, keys, store, on_batch)
    records = (store.get(_key(spec, suite, model_name, m, d)) for d in spec.domains for m in spec.methods)
    return Results(r for r in records if r is not None)


def _run_unit(
    spec: BenchSpec,
    suite: Suite,
    method: str,
    keys: Mapping[Domain, CellKey],
    store: ResultsStore,
    on_batch: Callable[[StreamItem, torch.Tensor], None] | None,
) -> None:
    adapter = tta.wrap(suite.model, method, **spec.options.get(method, {})).to(spec.device)
    loaders = {
        d: suite.loader(d, batch_size=spec.batch_size, seed=spec.seed, limit=spec.limit, device=spec.device)
        for d in keys
    }
    runner: nn.Module = adapter
    if spec.runtime == "onnx":  # the unit's first batch traces the graph and checks its parity
        runner = export_for_runtime(adapter, _first_batch(loaders).to(spec.device))
    elif spec.online_cost is not None:
        cost = spec.online_cost
        if cost == "auto":
            cost = relative_cost(adapter, suite.model, _first_batch(loaders).to(spec.device))
        runner = OnlineAdapter(adapter, float(cost))

    def write(domain: Domain, stats: CellStats) -> None:
        store.put(Record.from_stats(keys[domain], stats, run_metadata(spec)))

    stream = get_protocol(spec.protocol, seed=spec.seed).stream(loaders)
    run_benchmark(runner, stream, device=spec.device, on_cell=write, on_batch=on_batch)


def _first_batch(loaders: Mapping[Domain, Any]) -> torch.Tensor:
    return next(iter(next(iter(loaders.values()))))[0]
