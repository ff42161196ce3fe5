"""``tta report`` and the report helpers: tables with mCE, plots written as PNG."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.cli import main
from eval.domains import Domain
from eval.results.report import markdown_report, mce_by_method
from eval.results.records import CellKey, Record
from eval.results.tables import Results
from eval.results.store import ResultsStore


def _record(method: str, corruption: str, error: float, dataset: str = "fmnist-c") -> Record:
    key = CellKey.build(method, {}, dataset=dataset, model="m", protocol="continual",
                        domain=Domain(corruption, 5), seed=0, batch_size=64)
    return Record(key, error, 0.1, 100, 1.0)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        for method, scale in (("source", 1.0), ("norm", 0.5)):
            store.put(_record(method, "fog", 0.945 * scale))
            store.put(_record(method, "spatter", 0.3 * scale))
    return path


def test_mce_uses_alexnet_normalizers_and_skips_holdout() -> None:
    results = Results(_record(method, corruption, error * scale, "imagenet-c/x") for method, scale in
                      (("source", 1.0), ("norm", 0.5)) for corruption, error in (("fog", 0.945), ("spatter", 0.3)))
    assert mce_by_method(results) == pytest.approx({"source": 1.0, "norm": 0.5})
    assert "| norm | 50.0 |" in markdown_report(results)


def test_report_command_prints_and_plots(store_path: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("matplotlib")
    bars, line = tmp_path / "bars.png", tmp_path / "line.png"
    args = ["report", "--results", str(store_path), "--plot", str(bars), "--plot-stream", str(line)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| source |" in out and "mCE is not shown" in out  # AlexNet normalizers mean nothing for fmnist-c
    for png in (bars, line):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["report", "--results", str(store_path), "--method", "norm", "--format", "csv"]) == 0
    assert "source" not in capsys.readouterr().out


def test_report_on_missing_store_is_clear(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["report", "--results", str(tmp_path / "none.sqlite")]) == 2
    assert "run `tta bench" in capsys.readouterr().err


def test_report_filter_matching_nothing_lists_the_stored_values(store_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["report", "--results", str(store_path), "--dataset", "fmnist", "--method", "norm"]) == 2
    err = capsys.readouterr().err
    assert "stored dataset values: fmnist-c" in err and "stored method values: norm, source" in err


def test_protocol_table_averages_each_protocols_cells(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("matplotlib")
    path = tmp_path / "p.sqlite"
    with ResultsStore(path) as store:
        for protocol, errors in (("episodic", (0.2, 0.4)), ("mixed-samples", (0.5, 0.7))):
            for corruption, error in zip(("fog", "snow"), errors):
                key = CellKey.build("norm", {}, dataset="d", model="m", protocol=protocol,
                                    domain=Domain(corruption, 5), seed=0, batch_size=64)
                store.put(Record(key, error, 0.1, 100, 1.0))
    png = tmp_path / "protocols.png"
    assert main(["report", "--results", str(path), "--by-protocol", "--plot-protocols", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| method | episodic (2 domains) | mixed-samples (2 domains) |" in out
    assert "| norm | 30.0 | 60.0 |" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_extra_is_one_error_line(store_path: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    assert main(["report", "--results", str(store_path), "--plot", str(tmp_path / "bars.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tta: error: plots need matplotlib") and "Traceback" not in err


def _keyed(method: str, corruption: str, error: float, *, protocol: str = "episodic", seed: int = 0) -> Record:
    key = CellKey.build(method, {}, dataset="imagenet-c/x", model="m", protocol=protocol,
                        domain=Domain(corruption, 5), seed=seed, batch_size=64)
    return Record(key, error, 0.1, 100, 1.0)


def test_mce_keeps_rows_that_differ_in_protocol_apart_and_pools_seeds() -> None:
    results = Results([_keyed("tent", "fog", 0.1), _keyed("tent", "fog", 0.9, protocol="continual"),
                       _keyed("norm", "fog", 0.1), _keyed("norm", "fog", 0.3, seed=1)])
    mce = mce_by_method(results)
    assert set(mce) == {"tent (protocol=episodic)", "tent (protocol=continual)", "norm (protocol=episodic)"}
    assert mce["norm (protocol=episodic)"] == pytest.approx(2 * mce["tent (protocol=episodic)"])  # mean of seeds
    assert mce["tent (protocol=continual)"] == pytest.approx(9 * mce["tent (protocol=episodic)"])
    report = markdown_report(results)
    assert "| tent (protocol=continual) |" in report.split("| method | mCE (%) |")[1]  # the mCE rows are the error table's rows


def test_protocol_table_pools_seeds_and_stars_partial_rows() -> None:
    from eval.results.report import protocol_table

    results = Results([_keyed("a", "fog", 0.1), _keyed("a", "contrast", 0.9), _keyed("b", "fog", 0.1),
                       _keyed("a", "fog", 0.5, seed=1), _keyed("a", "contrast", 0.5, seed=1)])
    table = protocol_table(results)
    assert "| a | 50.0 ± 0.0 |" in table
    assert "| b | 10.0* |" in table and "fewer domains" in table
