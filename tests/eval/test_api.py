"""The Python benchmark API: eval.api.run stores and returns a grid's cells; to_dataframe turns them into a table."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

import eval.bench.work
from eval.api import run, to_dataframe
from eval.bench.driver import IncompleteBench
from eval.bench.runner import run_benchmark
from eval.results.records import COLUMNS, Record
from eval.results.store import ResultsStore


def _grid(fmnist_dir: Path, checkpoint: Path, **settings: object) -> dict[str, object]:
    return {"methods": ["source", "norm"], "corruptions": ["gaussian_noise"], "limit": 16, "batch_size": 16,
            "data_root": str(fmnist_dir), "checkpoint": checkpoint, **settings}


def test_run_returns_every_cell_as_records_and_stores_them(fmnist_dir, checkpoint, tmp_path) -> None:  # type: ignore[no-untyped-def]
    results = tmp_path / "r.sqlite"
    records = run(**_grid(fmnist_dir, checkpoint, seeds=[0, 1], results=str(results)))  # type: ignore[arg-type]
    assert all(isinstance(r, Record) for r in records)
    assert sorted((r.key.method, r.key.seed, r.n) for r in records) == [
        ("norm", 0, 16), ("norm", 1, 16), ("source", 0, 16), ("source", 1, 16)]
    with ResultsStore(results) as store:
        assert sorted(store.records(), key=str) == sorted(records, key=str)


def test_run_resumes_from_its_store_like_the_cli(fmnist_dir, checkpoint, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    grid = _grid(fmnist_dir, checkpoint, results=tmp_path / "r.sqlite")
    first = run(**grid)  # type: ignore[arg-type]
    monkeypatch.setattr(eval.bench.work, "run_benchmark", lambda *a, **k: pytest.fail("recomputed a stored cell"))
    assert run(**grid) == first  # type: ignore[arg-type]


def test_run_without_a_store_still_returns_the_cells(fmnist_dir, checkpoint) -> None:  # type: ignore[no-untyped-def]
    records = run(**_grid(fmnist_dir, checkpoint, protocol="continual-dirichlet", dirichlet_delta=0.5))  # type: ignore[arg-type]
    assert {r.key.protocol for r in records} == {"continual-dirichlet:delta=0.5"} and len(records) == 2


def test_run_passes_method_options(fmnist_dir, checkpoint, tmp_path) -> None:  # type: ignore[no-untyped-def]
    records = run(**_grid(fmnist_dir, checkpoint, methods=["tent"], options={"tent": {"lr": 0.01}}))  # type: ignore[arg-type]
    assert [r.key.options for r in records] == ['{"lr":0.01}']


@pytest.mark.parametrize("settings, error, message", [
    ({"methods": ["nope"]}, ValueError, "unknown method(s) ['nope']"),
    ({"seeds": [0, 0]}, ValueError, "given more than once"),
    ({"options": {"tent": {"lr": 0.01}}}, ValueError, "options for 'tent'"),
    ({"options": {"norm": {"nope": 1}}}, ValueError, "rejects its options"),
    ({"data_root": "/no/such/folder"}, FileNotFoundError, "/no/such/folder"),
    ({"bogus": 1}, TypeError, "unknown setting(s) ['bogus']"),
])
def test_run_raises_python_exceptions_before_any_work(fmnist_dir, checkpoint, tmp_path, settings, error,  # type: ignore[no-untyped-def]
                                                      message) -> None:
    with pytest.raises(error) as raised:
        run(**{**_grid(fmnist_dir, checkpoint, results=tmp_path / "r.sqlite"), **settings})
    assert message in str(raised.value)
    assert not (tmp_path / "r.sqlite").exists()


def test_run_raises_incomplete_bench_with_the_stored_cells(fmnist_dir, checkpoint, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real = run_benchmark

    def fail_norm(adapter, *a, **k):  # type: ignore[no-untyped-def]
        if "Norm" in type(adapter).__name__:
            raise RuntimeError("boom")
        return real(adapter, *a, **k)

    monkeypatch.setattr(eval.bench.work, "run_benchmark", fail_norm)
    with pytest.raises(IncompleteBench) as raised:
        run(**_grid(fmnist_dir, checkpoint, results=tmp_path / "r.sqlite"))  # type: ignore[arg-type]
    assert [r.key.method for r in raised.value.results] == ["source"]


def test_to_dataframe_gives_one_row_per_record(monkeypatch: pytest.MonkeyPatch, fmnist_dir, checkpoint) -> None:  # type: ignore[no-untyped-def]
    fake = types.ModuleType("pandas")
    fake.DataFrame = lambda rows, columns: (rows, columns)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pandas", fake)
    records = run(**_grid(fmnist_dir, checkpoint))  # type: ignore[arg-type]
    rows, columns = to_dataframe(records)
    assert columns == list(COLUMNS)
    assert [(row["method"], row["error"]) for row in rows] == [(r.key.method, r.error) for r in records]


def test_to_dataframe_without_pandas_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        to_dataframe([])
