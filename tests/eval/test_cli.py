"""The ``tta`` command in-process: bench on a synthetic Fashion-MNIST folder, resume, interrupt, errors."""

from __future__ import annotations

from pathlib import Path


import eval.bench.work
from eval.cli import main
from eval.results.tables import Results
from eval.results.store import ResultsStore


def _bench_args(fmnist_dir: Path, checkpoint: Path, results: Path, *extra: str) -> list[str]:
    return ["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint), "--results", str(results),
            "--methods", "source,norm", "--corruptions", "gaussian_noise,contrast", "--batch-size", "16", *extra]


def test_bench_prints_table_and_stores_every_cell(fmnist_dir, checkpoint, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "table.json"
    assert main(_bench_args(fmnist_dir, checkpoint, tmp_path / "r.sqlite", "--out", str(out))) == 0
    table = capsys.readouterr().out
    assert "| source" in table and "| norm" in table and "gaussian_noise" in table and "mean" in table
    records = Results.from_json(out.read_text())
    assert len(records) == 4 and all(r.n == 48 for r in records)
    with ResultsStore(tmp_path / "r.sqlite") as store:
        assert len(store.records()) == 4


def test_rerun_resumes_without_recomputing(fmnist_dir, checkpoint, tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    args = _bench_args(fmnist_dir, checkpoint, tmp_path / "r.sqlite")
    assert main(args) == 0
    calls = []
    monkeypatch.setattr(eval.bench.work, "run_benchmark", lambda *a, **k: calls.append(1))
    assert main(args) == 0
    assert calls == []
    assert "resuming: 4 cell(s)" in capsys.readouterr().err


def test_interrupted_run_keeps_finished_cells_and_rerun_completes(fmnist_dir, checkpoint, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    args = _bench_args(fmnist_dir, checkpoint, tmp_path / "r.sqlite")
    real_run = eval.bench.work.run_benchmark
    units = []

    def interrupt_third(*a, **k):  # type: ignore[no-untyped-def]
        units.append(1)
        if len(units) == 3:
            raise KeyboardInterrupt
        return real_run(*a, **k)

    monkeypatch.setattr(eval.bench.work, "run_benchmark", interrupt_third)
    assert main(args) == 130
    with ResultsStore(tmp_path / "r.sqlite") as store:
        assert len(store.records()) == 2
    units.clear()
    monkeypatch.setattr(eval.bench.work, "run_benchmark", lambda *a, **k: (units.append(1), real_run(*a, **k))[1])
    assert main(args) == 0
    assert len(units) == 2
    with ResultsStore(tmp_path / "r.sqlite") as store:
        assert len(store.records()) == 4


def test_method_options_reach_the_method_and_are_checked(fmnist_dir, checkpoint, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    base = _bench_args(fmnist_dir, checkpoint, tmp_path / "r.sqlite")
    assert main([*base, "--option", "norm.stats=ema", "--option", "norm.momentum=0.2"]) == 0
    with ResultsStore(tmp_path / "r.sqlite") as store:
        options = {r.key.options for r in store.records(method="norm")}
    assert options == {'{"momentum":0.2,"stats":"ema"}'}
    assert main([*base, "--option", "norm.lr=1"]) == 2
    assert "norm has no option 'lr'" in capsys.readouterr().err


def test_missing_data_is_a_clear_error(checkpoint, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(_bench_args(tmp_path / "nowhere", checkpoint, tmp_path / "r.sqlite")) == 2
    err = capsys.readouterr().err
    assert "tta: error:" in err and "TTA_FASHION_MNIST" in err


def test_unknown_method_is_a_clear_error(fmnist_dir, checkpoint, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = _bench_args(fmnist_dir, checkpoint, tmp_path / "r.sqlite")
    args[args.index("source,norm")] = "source,tnet"
    assert main(args) == 2
    assert "unknown method" in capsys.readouterr().err


def test_list_names_methods_and_corruptions(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "tent" in out and "gaussian_noise" in out and "episodic" in out


def test_clean_domain_runs_once_at_severity_zero(fmnist_dir, checkpoint, tmp_path) -> None:  # type: ignore[no-untyped-def]
    args = _bench_args(fmnist_dir, checkpoint, tmp_path / "r.sqlite")
    args[args.index("gaussian_noise,contrast")] = "clean,contrast"
    assert main([*args, "--severities", "3,5"]) == 0
    with ResultsStore(tmp_path / "r.sqlite") as store:
        domains = sorted({str(r.key.domain) for r in store.records()})
    assert domains == ["clean", "contrast-3", "contrast-5"]


def test_dda_on_the_embedded_default_finds_the_shipped_diffusion_model(fmnist_dir, checkpoint, tmp_path) -> None:  # type: ignore[no-untyped-def]
    args = _bench_args(fmnist_dir, checkpoint, tmp_path / "r.sqlite")
    args[args.index("--methods") + 1] = "dda"
    args += ["--option", "dda.respacing=10", "--option", "dda.start_step=2", "--corruptions", "gaussian_noise"]
    assert main(args) == 0  # no --option dda.denoiser: the suite supplies eval/assets/fmnist_ddpm.pt
    with ResultsStore(tmp_path / "r.sqlite") as store:
        (record,) = store.records(method="dda")
    assert 0.0 <= record.error <= 1.0 and record.n > 0


def test_option_values_are_json_except_for_text_options() -> None:
    from eval.commands.options import parse_options

    parsed = parse_options(["tent.lr=1e-3", "tent.episodic=true", "lame.head=8", "lame.knn=3"],
                           ["tent", "lame"])
    assert parsed == {"tent": {"lr": 1e-3, "episodic": True}, "lame": {"head": "8", "knn": 3}}
    assert parse_options(["lame.head=null"], ["lame"]) == {"lame": {"head": None}}


def test_option_values_are_parsed_by_the_declared_type() -> None:
    from typing import Literal

    from eval.commands.options import parse_options, parse_value

    assert parse_value("8", str | None) == "8" and parse_value("null", str | None) is None
    assert parse_value("null", str) == "null"  # a str option that does not admit None keeps the text
    assert parse_value("rbf", Literal["knn", "rbf"]) == "rbf" and parse_value('"rbf"', Literal["knn", "rbf"]) == "rbf"
    assert parse_value("[0.9, 0.999]", tuple[float, float]) == (0.9, 0.999)
    assert parse_value("1e-3", float | None) == 1e-3 and parse_value("true", bool) is True
    parsed = parse_options(["tent.optimizer=sgd", "lame.affinity=\"rbf\"", "cotta.lr=null"], ["tent", "lame", "cotta"])
    assert parsed == {"tent": {"optimizer": "sgd"}, "lame": {"affinity": "rbf"}, "cotta": {"lr": None}}
