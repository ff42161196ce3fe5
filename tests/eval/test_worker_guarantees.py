"""Tests for the lifetime of worker processes: they die with their parent, print nowhere near its pipes, and
SIGTERM interrupts the driver only while units run."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eval.domains import Domain
from eval.bench.executors import BatchHook, CellSink, UnitOutcome, WorkUnit
from eval.bench.executors.interrupts import Terminated, sigterm_interrupts
from eval.bench.executors.processes import ProcessExecutor
from tests.eval.test_process_executor import _zombie

REPO = Path(__file__).resolve().parents[2]

# Starts a grandchild that watches this process with the watchdog only, prints its pid once it watches, exits.
_PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(__import__("os").getpid())], stdout=subprocess.PIPE,
                         text=True)
print(child.stdout.readline().strip(), flush=True)
"""
_WATCHED = """
import os, sys, time
from eval.bench.executors.worker_lifetime import die_with_parent
die_with_parent(int(sys.argv[1]), parent_death_signal=False, interval=0.1)
print(os.getpid(), flush=True)
time.sleep(60)
"""


def test_watchdog_ends_a_worker_whose_parent_died_without_the_parent_death_signal() -> None:
    parent = subprocess.run([sys.executable, "-c", _PARENT, _WATCHED], cwd=REPO, capture_output=True, text=True,
                            timeout=60, check=True)
    grandchild = int(parent.stdout)
    try:
        deadline = time.monotonic() + 5
        while _running(grandchild) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(grandchild), "the worker outlived its parent"
    finally:
        if _running(grandchild):
            os.kill(grandchild, signal.SIGKILL)


def _running(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and not _zombie(pid)


class _Chatty:
    """A unit's work that prints to stdout and stderr and finishes no cell."""

    def __call__(self, unit: WorkUnit, *, on_cell: CellSink | None = None,
                 on_batch: BatchHook | None = None) -> UnitOutcome:
        print(f"stdout of {unit.method}", flush=True)
        print(f"stderr of {unit.method}", file=sys.stderr, flush=True)
        return UnitOutcome(unit, {}, "cpu")


@pytest.mark.timeout(120)
def test_what_workers_print_reaches_the_driver_log_and_its_file_is_removed(
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.WARNING, logger="eval.bench.executors.worker_lifetime")
    with ProcessExecutor(jobs=1, threads_per_job=1) as executor:
        assert executor.run(_Chatty(), [WorkUnit("norm", (Domain("fog", 5),))], on_cell=lambda cell: None) == []
        assert executor._workers is not None
        log = executor._workers.output.path
    assert "worker process: stdout of norm" in caplog.messages
    assert "worker process: stderr of norm" in caplog.messages
    printed = capfd.readouterr()
    assert "of norm" not in printed.out + printed.err  # not on the fds the workers inherited
    assert not log.exists()


def test_sigterm_interrupts_only_inside_the_block_and_never_replaces_a_programs_own_handler() -> None:
    outer = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # an earlier test (Ray) may have installed its own
    try:
        with pytest.raises(Terminated), sigterm_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        calls: list[int] = []
        signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
        with sigterm_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
        assert calls == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, outer)