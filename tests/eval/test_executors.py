"""Tests for eval.bench.executors and the bench driver: units, local runs, retries with injected faults, resume."""

from __future__ import annotations

import io
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tqdm import tqdm

from eval.bench.spec import BenchSpec
from eval.bench.work import BenchWork
from eval.bench.driver import IncompleteBench, plan_units, run_bench
from eval.cli import main
from eval.commands.progress import BenchProgress
from eval.domains import Domain
from eval.bench.executors import FinishedCell, LocalExecutor, UnitOutcome, WorkUnit, create_executor
from eval.protocols.streams import StreamItem
from eval.results.store import ResultsStore
from eval.bench.meters import CellStats
from eval.models.suites import SuiteSpec
from tests.eval.faults import InjectedFault, arm_fault, maybe_fail

NOISE, CONTRAST = Domain("gaussian_noise", 5), Domain("contrast", 5)
REPO = Path(__file__).resolve().parents[2]


def _spec(fmnist_dir: Path, checkpoint: Path, **kwargs: object) -> BenchSpec:
    fields = {"methods": ("source", "norm"), "corruptions": ("gaussian_noise", "contrast"), "batch_size": 16,
              "suite": SuiteSpec(data_root=fmnist_dir, checkpoint=checkpoint), **kwargs}
    return BenchSpec(**fields)  # type: ignore[arg-type]


def _rows(path: Path) -> dict[tuple[str, str], tuple[float, float, float | None, int]]:
    """Return every stored cell as ``(method, domain) -> (error, ece, nll, n)``; times and dates differ by run."""
    with ResultsStore(path) as store:
        records = store.records()
    rows = {(r.key.method, str(r.key.domain)): (r.error, r.ece, r.nll, r.n) for r in records}
    assert len(rows) == len(records)  # one row per cell
    return rows


def test_plan_units_one_cell_per_unit_episodic_one_stream_per_method_otherwise(fmnist_dir, checkpoint) -> None:  # type: ignore[no-untyped-def]
    episodic = plan_units(_spec(fmnist_dir, checkpoint))
    assert episodic == [WorkUnit("source", (NOISE,)), WorkUnit("source", (CONTRAST,)),
                        WorkUnit("norm", (NOISE,)), WorkUnit("norm", (CONTRAST,))]
    for protocol in ("continual", "gradual", "mixed"):
        units = plan_units(_spec(fmnist_dir, checkpoint, protocol=protocol))
        assert units == [WorkUnit("source", (NOISE, CONTRAST)), WorkUnit("norm", (NOISE, CONTRAST))]


def test_local_executor_hands_cells_on_as_they_finish(fmnist_dir, checkpoint, tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = _spec(fmnist_dir, checkpoint, protocol="continual", methods=("norm",))
    events: list[str] = []
    work = BenchWork(spec)
    outcome = work(WorkUnit("norm", (NOISE, CONTRAST)), on_cell=lambda c: events.append(f"cell {c.domain}"),
                   on_batch=lambda item, _: events.append(f"batch {item.domain}"))
    # each cell is handed on when its run of batches ends, before the next domain's first batch
    assert events == ["batch gaussian_noise-5"] * 3 + ["cell gaussian_noise-5"] + \
        ["batch contrast-5"] * 3 + ["cell contrast-5"]
    assert list(outcome.cells) == [NOISE, CONTRAST] and outcome.device == "cpu"
    assert all(isinstance(s, CellStats) and s.n == 48 for s in outcome.cells.values())


def test_revisiting_protocol_hands_cells_on_only_when_the_stream_ends(fmnist_dir, checkpoint, tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = _spec(fmnist_dir, checkpoint, protocol="mixed", methods=("norm",))
    events: list[str] = []
    BenchWork(spec)(WorkUnit("norm", (NOISE, CONTRAST)), on_cell=lambda c: events.append("cell"),
                    on_batch=lambda item, _: events.append("batch"))
    assert events == ["batch"] * 6 + ["cell"] * 2  # never a partial cell of a domain that comes back


def test_interrupted_mixed_stream_stores_no_partial_cell(fmnist_dir, checkpoint, tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = _spec(fmnist_dir, checkpoint, protocol="mixed")
    seen = []

    def interrupt_in_second_unit(item: StreamItem, _: torch.Tensor) -> None:
        seen.append(item)
        if len(seen) == 6 + 4:
            raise KeyboardInterrupt

    with ResultsStore(tmp_path / "r.sqlite") as store, pytest.raises(KeyboardInterrupt):
        run_bench(spec, store, on_batch=interrupt_in_second_unit)
    assert sorted(_rows(tmp_path / "r.sqlite")) == [("source", "contrast-5"), ("source", "gaussian_noise-5")]
    assert all(row[3] == 48 for row in _rows(tmp_path / "r.sqlite").values())


def test_bench_work_pickles_as_its_spec_with_absolute_paths(fmnist_dir, checkpoint, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(fmnist_dir.parent)
    spec = _spec(Path(fmnist_dir.name), Path(checkpoint.name))
    work = BenchWork(spec)
    work.suite()  # opened in this process ...
    copy = pickle.loads(pickle.dumps(work))
    assert copy._suite is None  # ... but never shipped
    assert copy.spec.suite.data_root == fmnist_dir and copy.spec.suite.checkpoint == checkpoint
    assert len(pickle.dumps(work)) < 4096


def test_failing_cell_is_retried_and_lands_once(fmnist_dir, checkpoint, tmp_path, faults) -> None:  # type: ignore[no-untyped-def]
    spec = _spec(fmnist_dir, checkpoint)
    with ResultsStore(tmp_path / "clean.sqlite") as store:
        run_bench(spec, store)
    arm_fault(faults, "norm", CONTRAST, "raise")
    units: list[UnitOutcome] = []
    with ResultsStore(tmp_path / "r.sqlite") as store:
        run_bench(spec, store, executor=LocalExecutor(max_retries=1), on_unit=lambda o, _: units.append(o))
    assert list(faults.iterdir()) == []  # the fault fired
    assert len(units) == 4
    assert _rows(tmp_path / "r.sqlite") == _rows(tmp_path / "clean.sqlite")


def test_cell_failing_after_retries_is_reported_and_the_rest_lands(fmnist_dir, checkpoint, tmp_path, faults) -> None:  # type: ignore[no-untyped-def]
    spec = _spec(fmnist_dir, checkpoint)
    arm_fault(faults, "norm", CONTRAST, "raise", times=2)
    with ResultsStore(tmp_path / "r.sqlite") as store, pytest.raises(IncompleteBench) as info:
        run_bench(spec, store, executor=LocalExecutor(max_retries=1))
    (failure,) = info.value.failures
    assert failure.unit == WorkUnit("norm", (CONTRAST,)) and failure.attempts == 2
    assert "InjectedFault" in failure.error and "norm on contrast-5" in str(info.value)
    assert len(info.value.results) == 3
    assert sorted(_rows(tmp_path / "r.sqlite")) == [("norm", "gaussian_noise-5"), ("source", "contrast-5"),
                                                    ("source", "gaussian_noise-5")]
    reran: list[WorkUnit] = []
    with ResultsStore(tmp_path / "r.sqlite") as store:
        assert len(run_bench(spec, store, on_unit=lambda o, _: reran.append(o.unit))) == 4
    assert reran == [WorkUnit("norm", (CONTRAST,))]


def test_cli_exits_1_listing_failed_cells(fmnist_dir, checkpoint, tmp_path, faults, capsys) -> None:  # type: ignore[no-untyped-def]
    arm_fault(faults, "source", NOISE, "raise")
    args = ["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint), "--results",
            str(tmp_path / "r.sqlite"), "--methods", "source,norm", "--corruptions", "gaussian_noise,contrast",
            "--batch-size", "16"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "source on gaussian_noise-5: failed 1 time(s)" in captured.err and "rerun" in captured.err
    assert "| norm" in captured.out  # the table of what landed is still printed
    assert main([*args, "--max-retries", "1"]) == 0 and len(_rows(tmp_path / "r.sqlite")) == 4


def test_ray_flags_need_the_ray_executor(fmnist_dir, checkpoint, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = ["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint), "--results",
            str(tmp_path / "r.sqlite"), "--gpus-per-cell", "1"]
    assert main(args) == 2
    assert "--gpus-per-cell only applies to --executor ray, got --executor local" in capsys.readouterr().err
    assert main([*args, "--executor", "ray", "--device", "cuda", "--gpus-per-cell", "0"]) == 2
    assert "needs --gpus-per-cell > 0" in capsys.readouterr().err


def test_missing_ray_names_the_extra(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'tta-plugin\[ray\]'"):
        create_executor("ray")
    with pytest.raises(ValueError, match="unknown executor 'dask'"):
        create_executor("dask")


def test_library_never_imports_ray_for_local_runs() -> None:
    code = "import sys, eval.cli, eval.bench.driver, eval.bench.executors; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120).returncode == 0


def test_injected_fault_fires_once_per_marker(tmp_path, faults) -> None:  # type: ignore[no-untyped-def]
    arm_fault(faults, "tent", NOISE, "raise", times=2)
    maybe_fail("tent", (CONTRAST,))  # other cells are untouched
    for _ in range(2):
        with pytest.raises(InjectedFault, match="tent on gaussian_noise-5"):
            maybe_fail("tent", (CONTRAST, NOISE))
    maybe_fail("tent", (NOISE,))  # spent


def test_progress_shows_domain_batch_running_error_and_rate() -> None:
    stream = io.StringIO()
    bar = tqdm(total=0, file=stream, mininterval=0)
    ticks = iter([0.0, 1.0, 2.0, 3.0])
    progress = BenchProgress(bar, clock=lambda: next(ticks))
    progress.start(4, 0)
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    for y in ([0, 1], [1, 0], [1, 0]):  # 0, 2 then 2 wrong: running error 0%, 50%, 66.7%
        progress.batch(StreamItem(NOISE, torch.zeros(2, 1), torch.tensor(y), False), logits)
    assert bar.n == 3
    assert bar.postfix == "domain=gaussian_noise-5 batch=3 err=66.7% 2 img/s"  # 4 images after the first, in 2 s
    stats = CellStats(error=0.25, ece=0.0, n=100, seconds=0.5)
    progress.unit(UnitOutcome(WorkUnit("norm", (NOISE,)), {NOISE: stats}, "cpu"), 3)  # its batches were counted
    assert bar.n == 3 and bar.postfix.startswith("domain=gaussian_noise-5 batch=3")
    progress.unit(UnitOutcome(WorkUnit("norm", (CONTRAST,)), {CONTRAST: stats}, "cpu"), 1)  # ran elsewhere
    assert bar.n == 4 and bar.postfix == "domain=norm/contrast-5 batch=done err=25.0% 200 img/s"
    progress.close()


def test_progress_of_units_run_elsewhere_moves_with_each_stored_cell() -> None:
    bar = tqdm(total=0, file=io.StringIO(), mininterval=0)
    progress = BenchProgress(bar)
    progress.start(10, 0)
    a, b = WorkUnit("norm", (NOISE, CONTRAST)), WorkUnit("tent", (NOISE, CONTRAST))
    stats = CellStats(error=0.5, ece=0.0, n=40, seconds=2.0)
    progress.cell(FinishedCell(a, NOISE, stats, "cpu"), 3)  # two streams in two workers, interleaved
    progress.cell(FinishedCell(b, NOISE, stats, "cpu"), 3)
    assert bar.n == 6 and bar.postfix == "domain=tent/gaussian_noise-5 batch=done err=50.0% 20 img/s"
    progress.cell(FinishedCell(a, CONTRAST, stats, "cpu"), 2)
    progress.unit(UnitOutcome(a, {NOISE: stats, CONTRAST: stats}, "cpu"), 5)  # all its batches already counted
    assert bar.n == 8
    progress.unit(UnitOutcome(b, {NOISE: stats, CONTRAST: stats}, "cpu"), 5)  # its last cell came with the unit
    assert bar.n == 10
    progress.close()


def test_progress_in_logs_shows_a_cell_mid_way_not_its_first_batch() -> None:
    """With the 15-s log interval, short cells must not leave the postfix stuck at batch 1 (no rate yet)."""
    bar = tqdm(total=0, file=io.StringIO(), mininterval=15)
    clock = iter(float(t) for t in range(1000))
    progress = BenchProgress(bar, clock=lambda: next(clock))
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    for domain in (NOISE, CONTRAST, NOISE, CONTRAST):  # cells of 5 batches, one second each
        for _ in range(5):
            progress.batch(StreamItem(domain, torch.zeros(2, 1), torch.tensor([0, 1]), False), logits)
    assert "batch=1 " not in bar.postfix and "–" not in bar.postfix and "err=0.0%" in bar.postfix
    progress.close()


@pytest.mark.timeout(240)
def test_killed_driver_resumes_with_nothing_lost_or_duplicated(fmnist_dir, checkpoint, tmp_path, faults) -> None:  # type: ignore[no-untyped-def]
    args = ["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint), "--methods", "source,norm",
            "--corruptions", "gaussian_noise,contrast", "--batch-size", "16"]
    assert main([*args, "--results", str(tmp_path / "whole.sqlite")]) == 0
    arm_fault(faults, "norm", NOISE, "stall")  # the third unit hangs until the driver is killed
    results = tmp_path / "r.sqlite"
    driver = subprocess.Popen([sys.executable, "-m", "eval.cli", *args, "--results", str(results)], cwd=REPO,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while list(faults.iterdir()) and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.2)  # the marker disappears when the stalled unit starts
        assert not list(faults.iterdir()), "the driver never reached the stalled unit"
        assert sorted(_rows(results)) == [("source", "contrast-5"), ("source", "gaussian_noise-5")]
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert driver.returncode == -signal.SIGKILL
    assert main([*args, "--results", str(results)]) == 0
    assert _rows(results) == _rows(tmp_path / "whole.sqlite")
