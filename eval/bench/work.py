"""The work of one unit of a benchmark: open the suite, adapt from a fresh adapter over the unit's domains, score.

It runs wherever the executor puts it (this process, a worker process, a Ray task) and returns the
finished cells; only the driver (:func:`eval.bench.driver.run_bench`) writes them to the store.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from tta.registry import MethodSettings, build_adapter, check_method_options
from eval.bench.spec import BenchSpec, resolve_device
from eval.domains import Domain
from eval.bench.edge_runtime import export_for_runtime
from eval.bench.executors import BatchHook, CellSink, FinishedCell, UnitOutcome, WorkUnit
from eval.bench.hooks import install_hooks, run_hooks
from eval.bench.online import OnlineAdapter, relative_cost
from eval.protocols.streams import Loaders
from eval.bench.meters import CellStats
from eval.bench.runner import run_benchmark
from eval.bench.stream_checkpoints import resume_point
from eval.protocols.streams import Protocol, StreamItem
from eval.models.suites import Suite, SuiteSpec, open_suite
from tta import TTAMethod
from tta.guard import CollapseGuard

_log = logging.getLogger(__name__)

__all__ = ["BenchWork"]

# The suite opened last in this process, so a worker that runs several units opens it once.
_OPENED: dict[SuiteSpec, Suite] = {}


class BenchWork:
    """Runs one unit of a spec: opens the suite from its paths (once per process), adapts, scores.

    Picklable and small: pickling keeps only the spec (paths made absolute), never an opened suite,
    so a Ray task re-reads data and weights from a path its node sees.

    Args:
        spec: The benchmark spec.
        suite: An already opened suite of ``spec.suite`` to reuse in this process.
        settings: Each method's settings as :func:`eval.bench.driver.check_methods` resolved and checked them
            (adapters are built from them without checking again); ``None`` resolves them for each unit.
        hooks: Installers of the hooks run in each unit (:func:`eval.bench.hooks.install_hooks`), installed
            here and in every process that runs a unit; default: ``$TTA_BENCH_HOOKS``.

    Raises:
        ValueError: If an installer named in ``hooks`` cannot be found.
    """

    def __init__(self, spec: BenchSpec, *, suite: Suite | None = None, hooks: str | None = None,
                 settings: Mapping[str, MethodSettings] | None = None) -> None:
        self.spec = _with_suite(spec, _absolute_paths(spec.suite))
        self._suite = suite
        self.hooks = install_hooks(hooks)
        self.settings = settings

    def __getstate__(self) -> dict[str, object]:
        return {"spec": self.spec, "_suite": None, "hooks": self.hooks, "settings": self.settings}

    def method_settings(self, method: str, suite: Suite) -> MethodSettings:
        """Return ``method``'s settings: the ones given, else the suite's defaults under the spec's options, checked."""
        if self.settings is not None:
            return self.settings[method]
        return check_method_options(method, {**suite.method_defaults(method), **self.spec.options.get(method, {})})

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
        """Run ``unit`` from a fresh adapter and return its final cells (see :class:`~eval.bench.executors.UnitWork`).

        A unit with ``start > 0`` runs only its domains from ``start`` on, from the adapter state saved
        after the domain before (when the protocol carries state), or from an earlier one if that state
        is gone by the time the unit starts (:func:`~eval.bench.stream_checkpoints.resume_point`; the cells and
        outcome then carry the unit as it ran). A unit with ``checkpoints`` saves the adapter's state
        after each of its domains as the domain's cell is handed on.
        """
        spec = self.spec
        install_hooks(self.hooks)  # once per process: a worker's first unit installs them there
        run_hooks("unit_start", unit)
        device = resolve_device(spec.device)
        suite = self.suite()
        suite.model.to(device)
        adapter = build_adapter(copy.deepcopy(suite.model), self.method_settings(unit.method, suite)).to(device)
        protocol = spec.stream_protocol
        unit = _resume(adapter, unit, protocol)
        loaders = {
            d: suite.loader(d, batch_size=spec.batch_size, seed=spec.seed, limit=spec.limit, device=device)
            for d in unit.domains[unit.start:]
        }
        runner = self._runner(adapter, loaders, suite, device)
        stream = protocol.stream(loaders)
        if unit.start and protocol.carries_state:
            stream = _without_first_reset(stream)
        streamed = on_cell is not None and protocol.contiguous

        def hand_on(domain: Domain, stats: CellStats) -> None:
            index = unit.domains.index(domain)
            if index < len(unit.checkpoints):  # before the cell leaves: its state is on disk when it is stored
                adapter.save_state(unit.checkpoints[index], relative_to_source=True)  # resumed on the same model
            on_cell(FinishedCell(unit, domain, stats, device))  # type: ignore[misc]
            if 0 < index <= len(unit.checkpoints):  # the state before this domain is no longer needed
                Path(unit.checkpoints[index - 1]).unlink(missing_ok=True)
            run_hooks("cell_done", unit, domain)

        cells = run_benchmark(runner, stream, device=device, on_cell=hand_on if streamed else None,
                              on_batch=on_batch)
        outcome = UnitOutcome(unit, cells, device)
        if on_cell is not None and not streamed:
            for cell in outcome.finished_cells():
                on_cell(cell)
        return outcome

    def _runner(self, adapter: TTAMethod | CollapseGuard, loaders: Loaders, suite: Suite, device: str) -> nn.Module:
        """Return what the stream is run through: the adapter, its ONNX export, or its online-protocol wrapper."""
        spec = self.spec
        if spec.runtime == "onnx":  # the unit's first batch traces the graph and checks its parity
            return export_for_runtime(adapter, _first_batch(loaders).to(device))
        if spec.online_cost is not None:
            cost = spec.online_cost
            if cost == "auto":
                cost = relative_cost(adapter, suite.model, _first_batch(loaders).to(device))
            return OnlineAdapter(adapter, float(cost))
        return adapter


def _resume(adapter: TTAMethod | CollapseGuard, unit: WorkUnit, protocol: Protocol) -> WorkUnit:
    """Return ``unit`` set to where it resumes now, the state it resumes from loaded into ``adapter``."""
    while True:
        unit = resume_point(unit, protocol)
        if not unit.start or not protocol.carries_state:
            return unit
        try:
            adapter.load_state(unit.checkpoints[unit.start - 1])
            return unit
        except FileNotFoundError:  # deleted since resume_point saw it: resume_point now falls back further
            continue
        except ValueError as error:  # damaged (digest) or foreign: useless to every rerun, so it goes
            state = Path(unit.checkpoints[unit.start - 1])
            _log.warning("stream state %s cannot be used (%s); deleted, the stream resumes from an earlier point",
                         state, error)
            state.unlink(missing_ok=True)


def _without_first_reset(stream: Iterator[StreamItem]) -> Iterator[StreamItem]:
    """Yield ``stream`` with its first item's reset cleared: a resumed stream goes on from the loaded state."""
    for index, item in enumerate(stream):
        yield replace(item, reset=False) if index == 0 else item


def _with_suite(spec: BenchSpec, suite: SuiteSpec) -> BenchSpec:
    """Return a copy of the checked ``spec`` with ``suite``: only paths change, so its checks do not run again."""
    moved = copy.copy(spec)
    object.__setattr__(moved, "suite", suite)  # a frozen dataclass: replace() would check the whole spec again
    return moved


def _absolute_paths(suite: SuiteSpec) -> SuiteSpec:
    """Return ``suite`` with its paths made absolute, so the work finds them from any working folder."""
    return replace(suite, data_root=_absolute(suite.data_root), checkpoint=Path(suite.checkpoint).absolute(),
                   weights=_absolute(suite.weights), subset_file=_absolute(suite.subset_file))


def _absolute(path: Path | None) -> Path | None:
    return None if path is None else Path(path).absolute()


def _first_batch(loaders: Loaders) -> torch.Tensor:
    return next(iter(next(iter(loaders.values()))))[0]
