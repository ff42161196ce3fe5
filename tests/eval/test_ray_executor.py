"""Tests for the Ray executor on a local Ray instance: same cells and numbers as local, retries, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from eval.bench.driver import IncompleteBench, run_bench
from eval.bench.executors import WorkUnit
from eval.bench.executors.ray_executor import RayExecutor
from eval.bench.hooks import HOOKS_ENV
from eval.results.store import ResultsStore
from tests.eval.faults import FAULT_DIR_ENV, INSTALLER, arm_fault
from tests.eval.grid import (
    CONTRAST,
    FOG,
    NOISE,
    Rows,
    episodic,
    grid_spec,
    run_grid,
    run_stream,
    single_threaded_rows,
    stored_rows,
    stream_spec,
)

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fault_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A local Ray instance (2 CPUs, no dashboard) whose workers see the fault folder and install its hooks."""
    folder = tmp_path_factory.mktemp("faults")
    os.environ[FAULT_DIR_ENV] = str(folder)  # set before ray.init: the workers inherit it
    os.environ[HOOKS_ENV] = INSTALLER  # read by the driver's work, which carries it to the workers
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield folder
    finally:
        ray.shutdown()
        del os.environ[FAULT_DIR_ENV], os.environ[HOOKS_ENV]


@pytest.mark.timeout(300)
def test_ray_sweep_stores_the_same_cells_and_numbers_as_local(fault_dir, fmnist_dir, checkpoint, tmp_path,  # type: ignore[no-untyped-def]
                                                             local_rows) -> None:
    # one unit crashes its worker and one raises, once each: Ray retries both and each cell lands once
    arm_fault(fault_dir, "norm", CONTRAST, "exit")
    arm_fault(fault_dir, "source", NOISE, "raise")
    with ResultsStore(tmp_path / "ray.sqlite") as store:
        run_grid(fmnist_dir, checkpoint, store, RayExecutor(cpus_per_unit=1, max_retries=1))
    assert list(fault_dir.iterdir()) == []  # both faults fired
    assert len(local_rows) == 8 and all(n == 32 for *_, n in local_rows.values())
    assert stored_rows(tmp_path / "ray.sqlite") == local_rows  # errors, ECE, NLL and counts exactly equal


@pytest.mark.timeout(300)
def test_ray_failure_after_retries_is_reported_and_a_rerun_fills_only_the_gap(fault_dir, fmnist_dir, checkpoint,  # type: ignore[no-untyped-def]
                                                                             tmp_path, local_rows) -> None:
    spec = grid_spec(fmnist_dir, checkpoint)
    arm_fault(fault_dir, "norm", NOISE, "raise", times=2)
    with ResultsStore(tmp_path / "r.sqlite") as store, pytest.raises(IncompleteBench) as info:
        run_bench(spec, store, executor=RayExecutor(max_retries=1))
    (failure,) = info.value.failures
    assert failure.unit == WorkUnit("norm", (NOISE,)) and "InjectedFault" in failure.error
    assert len(stored_rows(tmp_path / "r.sqlite")) == 3
    reran: list[WorkUnit] = []
    with ResultsStore(tmp_path / "r.sqlite") as store:
        run_bench(spec, store, executor=RayExecutor(), on_unit=lambda outcome, _: reran.append(outcome.unit))
    assert reran == [WorkUnit("norm", (NOISE,))]
    assert stored_rows(tmp_path / "r.sqlite") == episodic(local_rows)


@pytest.mark.timeout(300)
def test_ray_stream_whose_worker_died_keeps_its_finished_domains_and_resumes(fault_dir, fmnist_dir, checkpoint,  # type: ignore[no-untyped-def]
                                                                            tmp_path) -> None:
    spec, path = stream_spec(fmnist_dir, checkpoint), tmp_path / "r.sqlite"
    arm_fault(fault_dir, "tent", FOG, "exit", on_entry=True)  # dies once noise and contrast are done
    with pytest.raises(IncompleteBench):
        run_stream(spec, path, RayExecutor(max_retries=0))
    assert len(stored_rows(path)) == 2  # the finished domains came back through the queue before the crash
    assert run_stream(spec, path, RayExecutor()) == [2]  # only fog ran, from the state saved after contrast
    assert stored_rows(path) == single_threaded_rows(spec, tmp_path / "whole.sqlite")  # exactly equal


@pytest.mark.timeout(300)
def test_ray_stream_whose_worker_died_is_retried_from_the_state_after_its_stored_domains(  # type: ignore[no-untyped-def]
        fault_dir, fmnist_dir, checkpoint, tmp_path) -> None:
    spec, path = stream_spec(fmnist_dir, checkpoint), tmp_path / "r.sqlite"
    arm_fault(fault_dir, "tent", FOG, "exit", on_entry=True)
    assert run_stream(spec, path, RayExecutor(max_retries=1)) == [2]  # the retry ran only fog
    assert list(fault_dir.iterdir()) == []  # the fault fired
    assert stored_rows(path) == single_threaded_rows(spec, tmp_path / "whole.sqlite")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop_driver_mid_sweep_and_resume(fault_dir: Path, fmnist_dir: Path, checkpoint: Path, tmp_path: Path,
                                      local_rows: Rows, sig: signal.Signals) -> int:
    """Run a CLI driver joined to the test's cluster, send ``sig`` once 3 of 4 cells are stored (the 4th
    stalls), rerun the grid and check the store equals the local run's; return the driver's exit code."""
    args = ["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint), "--methods", "source,norm",
            "--corruptions", "gaussian_noise,contrast", "--batch-size", "16", "--limit", "32",
            "--results", str(tmp_path / "r.sqlite"), "--executor", "ray", "--ray-address",
            ray.get_runtime_context().gcs_address]
    arm_fault(fault_dir, "norm", CONTRAST, "stall")
    # SIGINT back to its default in the driver: a shell's background job starts with it ignored, and
    # Python then installs no KeyboardInterrupt handler, so Ctrl-C would never reach the driver.
    driver = subprocess.Popen([sys.executable, "-m", "eval.cli", *args], cwd=REPO, stderr=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 120
        # Cells arrive as soon as they are final, before their task ends: wait for the stalled unit to
        # start as well (its marker disappears), or the rerun would be the one to stall.
        while time.monotonic() < deadline and driver.poll() is None and (
                len(stored_rows(tmp_path / "r.sqlite")) < 3 or list(fault_dir.iterdir())):
            time.sleep(0.3)
        assert len(stored_rows(tmp_path / "r.sqlite")) == 3, "the driver never stored the three other cells"
        assert not list(fault_dir.iterdir()), "the stalled unit never started"
        driver.send_signal(sig)
        code = driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    with ResultsStore(tmp_path / "r.sqlite") as store:
        run_bench(grid_spec(fmnist_dir, checkpoint), store, executor=RayExecutor())
    assert stored_rows(tmp_path / "r.sqlite") == episodic(local_rows)
    return code


@pytest.mark.timeout(300)
def test_killed_ray_driver_resumes_on_the_cluster(fault_dir, fmnist_dir, checkpoint, tmp_path, local_rows) -> None:  # type: ignore[no-untyped-def]
    """A CLI driver joined to the running cluster (--ray-address) is killed mid-sweep; a rerun completes it."""
    code = _stop_driver_mid_sweep_and_resume(fault_dir, fmnist_dir, checkpoint, tmp_path, local_rows, signal.SIGKILL)
    assert code == -signal.SIGKILL


@pytest.mark.timeout(300)
def test_interrupted_ray_driver_resumes_on_the_cluster(fault_dir, fmnist_dir, checkpoint, tmp_path, local_rows) -> None:  # type: ignore[no-untyped-def]
    """Ctrl-C on a CLI driver joined to the cluster: the stalled task is cancelled, the driver exits 130."""
    code = _stop_driver_mid_sweep_and_resume(fault_dir, fmnist_dir, checkpoint, tmp_path, local_rows, signal.SIGINT)
    assert code == 130
