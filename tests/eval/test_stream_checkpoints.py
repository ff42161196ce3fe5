"""Tests for resuming an interrupted stream from the adapter state saved at its last stored domain."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from eval.bench.spec import BenchSpec
from eval.bench.driver import run_bench
from eval.cli import main
from eval.domains import Domain
from eval.bench.executors import LocalExecutor, UnitFailure, UnitOutcome, UnitWork, WorkUnit
from eval.protocols.registry import get_protocol
from eval.results.store import ResultsStore
from eval.bench.stream_checkpoints import checkpoint_paths, resumable, states_folder
from eval.protocols.streams import StreamItem
from eval.models.suites import SuiteSpec
from tests.eval.faults import arm_fault
from tests.eval.grid import Rows, stored_rows

CORRUPTIONS = ("gaussian_noise", "contrast", "fog")


def _spec(fmnist_dir: Path, checkpoint: Path, protocol: str = "continual") -> BenchSpec:
    return BenchSpec(methods=("norm", "tent"), corruptions=CORRUPTIONS, batch_size=16, limit=32, protocol=protocol,
                     suite=SuiteSpec(data_root=fmnist_dir, checkpoint=checkpoint))


class _Interrupt:
    """An ``on_batch`` hook that records the batches' domains and raises KeyboardInterrupt at the
    ``nth`` batch of ``domain`` (fog has 2 batches per stream: the 3rd is the first of tent's stream)."""

    def __init__(self, domain: str | None = None, nth: int = 3) -> None:
        self.domain, self.nth, self.batches = domain, nth, list[str]()

    def __call__(self, item: StreamItem, logits: object) -> None:
        self.batches.append(item.domain.corruption)
        if self.batches.count(str(self.domain)) == self.nth:
            raise KeyboardInterrupt


def _run(spec: BenchSpec, path: Path, hook: _Interrupt, states: bool = True) -> None:
    with ResultsStore(path) as store:
        run_bench(spec, store, on_batch=hook, stream_states=states_folder(path) if states else None)


@pytest.fixture
def uninterrupted(fmnist_dir: Path, checkpoint: Path, tmp_path: Path) -> Rows:
    path = tmp_path / "whole.sqlite"
    _run(_spec(fmnist_dir, checkpoint), path, _Interrupt())
    assert not states_folder(path).exists()  # the states of finished streams are deleted
    return stored_rows(path)


def test_interrupted_stream_resumes_after_its_last_stored_domain_with_equal_cells(fmnist_dir, checkpoint, tmp_path,  # type: ignore[no-untyped-def]
                                                                                  uninterrupted) -> None:
    path = tmp_path / "r.sqlite"
    with pytest.raises(KeyboardInterrupt):
        _run(_spec(fmnist_dir, checkpoint), path, _Interrupt("fog"))  # in tent's stream, at its first fog batch
    assert len(stored_rows(path)) == 3 + 2  # norm's stream, tent's noise and contrast
    assert len(list(states_folder(path).iterdir())) == 1  # only the state after the last stored domain is kept
    resumed = _Interrupt()
    _run(_spec(fmnist_dir, checkpoint), path, resumed)
    assert resumed.batches == ["fog", "fog"]  # tent went on at fog, from its saved state
    assert stored_rows(path) == uninterrupted  # errors, ECE, NLL and counts exactly equal
    assert not states_folder(path).exists()


def test_stream_without_its_state_file_is_recomputed_whole(fmnist_dir, checkpoint, tmp_path, uninterrupted) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "r.sqlite"
    with pytest.raises(KeyboardInterrupt):
        _run(_spec(fmnist_dir, checkpoint), path, _Interrupt("fog"))
    for state in states_folder(path).iterdir():
        state.unlink()  # e.g. a Ray worker wrote it on another node
    again = _Interrupt()
    _run(_spec(fmnist_dir, checkpoint), path, again)
    assert len(again.batches) == 6  # tent's stream from its start
    assert stored_rows(path) == uninterrupted


def test_protocol_that_resets_each_domain_resumes_without_a_state(fmnist_dir, checkpoint, tmp_path) -> None:  # type: ignore[no-untyped-def]
    whole, path = tmp_path / "whole.sqlite", tmp_path / "r.sqlite"
    _run(_spec(fmnist_dir, checkpoint, "class-sorted"), whole, _Interrupt())
    with pytest.raises(KeyboardInterrupt):
        _run(_spec(fmnist_dir, checkpoint, "class-sorted"), path, _Interrupt("fog"))
    assert not states_folder(path).exists()  # nothing carries over a domain boundary: no state saved
    resumed = _Interrupt()
    _run(_spec(fmnist_dir, checkpoint, "class-sorted"), path, resumed)
    assert resumed.batches == ["fog", "fog"]
    assert stored_rows(path) == stored_rows(whole)


@pytest.mark.parametrize("states", [True, False])
def test_retried_stream_goes_on_after_the_domains_it_stored(fmnist_dir, checkpoint, tmp_path, faults,  # type: ignore[no-untyped-def]
                                                            uninterrupted, states) -> None:
    """A stream that fails on entering fog is retried in the same run from the state saved after contrast."""
    arm_fault(faults, "tent", Domain("fog", 5), "raise", on_entry=True)
    path, hook, units = tmp_path / "r.sqlite", _Interrupt(), list[WorkUnit]()
    with ResultsStore(path) as store:
        run_bench(_spec(fmnist_dir, checkpoint), store, executor=LocalExecutor(max_retries=1), on_batch=hook,
                  stream_states=states_folder(path) if states else None,
                  on_unit=lambda outcome, _: units.append(outcome.unit))
    assert list(faults.iterdir()) == []  # the fault fired
    tent = hook.batches[6:]  # norm's stream came first, whole
    if states:
        assert [u.start for u in units] == [0, 2] and tent == ["gaussian_noise"] * 2 + ["contrast"] * 2 + ["fog"] * 2
    else:  # no saved state: the retry runs tent's stream from its start
        assert [u.start for u in units] == [0, 0] and len(tent) == 4 + 6
    assert stored_rows(path) == uninterrupted
    assert not states_folder(path).exists()


def test_resume_point_needs_a_stored_prefix_and_its_state(tmp_path: Path) -> None:
    domains = tuple(Domain(c, 5) for c in CORRUPTIONS)
    unit = WorkUnit("tent", domains, checkpoints=(str(tmp_path / "a.pt"), str(tmp_path / "b.pt")))
    continual, episodic = get_protocol("continual"), get_protocol("class-sorted")
    assert resumable(unit, lambda i: i < 2, continual).start == 0  # no state file yet
    (tmp_path / "a.pt").touch()
    assert resumable(unit, lambda i: i < 2, continual).start == 1  # b.pt missing: resume after the first
    (tmp_path / "b.pt").touch()
    assert resumable(unit, lambda i: i < 2, continual).start == 2
    assert resumable(unit, lambda i: i in (0, 2), continual).start == 1  # a gap: only the prefix counts
    assert resumable(unit, lambda i: True, continual).start == 2  # the last domain always runs
    assert resumable(WorkUnit("tent", domains), lambda i: i < 2, episodic).start == 2  # resets: no state needed


def test_state_file_names_change_with_anything_that_changes_the_cells(fmnist_dir, checkpoint, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from eval.bench.driver import _key  # the keys the driver builds
    from eval.models.suites import open_suite

    suite = open_suite(SuiteSpec(data_root=fmnist_dir, checkpoint=checkpoint))
    base = _spec(fmnist_dir, checkpoint)
    variants = [base, BenchSpec(**{**base.__dict__, "seed": 1}), BenchSpec(**{**base.__dict__, "batch_size": 8}),
                BenchSpec(**{**base.__dict__, "corruptions": ("contrast", "gaussian_noise", "fog")})]
    names = [checkpoint_paths(tmp_path, [_key(s, suite, suite.model_name, "tent", d) for d in s.domains])
             for s in variants]
    assert all(len(n) == 2 for n in names)
    assert len({n[1] for n in names}) == len(variants)


def test_cli_keeps_stream_states_next_to_the_results(fmnist_dir, checkpoint, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import eval.bench.work

    results = tmp_path / "r.sqlite"
    args = ["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint), "--methods", "tent",
            "--corruptions", ",".join(CORRUPTIONS), "--batch-size", "16", "--limit", "32", "--protocol", "continual",
            "--results", str(results)]
    real = eval.bench.work.run_benchmark

    def interrupt_at_fog(runner, stream, **kwargs):  # type: ignore[no-untyped-def]
        def until_fog():  # type: ignore[no-untyped-def]
            for item in stream:
                if item.domain.corruption == "fog":
                    raise KeyboardInterrupt
                yield item
        return real(runner, until_fog(), **kwargs)

    monkeypatch.setattr(eval.bench.work, "run_benchmark", interrupt_at_fog)
    assert main(args) == 130
    assert len(list(states_folder(results).iterdir())) == 1
    monkeypatch.setattr(eval.bench.work, "run_benchmark", real)
    assert main(args) == 0 and not states_folder(results).exists() and len(stored_rows(results)) == 3
    other = tmp_path / "off.sqlite"
    monkeypatch.setattr(eval.bench.work, "run_benchmark", interrupt_at_fog)
    assert main([*args[:-1], str(other), "--no-stream-states"]) == 130 and not states_folder(other).exists()


class _AfterPlanning(LocalExecutor):
    """Runs ``meanwhile`` after the driver planned its units, before they start: another sweep on the same store."""

    def __init__(self, meanwhile: Callable[[], None]) -> None:
        super().__init__()
        self.meanwhile, self.planned, self.ran = meanwhile, list[WorkUnit](), list[WorkUnit]()

    def run(self, work: UnitWork, units: Sequence[WorkUnit], **kwargs: Any) -> list[UnitFailure]:
        self.planned = list(units)
        self.meanwhile()
        on_unit = kwargs.pop("on_unit")

        def record(outcome: UnitOutcome) -> None:
            self.ran.append(outcome.unit)
            on_unit(outcome)

        return super().run(work, units, on_unit=record, **kwargs)


def _tent_stream(fmnist_dir: Path, checkpoint: Path) -> BenchSpec:
    return BenchSpec(**{**_spec(fmnist_dir, checkpoint).__dict__, "methods": ("tent",)})


def _run_after(spec: BenchSpec, path: Path, meanwhile: Callable[[], None]) -> _AfterPlanning:
    executor = _AfterPlanning(meanwhile)
    with ResultsStore(path) as store:
        run_bench(spec, store, executor=executor, stream_states=states_folder(path))
    return executor


def test_stream_whose_planned_state_another_sweep_finished_and_deleted_runs_from_its_start(  # type: ignore[no-untyped-def]
        fmnist_dir, checkpoint, tmp_path, uninterrupted) -> None:
    """Sweep B plans to resume tent at fog; sweep A finishes the stream (deleting its states) before B's unit starts."""
    spec, path = _tent_stream(fmnist_dir, checkpoint), tmp_path / "r.sqlite"
    with pytest.raises(KeyboardInterrupt):
        _run(spec, path, _Interrupt("fog", nth=1))
    executor = _run_after(spec, path, lambda: _run(spec, path, _Interrupt()))
    assert [u.start for u in executor.planned] == [2] and [u.start for u in executor.ran] == [0]
    assert stored_rows(path) == {k: v for k, v in uninterrupted.items() if k[1] == "tent"}
    assert not states_folder(path).exists()


def test_stream_whose_planned_state_is_gone_resumes_from_the_longest_prefix_with_a_state(  # type: ignore[no-untyped-def]
        fmnist_dir, checkpoint, tmp_path, uninterrupted) -> None:
    """B plans to resume tent at fog; before it starts, the state after contrast is gone but the one after noise is there."""
    spec, path, kept = _tent_stream(fmnist_dir, checkpoint), tmp_path / "r.sqlite", tmp_path / "after-noise"
    with pytest.raises(KeyboardInterrupt):
        _run(spec, path, _Interrupt("contrast", nth=1))
    shutil.copytree(states_folder(path), kept)  # the state after noise
    with pytest.raises(KeyboardInterrupt):
        _run(spec, path, _Interrupt("fog", nth=1))  # contrast stored, the state after it replaces the one after noise

    def meanwhile() -> None:
        shutil.rmtree(states_folder(path))
        shutil.copytree(kept, states_folder(path))

    executor = _run_after(spec, path, meanwhile)
    assert [u.start for u in executor.planned] == [2] and [u.start for u in executor.ran] == [1]
    assert stored_rows(path) == {k: v for k, v in uninterrupted.items() if k[1] == "tent"}


def test_stream_whose_saved_state_is_damaged_is_recomputed_from_its_start(  # type: ignore[no-untyped-def]
        fmnist_dir, checkpoint, tmp_path, uninterrupted) -> None:
    """A flipped byte in the state after contrast: the rerun refuses it, deletes it and recomputes, equal cells."""
    spec, path = _tent_stream(fmnist_dir, checkpoint), tmp_path / "r.sqlite"
    with pytest.raises(KeyboardInterrupt):
        _run(spec, path, _Interrupt("fog", nth=1))
    (state,) = [p for p in states_folder(path).iterdir() if not p.name.startswith(".")]
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x10
    state.write_bytes(bytes(data))
    executor = _run_after(spec, path, lambda: None)
    assert [u.start for u in executor.planned] == [2] and [u.start for u in executor.ran] == [0]
    assert stored_rows(path) == {k: v for k, v in uninterrupted.items() if k[1] == "tent"}


def test_rerun_removes_the_temporary_state_files_of_killed_writers_only(fmnist_dir, checkpoint, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A writer killed mid-save leaves ``.<state>.<random>.tmp``; one written a moment ago may belong to a live sweep."""
    path = tmp_path / "r.sqlite"
    folder = states_folder(path)
    folder.mkdir()
    stale, live = folder / ".tent-0123.pt.k1ll3d.tmp", folder / ".tent-4567.pt.wr1t1n.tmp"
    stale.write_bytes(b"half a state")
    live.write_bytes(b"a state being written")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    _run(_tent_stream(fmnist_dir, checkpoint), path, _Interrupt())
    assert not stale.exists()
    assert live.exists()
