"""The small sweep every executor test runs: source and norm on two corruptions, and how to read a store back."""

from __future__ import annotations

from pathlib import Path

from eval.bench import BenchSpec, run_bench
from eval.domains import Domain
from eval.executors import Executor
from eval.results import ResultsStore
from eval.suites import SuiteSpec

NOISE, CONTRAST = Domain("gaussian_noise", 5), Domain("contrast", 5)
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
