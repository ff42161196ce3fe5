"""Multi-seed runs and the paper protocols' settings: ``--seeds``, repeated ``--seed``, ``--dirichlet-delta``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from eval.bench.driver import run_seeds
from eval.bench.spec import BenchSpec, for_seeds
from eval.cli import main
from eval.models.suites import SuiteSpec
from eval.results.store import ResultsStore


def _spec(fmnist_dir: Path, checkpoint: Path, **fields: object) -> BenchSpec:
    spec = BenchSpec(methods=("source",), corruptions=("gaussian_noise",), batch_size=16, limit=16,
                     suite=SuiteSpec(data_root=fmnist_dir, checkpoint=checkpoint))
    return replace(spec, **fields)  # type: ignore[arg-type]


def _bench(fmnist_dir: Path, checkpoint: Path, results: Path, *extra: str) -> list[str]:
    return ["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint), "--results", str(results),
            "--methods", "source,norm", "--corruptions", "gaussian_noise", "--batch-size", "16", "--limit", "16",
            *extra]


def _stored(path: Path) -> list[tuple[str, str, int]]:
    with ResultsStore(path) as store:
        return sorted((r.key.method, r.key.protocol, r.key.seed) for r in store.records())


@pytest.mark.parametrize("flags", [("--seeds", "0,1,2"), ("--seed", "0", "--seed", "1", "--seed", "2")])
def test_bench_stores_every_seeds_cells(fmnist_dir, checkpoint, tmp_path, capsys, flags) -> None:  # type: ignore[no-untyped-def]
    assert main(_bench(fmnist_dir, checkpoint, tmp_path / "r.sqlite", *flags)) == 0
    assert _stored(tmp_path / "r.sqlite") == [(m, "episodic", s) for m in ("norm", "source") for s in (0, 1, 2)]


def test_bench_single_seed_flag_still_works(fmnist_dir, checkpoint, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert main(_bench(fmnist_dir, checkpoint, tmp_path / "r.sqlite", "--seed", "7")) == 0
    assert _stored(tmp_path / "r.sqlite") == [("norm", "episodic", 7), ("source", "episodic", 7)]


@pytest.mark.parametrize("extra, message", [
    (("--seeds", "0,1,0"), "seed(s) [0] given more than once"),
    (("--seeds", "0,x"), "--seeds expects integers"),
    (("--seeds", "-1"), "seed must be an integer in 0.."),
    (("--protocol", "episodic", "--dirichlet-delta", "0.5"), "takes no Dirichlet concentration"),
    (("--protocol", "dirichlet", "--dirichlet-delta", "0"), "--dirichlet-delta"),
])
def test_bench_rejects_bad_seeds_and_deltas(fmnist_dir, checkpoint, tmp_path, capsys, extra, message) -> None:  # type: ignore[no-untyped-def]
    assert main(_bench(fmnist_dir, checkpoint, tmp_path / "r.sqlite", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("tta: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "r.sqlite").exists()


def test_dirichlet_delta_is_part_of_the_recorded_protocol(fmnist_dir, checkpoint, tmp_path) -> None:  # type: ignore[no-untyped-def]
    results = tmp_path / "r.sqlite"
    for delta in ([], ["--dirichlet-delta", "0.1"], ["--dirichlet-delta", "0.01"]):
        assert main(_bench(fmnist_dir, checkpoint, results, "--protocol", "dirichlet", *delta)) == 0
    protocols = {p for _, p, _ in _stored(results)}
    assert protocols == {"dirichlet", "dirichlet:delta=0.01"}  # the default delta keeps the plain name


def test_spec_passes_the_delta_to_the_protocol() -> None:
    spec = BenchSpec(protocol="continual-dirichlet", dirichlet_delta=0.5, seed=3)
    assert spec.stream_protocol.concentration == 0.5  # type: ignore[attr-defined]
    assert spec.stream_protocol.seed == 3  # type: ignore[attr-defined]
    assert spec.protocol_label == "continual-dirichlet:delta=0.5"
    assert BenchSpec(protocol="dirichlet", dirichlet_delta=0.1).protocol_label == "dirichlet"
    assert BenchSpec(protocol="dirichlet", dirichlet_delta=0.5, online_cost=2.0).protocol_label == (
        "dirichlet:delta=0.5+online:2.0")


@pytest.mark.parametrize("delta", [0.0, -1.0, float("nan"), float("inf"), True])
def test_spec_rejects_bad_deltas(delta: float) -> None:
    with pytest.raises(ValueError, match="Dirichlet"):
        BenchSpec(protocol="dirichlet", dirichlet_delta=delta)


def test_for_seeds_returns_one_spec_per_seed_and_checks_them() -> None:
    spec = BenchSpec()
    assert [s.seed for s in for_seeds(spec, [2, 0])] == [2, 0]
    assert all(replace(s, seed=0) == spec for s in for_seeds(spec, [2, 0]))
    with pytest.raises(ValueError, match="no seeds"):
        for_seeds(spec, [])
    with pytest.raises(ValueError, match="more than once"):
        for_seeds(spec, [1, 1])


def test_run_seeds_returns_every_seeds_records(fmnist_dir, checkpoint, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with ResultsStore(tmp_path / "r.sqlite") as store:
        records = run_seeds(_spec(fmnist_dir, checkpoint), [0, 1], store)
        assert [r.key.seed for r in records] == [0, 1]
        assert len(store.records()) == 2
