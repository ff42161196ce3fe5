"""The benchmark from Python: run a grid and get its cells back as records (or a pandas DataFrame).

:func:`run` is ``tta bench`` without the command line: the same spec (:class:`~eval.bench.spec.BenchSpec`),
the same checks before any work (:func:`~eval.bench.driver.open_for_executor`), the same driver
(:func:`~eval.bench.driver.run_seeds`) and the same SQLite store, so a grid run from Python resumes
from, and is resumed by, the CLI on the same store. Mistakes raise Python exceptions, never exit codes.

Example:
    >>> from eval.api import run, to_dataframe                                     # doctest: +SKIP
    >>> records = run(["source", "tent"], corruptions=["gaussian_noise"], limit=256,
    ...               seeds=[0, 1], results="results/api.sqlite")                  # doctest: +SKIP
    >>> to_dataframe(records).groupby("method")["error"].mean()                    # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from eval.bench.driver import open_for_executor, run_seeds
from eval.bench.executors import Executor, LocalExecutor
from eval.bench.spec import BenchSpec, for_seeds
from eval.bench.stream_checkpoints import states_folder
from eval.corruptions import DEFAULT_CORRUPTIONS
from eval.models.suites import SuiteSpec
from eval.results.records import COLUMNS, Record
from eval.results.store import ResultsStore
from eval.results.tables import Results

__all__ = ["run", "to_dataframe"]

_GRID_FIELDS = ("methods", "options", "corruptions", "severities", "protocol", "batch_size", "seed", "limit", "suite")
"""The :class:`BenchSpec` fields :func:`run` takes as its own arguments; the others come in ``**settings``."""


def run(
    methods: Sequence[str] = ("source", "norm", "tent"),
    *,
    dataset: str = "fmnist-c",
    corruptions: Sequence[str] = tuple(DEFAULT_CORRUPTIONS),
    severities: Sequence[int] = (5,),
    protocol: str = "episodic",
    seeds: Sequence[int] = (0,),
    limit: int | None = None,
    batch_size: int = 128,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    results: str | Path | None = None,
    executor: Executor | None = None,
    **settings: Any,
) -> Results:
    """Run methods x corruptions x severities x seeds under one protocol and return every cell's record.

    Cells already in ``results`` are read back, not recomputed (as ``tta bench`` does); each finished
    cell is stored at once, so an interrupted run resumes where it stopped.

    Args:
        methods: Registered method names (``tta.list_methods()``).
        dataset: ``fmnist-c`` (built on the fly) or an on-disk suite (``cifar10-c``, ``cifar100-c``, ``imagenet-c``).
        corruptions: Corruption names, ``"clean"`` for the uncorrupted test set; default the 15 common ones.
        severities: Severities in 1..5.
        protocol: One of :func:`eval.protocols.registry.list_protocols`.
        seeds: The grid runs once per seed; every seed's cells are stored under their own key.
        limit: Use only the first ``limit`` test images of each domain (``None``: all).
        batch_size: Test batch size.
        options: Keyword options per method, e.g. ``{"tent": {"lr": 1e-4}}``.
        results: The SQLite results store; ``None`` runs into a temporary store that is deleted afterwards.
        executor: Where units run (:func:`eval.bench.executors.create_executor`; the caller closes it); default
            this process.
        **settings: Any other :class:`~eval.bench.spec.BenchSpec` field (``device``, ``runtime``, ``online_cost``,
            ``dirichlet_delta``) or :class:`~eval.models.suites.SuiteSpec` field (``data_root``, ``checkpoint``,
            ``arch``, ``weights``, ``per_class``, ...); paths may be strings.

    Returns:
        The records of the whole grid (a list of :class:`~eval.results.records.Record`), seed by seed.

    Raises:
        TypeError: For a setting that is no spec field.
        ValueError, FileNotFoundError: Before any work, for a bad name, value, option or missing file.
        eval.bench.driver.IncompleteBench: After the rest ran, if some unit failed after its retries;
            its ``results`` holds the stored records.
    """
    spec = _spec(methods, dataset, corruptions, severities, protocol, seeds, limit, batch_size, options, settings)
    executor = executor if executor is not None else LocalExecutor()
    opened = open_for_executor(spec, executor.name)
    if results is None:
        with tempfile.TemporaryDirectory(prefix="tta-api-") as folder, \
                ResultsStore(Path(folder) / "results.sqlite") as store:
            return run_seeds(spec, seeds, store, executor=executor, opened=opened)
    with ResultsStore(results) as store:
        return run_seeds(spec, seeds, store, executor=executor, opened=opened, stream_states=states_folder(Path(results)))


def _spec(methods: Sequence[str], dataset: str, corruptions: Sequence[str], severities: Sequence[int], protocol: str,
          seeds: Sequence[int], limit: int | None, batch_size: int, options: Mapping[str, Mapping[str, Any]] | None,
          settings: Mapping[str, Any]) -> BenchSpec:
    """Return the first seed's spec from :func:`run`'s arguments, every seed checked."""
    bench_names = [f.name for f in fields(BenchSpec) if f.name not in _GRID_FIELDS]
    suite_names = [f.name for f in fields(SuiteSpec) if f.name != "dataset"]
    unknown = sorted(set(settings) - set(bench_names) - set(suite_names))
    if unknown:
        raise TypeError(f"unknown setting(s) {unknown}; run() takes its own arguments and these: "
                        f"{sorted(bench_names + suite_names)}")
    suite = SuiteSpec(dataset=dataset, **{name: _as_path(SuiteSpec, name, value)  # type: ignore[arg-type]
                                          for name, value in settings.items() if name in suite_names})
    spec = BenchSpec(methods=tuple(methods), options={m: dict(o) for m, o in (options or {}).items()},
                     corruptions=tuple(corruptions), severities=tuple(severities), protocol=protocol,
                     batch_size=batch_size, seed=seeds[0] if seeds else 0, limit=limit, suite=suite,
                     **{name: value for name, value in settings.items() if name in bench_names})
    for_seeds(spec, seeds)  # every seed checked before any work
    return spec


def _as_path(kind: type, name: str, value: object) -> object:
    """Return ``value`` as a ``Path`` where the field ``name`` of dataclass ``kind`` holds a path and it is a string."""
    annotation = str(next(f.type for f in fields(kind) if f.name == name))
    return Path(value) if isinstance(value, str) and "Path" in annotation else value


def to_dataframe(records: Iterable[Record]) -> Any:
    """Return ``records`` as a pandas DataFrame: one row per cell, the store's columns (key fields first).

    Raises:
        ImportError: If pandas is not installed (the records themselves need no pandas).
    """
    try:
        pandas = importlib.import_module("pandas")
    except ImportError:
        raise ImportError("to_dataframe needs pandas: pip install pandas "
                          "(eval.api.run returns the records as a list either way)") from None
    return pandas.DataFrame([record.to_dict() for record in records], columns=list(COLUMNS))
