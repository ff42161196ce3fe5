"""Tests for the process-pool executor: same cells as local, retries of raised and crashed units, Ctrl-C, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from eval.bench.driver import IncompleteBench, run_bench
from eval.cli import main
from eval.bench.executors import WorkUnit, create_executor
from eval.bench.executors.processes import ProcessExecutor
from eval.results.store import ResultsStore
from eval.bench.stream_checkpoints import states_folder
from tests.eval.faults import arm_fault
from tests.eval.grid import (
    CONTRAST,
    FOG,
    NOISE,
    PROTOCOLS,
    episodic,
    grid_spec,
    run_stream,
    single_threaded_rows,
    stored_rows,
    stream_spec,
)

REPO = Path(__file__).resolve().parents[2]


def test_process_executor_checks_its_sizes() -> None:
    with pytest.raises(ValueError, match="jobs and threads_per_job must be >= 1, got 0"):
        ProcessExecutor(jobs=0)
    with pytest.raises(ValueError, match="max_retries must be >= 0"):
        create_executor("processes", max_retries=-1)
    executor = create_executor("processes", jobs=2)
    assert isinstance(executor, ProcessExecutor) and executor.jobs == 2 and executor.threads_per_job >= 1


@pytest.mark.timeout(300)
def test_process_sweep_equals_local_with_a_crashed_and_a_failing_unit_retried(fmnist_dir, checkpoint, tmp_path,  # type: ignore[no-untyped-def]
                                                                             faults, local_rows) -> None:
    # One unit kills its worker (the pool breaks and is rebuilt), one raises; each is run again once.
    arm_fault(faults, "norm", CONTRAST, "exit")
    arm_fault(faults, "source", NOISE, "raise")
    finished: list[WorkUnit] = []
    with ResultsStore(tmp_path / "p.sqlite") as store:
        for protocol in PROTOCOLS:
            run_bench(grid_spec(fmnist_dir, checkpoint, protocol), store,
                      executor=ProcessExecutor(jobs=2, threads_per_job=1, max_retries=1),
                      on_unit=lambda outcome, _: finished.append(outcome.unit))
    assert list(faults.iterdir()) == []  # both faults fired
    assert len(finished) == 6 and len(set(finished)) == 6  # 4 episodic + 2 continual units, each handed on once
    assert len(local_rows) == 8
    assert stored_rows(tmp_path / "p.sqlite") == local_rows  # errors, ECE, NLL and counts exactly equal


@pytest.mark.timeout(300)
def test_process_failure_after_retries_is_reported_and_a_rerun_fills_only_the_gap(fmnist_dir, checkpoint,  # type: ignore[no-untyped-def]
                                                                                 tmp_path, faults, local_rows) -> None:
    spec = grid_spec(fmnist_dir, checkpoint)
    # Crashes its worker every time (3 markers: a crash while another unit also ran charges neither,
    # and both run again one at a time, so the culprit is charged 2 attempts by its 2nd or 3rd crash).
    arm_fault(faults, "norm", NOISE, "exit", times=3)
    with ResultsStore(tmp_path / "r.sqlite") as store, pytest.raises(IncompleteBench) as info:
        run_bench(spec, store, executor=ProcessExecutor(jobs=2, threads_per_job=1, max_retries=1))
    (failure,) = info.value.failures
    assert failure.unit == WorkUnit("norm", (NOISE,)) and failure.attempts == 2
    assert "worker process died" in failure.error
    assert len(stored_rows(tmp_path / "r.sqlite")) == 3  # the innocent units were never charged
    for marker in faults.iterdir():
        marker.unlink()
    with ResultsStore(tmp_path / "r.sqlite") as store:
        run_bench(spec, store, executor=ProcessExecutor(jobs=2, threads_per_job=1))
    assert stored_rows(tmp_path / "r.sqlite") == episodic(local_rows)


@pytest.mark.timeout(300)
def test_process_workers_stay_up_between_runs_until_closed(fmnist_dir, checkpoint, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with ProcessExecutor(jobs=2, threads_per_job=1) as executor, ResultsStore(tmp_path / "r.sqlite") as store:
        run_bench(grid_spec(fmnist_dir, checkpoint), store, executor=executor)
        workers = sorted(executor._workers.pool._processes)  # type: ignore[union-attr]
        run_bench(grid_spec(fmnist_dir, checkpoint, "continual"), store, executor=executor)
        assert sorted(executor._workers.pool._processes) == workers  # type: ignore[union-attr]
    assert executor._workers is None and len(stored_rows(tmp_path / "r.sqlite")) == 8
    assert [pid for pid in workers if Path(f"/proc/{pid}").exists() and not _zombie(pid)] == []


@pytest.mark.timeout(300)
def test_stream_whose_worker_died_keeps_its_finished_domains_and_resumes_from_their_state(  # type: ignore[no-untyped-def]
        fmnist_dir, checkpoint, tmp_path, faults) -> None:
    spec, path = stream_spec(fmnist_dir, checkpoint), tmp_path / "r.sqlite"
    arm_fault(faults, "tent", FOG, "exit", on_entry=True)  # dies once noise and contrast are done
    with pytest.raises(IncompleteBench):
        run_stream(spec, path, ProcessExecutor(jobs=1, threads_per_job=1))
    assert len(stored_rows(path)) == 2 and len(list(states_folder(path).iterdir())) == 1
    assert run_stream(spec, path, ProcessExecutor(jobs=1, threads_per_job=1)) == [2]  # only fog ran, from its state
    assert stored_rows(path) == single_threaded_rows(spec, tmp_path / "whole.sqlite")
    assert not states_folder(path).exists()


@pytest.mark.timeout(300)
def test_stream_whose_worker_died_is_retried_from_the_state_after_its_stored_domains(  # type: ignore[no-untyped-def]
        fmnist_dir, checkpoint, tmp_path, faults) -> None:
    spec, path = stream_spec(fmnist_dir, checkpoint), tmp_path / "r.sqlite"
    arm_fault(faults, "tent", FOG, "exit", on_entry=True)
    assert run_stream(spec, path, ProcessExecutor(jobs=1, threads_per_job=1, max_retries=1)) == [2]  # the retry: fog
    assert list(faults.iterdir()) == []  # the fault fired
    assert stored_rows(path) == single_threaded_rows(spec, tmp_path / "whole.sqlite")
    assert not states_folder(path).exists()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.timeout(300)
def test_interrupted_process_driver_stops_its_workers_and_resumes(fmnist_dir, checkpoint, tmp_path, faults,  # type: ignore[no-untyped-def]
                                                                 local_rows) -> None:
    """Ctrl-C while one unit stalls: the driver exits 130 without waiting for it, no worker is left, a rerun completes."""
    results = tmp_path / "r.sqlite"
    args = ["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint), "--methods", "source,norm",
            "--corruptions", "gaussian_noise,contrast", "--batch-size", "16", "--limit", "32",
            "--results", str(results), "--executor", "processes", "--jobs", "2"]
    arm_fault(faults, "norm", CONTRAST, "stall")
    driver = subprocess.Popen([sys.executable, "-m", "eval.cli", *args], cwd=REPO, stderr=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, preexec_fn=_default_sigint, text=True)
    try:
        deadline = time.monotonic() + 120
        # Cells arrive as soon as they are final, before their unit ends: wait for the stalled unit to
        # start as well (its marker disappears), or the rerun would be the one to stall.
        while time.monotonic() < deadline and driver.poll() is None and (
                len(stored_rows(results)) < 3 or list(faults.iterdir())):
            time.sleep(0.3)
        assert len(stored_rows(results)) == 3, "the driver never stored the three other cells"
        assert not list(faults.iterdir()), "the stalled unit never started"
        children = _children(driver.pid)
        assert children, "the driver has no worker processes"
        driver.send_signal(signal.SIGINT)
        assert driver.wait(timeout=60) == 130
        assert "rerun the same command to resume" in (driver.stderr.read() if driver.stderr else "")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    time.sleep(1.0)
    assert [pid for pid in children if Path(f"/proc/{pid}").exists() and not _zombie(pid)] == []
    assert main(args) == 0
    assert stored_rows(results) == episodic(local_rows)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_process_driver_leaves_no_worker_and_no_holder_of_its_pipes(fmnist_dir, checkpoint, tmp_path,  # type: ignore[no-untyped-def]
                                                                           faults, signum) -> None:
    """Kill the driver while both workers are busy: they end at once and its stdout reaches EOF.

    SIGTERM is an interrupt (the stored cell is kept, the CLI's interrupted exit); SIGKILL leaves the
    workers to notice their parent's death on their own.
    """
    results = tmp_path / "r.sqlite"
    args = ["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint), "--methods", "source",
            "--corruptions", "gaussian_noise,contrast,fog", "--batch-size", "16", "--limit", "32",
            "--results", str(results), "--executor", "processes", "--jobs", "2"]
    arm_fault(faults, "source", CONTRAST, "stall")
    arm_fault(faults, "source", FOG, "stall")
    driver = subprocess.Popen([sys.executable, "-m", "eval.cli", *args], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and driver.poll() is None and (
                len(stored_rows(results)) < 1 or list(faults.iterdir())):
            time.sleep(0.2)
        assert len(stored_rows(results)) == 1 and not list(faults.iterdir()), "both workers never stalled"
        children = _children(driver.pid)
        assert len(children) >= 2, "the driver has no worker processes"
        driver.send_signal(signum)
        try:
            _, err = driver.communicate(timeout=10)  # EOF on stdout and stderr: nobody holds the pipes
        except subprocess.TimeoutExpired:
            pytest.fail("the driver's stdout/stderr pipes are still open 10 s after it was killed")
        assert _alive(children, within=5.0) == []
        if signum == signal.SIGTERM:
            assert driver.returncode == 130 and "rerun the same command to resume" in err
        assert len(stored_rows(results)) == 1  # the finished cell is kept
    finally:
        for pid in _alive(children, within=0.0):
            os.kill(pid, signal.SIGKILL)
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for log in Path(tempfile.gettempdir()).glob(f"tta-workers-{driver.pid}-*.log"):  # a killed driver's
            log.unlink()


def _alive(pids: list[int], *, within: float) -> list[int]:
    """Return those of ``pids`` still running after waiting up to ``within`` seconds for them to end."""
    deadline = time.monotonic() + within
    while True:
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def _children(pid: int) -> list[int]:
    """Return the process ids of ``pid``'s children (Linux /proc)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(status.parent.name))
    return found


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def test_process_flags_need_the_process_executor(fmnist_dir, checkpoint, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = ["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint), "--results",
            str(tmp_path / "r.sqlite")]
    assert main([*args, "--jobs", "2"]) == 2
    assert "--jobs only applies to --executor processes, got --executor local" in capsys.readouterr().err
    assert main([*args, "--executor", "processes", "--jobs", "0"]) == 2
    assert "jobs and threads_per_job must be >= 1" in capsys.readouterr().err
    assert main([*args, "--executor", "processes", "--device", "cuda"]) == 2
    assert "--device cuda with --executor processes needs --jobs" in capsys.readouterr().err
