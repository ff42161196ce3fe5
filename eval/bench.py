"""The benchmark job: methods x domains on a corrupted dataset, each finished cell stored at once.

Cells already in the results store are not recomputed, so an interrupted run resumes where it
stopped. Under the episodic protocol every domain is its own unit of work; under the continual
protocol a method's whole stream is one unit (its cells depend on the ones before).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import tta
from eval.corruptions import DEFAULT_CORRUPTIONS, ENGINE_VERSION
from eval.datasets import CorruptedView, load_fashion_mnist
from eval.domains import Domain
from eval.edge_runtime import RUNTIMES, Runtime, check_runtime_methods, export_for_runtime
from eval.models import DEFAULT_CHECKPOINT, load_source_model
from eval.protocols import StreamItem, get_protocol
from eval.results import CellKey, Record, Results, ResultsStore
from eval.runner import CellStats, run_benchmark

__all__ = ["BenchSpec", "run_bench", "plan_units", "model_id"]

DATASET = f"fmnist-c/corruptions-v{ENGINE_VERSION}"


@dataclass(frozen=True)
class BenchSpec:
    """What to run: methods (with keyword options) x corruptions x severities under one protocol."""

    methods: tuple[str, ...] = ("source", "norm", "tent")
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    corruptions: tuple[str, ...] = tuple(DEFAULT_CORRUPTIONS)
    severities: tuple[int, ...] = (5,)
    protocol: str = "episodic"
    batch_size: int = 128
    seed: int = 0
    limit: int | None = None
    checkpoint: Path = DEFAULT_CHECKPOINT
    data_root: Path | None = None
    device: str = "cpu"
    runtime: Runtime = "torch"

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

    @property
    def domains(self) -> list[Domain]:
        """Domains in benchmark order: corruption-major, severities as given; ``clean`` once, at severity 0."""
        domains = [Domain(c, 0 if c == "clean" else s) for c in self.corruptions for s in self.severities]
        return list(dict.fromkeys(domains))


def model_id(checkpoint: Path) -> str:
    """Return ``<file name>@<sha256 prefix>``, so results of different weights never mix."""
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()[:12]
    return f"{Path(checkpoint).name}@{digest}"


def plan_units(spec: BenchSpec) -> list[tuple[str, list[Domain]]]:
    """Return the units of work: ``(method, domains)`` run from one fresh adapter each."""
    if spec.protocol == "episodic":
        return [(m, [d]) for m in spec.methods for d in spec.domains]
    return [(m, spec.domains) for m in spec.methods]


def _key(spec: BenchSpec, model: str, method: str, domain: Domain) -> CellKey:
    return CellKey.build(
        method, dict(spec.options.get(method, {})), dataset=DATASET, model=model, protocol=spec.protocol,
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
    model_name = model_id(spec.checkpoint) + ("" if spec.runtime == "torch" else f"+{spec.runtime}")
    source = load_source_model(spec.checkpoint).to(spec.device)
    images, labels = load_fashion_mnist("test", spec.data_root)
    units = [(m, {d: _key(spec, model_name, m, d) for d in ds}) for m, ds in plan_units(spec)]
    pending = [(m, keys) for m, keys in units if not all(store.has(k) for k in keys.values())]
    if on_start is not None:
        n = len(labels) if spec.limit is None else min(spec.limit, len(labels))
        stored = sum(len(keys) for _, keys in units) - sum(len(keys) for _, keys in pending)
        on_start(sum(len(keys) for _, keys in pending) * -(-n // spec.batch_size), stored)
    for method, keys in pending:
        _run_unit(spec, source, method, keys, (images, labels), store, on_batch)
    return Results(r for d in spec.domains for m in spec.methods if (r := store.get(_key(spec, model_name, m, d))))


def _run_unit(
    spec: BenchSpec,
    source: nn.Module,
    method: str,
    keys: Mapping[Domain, CellKey],
    data: tuple[torch.Tensor, torch.Tensor],
    store: ResultsStore,
    on_batch: Callable[[StreamItem, torch.Tensor], None] | None,
) -> None:
    adapter = tta.wrap(source, method, **spec.options.get(method, {})).to(spec.device)
    loaders = {
        d: CorruptedView(*data, d.corruption, d.severity, batch_size=spec.batch_size, seed=spec.seed,
                         limit=spec.limit, device=spec.device)
        for d in keys
    }
    runner: nn.Module = adapter
    if spec.runtime == "onnx":  # the unit's first batch traces the graph and checks its parity
        runner = export_for_runtime(adapter, next(iter(loaders.values())).batch(0)[0])

    def write(domain: Domain, stats: CellStats) -> None:
        store.put(Record(keys[domain], stats.error, stats.ece, stats.n, stats.seconds))

    stream = get_protocol(spec.protocol).stream(loaders)
    run_benchmark(runner, stream, device=spec.device, on_cell=write, on_batch=on_batch)
