"""Tests for resuming an interrupted stream from the adapter state saved at its last stored domain."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.bench import BenchSpec, run_bench
from eval.cli import main
from eval.domains import Domain
from eval.executors import LocalExecutor, WorkUnit
from eval.executors.faults import arm_fault
from eval.protocols import get_protocol
from eval.results import ResultsStore
from eval.stream_checkpoints import checkpoint_paths, resumable, states_folder
from eval.streams import StreamItem
from eval.suites import SuiteSpec
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
    from eval.bench import _key  # the keys the driver builds
    from eval.suites import open_suite

    suite = open_suite(SuiteSpec(data_root=fmnist_dir, checkpoint=checkpoint))
    base = _spec(fmnist_dir, checkpoint)
    variants = [base, BenchSpec(**{**base.__dict__, "seed": 1}), BenchSpec(**{**base.__dict__, "batch_size": 8}),
                BenchSpec(**{**base.__dict__, "corruptions": ("contrast", "gaussian_noise", "fog")})]
    names = [checkpoint_paths(tmp_path, [_key(s, suite, suite.model_name, "tent", d) for d in s.domains])
             for s in variants]
    assert all(len(n) == 2 for n in names)
    assert len({n[1] for n in names}) == len(variants)


def test_cli_keeps_stream_states_next_to_the_results(fmnist_dir, checkpoint, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import eval.bench_work

    results = tmp_path / "r.sqlite"
    args = ["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint), "--methods", "tent",
            "--corruptions", ",".join(CORRUPTIONS), "--batch-size", "16", "--limit", "32", "--protocol", "continual",
            "--results", str(results)]
    real = eval.bench_work.run_benchmark

    def interrupt_at_fog(runner, stream, **kwargs):  # type: ignore[no-untyped-def]
        def until_fog():  # type: ignore[no-untyped-def]
            for item in stream:
                if item.domain.corruption == "fog":
                    raise KeyboardInterrupt
                yield item
        return real(runner, until_fog(), **kwargs)

    monkeypatch.setattr(eval.bench_work, "run_benchmark", interrupt_at_fog)
    assert main(args) == 130
    assert len(list(states_folder(results).iterdir())) == 1
    monkeypatch.setattr(eval.bench_work, "run_benchmark", real)
    assert main(args) == 0 and not states_folder(results).exists() and len(stored_rows(results)) == 3
    other = tmp_path / "off.sqlite"
    monkeypatch.setattr(eval.bench_work, "run_benchmark", interrupt_at_fog)
    assert main([*args[:-1], str(other), "--no-stream-states"]) == 130 and not states_folder(other).exists()
