"""The small sweep every executor test runs: source and norm on two corruptions, and how to read a store back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from eval.bench.spec import BenchSpec
from eval.bench.driver import run_bench
from eval.domains import Domain
from eval.bench.executors import Executor, LocalExecutor
from eval.results.store import ResultsStore
from eval.bench.stream_checkpoints import states_folder
from eval.models.suites import SuiteSpec

NOISE, CONTRAST, FOG = Domain("gaussian_noise", 5), Domain("contrast", 5), Domain("fog", 5)
PROTOCOLS = ("episodic", "continual")
#: ``(protocol, method, domain) -> (error, ece, nll, n)``: what must agree between executors.
Rows = dict[tuple[str, str, str], tuple[float, float, float | None, int]]


def grid_spec(fmnist_dir: Path, checkpoint: Path, protocol: str = "episodic") -> BenchSpec:
    """Return the grid's spec under ``protocol``: 2 methods x 2 domains, 32 images each."""
    return BenchSpec(methods=("source", "norm"), corruptions=("gaussian_noise", "contrast"), batch_size=16, limit=32,
                     protocol=protocol, suite=SuiteSpec(data_root=fmnist_dir, checkpoint=checkpoint))


def run_grid(fmnist_dir: Path, checkpoint: Path, store: ResultsStore, executor: Executor,
             protocols: tuple[str, ...] = PROTOCOLS) -> None:
    """Run the grid under each protocol into ``store`` with ``executor``."""
    for protocol in protocols:
        run_bench(grid_spec(fmnist_dir, checkpoint, protocol), store, executor=executor)


def stored_rows(path: Path) -> Rows:
    """Return every cell stored at ``path`` (none if there is no store yet); times and dates differ by run."""
    if not path.exists():
        return {}
    with ResultsStore(path) as store:
        records = store.records()
    rows = {(r.key.protocol, r.key.method, str(r.key.domain)): (r.error, r.ece, r.nll, r.n) for r in records}
    assert len(rows) == len(records)  # one row per cell
    return rows


def episodic(rows: Rows) -> Rows:
    """Return the episodic cells of ``rows``."""
    return {key: value for key, value in rows.items() if key[0] == "episodic"}


def stream_spec(fmnist_dir: Path, checkpoint: Path) -> BenchSpec:
    """Return tent's continual stream over noise, contrast and fog: the stream the crash-and-resume tests break."""
    return replace(grid_spec(fmnist_dir, checkpoint, "continual"), methods=("tent",),
                   corruptions=("gaussian_noise", "contrast", "fog"))


def single_threaded_rows(spec: BenchSpec, path: Path) -> Rows:
    """Run ``spec`` into a store at ``path`` with the local executor and one torch thread, as each worker runs it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ResultsStore(path) as store:
            run_bench(spec, store, executor=LocalExecutor())
    finally:
        torch.set_num_threads(threads)
    return stored_rows(path)


def run_stream(spec: BenchSpec, path: Path, executor: Executor) -> list[int]:
    """Run ``spec`` into ``path`` with ``executor``, keeping stream states; return each finished unit's start."""
    starts: list[int] = []
    with ResultsStore(path) as store:
        run_bench(spec, store, executor=executor, stream_states=states_folder(path),
                  on_unit=lambda outcome, _: starts.append(outcome.unit.start))
    return starts
