"""Tests for the hook points of a unit's work (eval.bench.hooks): where they run, and installing them by name."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

from eval.bench.executors import WorkUnit
from eval.bench.hooks import HOOKS_ENV, add_hook, install_hooks, remove_hook, run_hooks
from eval.bench.spec import BenchSpec
from eval.bench.work import BenchWork
from eval.cli import main
from eval.domains import Domain
from eval.models.suites import SuiteSpec
from tests.eval.grid import CONTRAST, NOISE

Calls = list[tuple[str, WorkUnit, Domain | None]]


@pytest.fixture
def calls() -> Iterator[Calls]:
    """Record every call of both hook points while the test runs."""
    seen: Calls = []

    def at_start(unit: WorkUnit, domain: Domain | None) -> None:
        seen.append(("unit_start", unit, domain))

    def at_cell(unit: WorkUnit, domain: Domain | None) -> None:
        seen.append(("cell_done", unit, domain))

    add_hook("unit_start", at_start)
    add_hook("cell_done", at_cell)
    try:
        yield seen
    finally:
        remove_hook("unit_start", at_start)
        remove_hook("cell_done", at_cell)


def _spec(fmnist_dir: Path, checkpoint: Path, protocol: str) -> BenchSpec:
    return BenchSpec(methods=("norm",), corruptions=("gaussian_noise", "contrast"), batch_size=16, limit=16,
                     protocol=protocol, suite=SuiteSpec(data_root=fmnist_dir, checkpoint=checkpoint))


def test_hooks_run_at_unit_start_and_after_each_streamed_cell(fmnist_dir, checkpoint, calls) -> None:  # type: ignore[no-untyped-def]
    unit = WorkUnit("norm", (NOISE, CONTRAST))
    events: list[str] = []
    BenchWork(_spec(fmnist_dir, checkpoint, "continual"))(
        unit, on_cell=lambda cell: events.append(f"cell {cell.domain}"))
    assert calls == [("unit_start", unit, None), ("cell_done", unit, NOISE), ("cell_done", unit, CONTRAST)]
    assert events == ["cell gaussian_noise-5", "cell contrast-5"]  # each hook ran after its cell was handed on


def test_hooks_do_not_run_for_cells_that_are_not_streamed(fmnist_dir, checkpoint, calls) -> None:  # type: ignore[no-untyped-def]
    unit = WorkUnit("norm", (NOISE,))
    BenchWork(_spec(fmnist_dir, checkpoint, "episodic"))(unit)
    assert calls == [("unit_start", unit, None)]


def test_a_hook_that_raises_fails_the_unit(fmnist_dir, checkpoint) -> None:  # type: ignore[no-untyped-def]
    def refuse(unit: WorkUnit, domain: Domain | None) -> None:
        raise RuntimeError(f"refused {unit.method}")

    add_hook("unit_start", refuse)
    try:
        with pytest.raises(RuntimeError, match="refused norm"):
            BenchWork(_spec(fmnist_dir, checkpoint, "episodic"))(WorkUnit("norm", (NOISE,)))
    finally:
        remove_hook("unit_start", refuse)


def test_a_hook_added_twice_runs_once_and_bad_registrations_are_refused(calls) -> None:  # type: ignore[no-untyped-def]
    unit = WorkUnit("norm", (NOISE,))
    seen: list[WorkUnit] = []
    hook = lambda u, d: seen.append(u)  # noqa: E731
    add_hook("unit_start", hook)
    add_hook("unit_start", hook)
    try:
        run_hooks("unit_start", unit)
    finally:
        remove_hook("unit_start", hook)
    assert seen == [unit]
    with pytest.raises(ValueError, match="unknown hook point 'batch'; choose one of"):
        add_hook("batch", hook)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a hook must be callable"):
        add_hook("unit_start", "print")  # type: ignore[arg-type]


_INSTALLED: list[str] = []


def record_install() -> None:
    """An installer named by the tests below: records that it ran."""
    _INSTALLED.append("ran")


def test_installers_named_in_the_environment_run_once_per_process_and_travel_with_the_work(  # type: ignore[no-untyped-def]
        fmnist_dir, checkpoint, monkeypatch) -> None:
    name = f"{__name__}:record_install"
    monkeypatch.setenv(HOOKS_ENV, f" {name} ,")
    work = BenchWork(_spec(fmnist_dir, checkpoint, "episodic"))
    assert _INSTALLED == ["ran"]
    assert install_hooks(name) == name and _INSTALLED == ["ran"]  # once per process
    monkeypatch.delenv(HOOKS_ENV)
    assert pickle.loads(pickle.dumps(work)).hooks == f" {name} ,"  # what a worker process installs


@pytest.mark.parametrize(("entry", "message"), [
    ("tests.eval.faults", "TTA_BENCH_HOOKS entry 'tests.eval.faults' is not module:function"),
    ("tests.eval.no_such_module:install", "cannot import 'tests.eval.no_such_module'"),
    ("tests.eval.faults:no_such_function", "tests.eval.faults has no function 'no_such_function'"),
])
def test_bad_installer_names_are_refused(entry, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="TTA_BENCH_HOOKS entry") as info:
        install_hooks(entry)
    assert message in str(info.value)


def test_cli_refuses_a_bad_installer_name_with_one_line(fmnist_dir, checkpoint, tmp_path, monkeypatch,  # type: ignore[no-untyped-def]
                                                        capsys) -> None:
    monkeypatch.setenv(HOOKS_ENV, "tests.eval.faults:no_such_function")
    args = ["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint), "--methods", "source",
            "--corruptions", "gaussian_noise", "--batch-size", "16", "--results", str(tmp_path / "r.sqlite")]
    assert main(args) == 2
    err = capsys.readouterr().err  # after the progress bar's first frame: the work is built once the run starts
    assert err.endswith("\n") and err.count("tta: error: ") == 1, err
    assert err.rstrip("\n").rpartition("\n")[2].startswith("tta: error: TTA_BENCH_HOOKS entry"), err
