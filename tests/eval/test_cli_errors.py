"""The ``tta`` command rejects bad input before any work: one line on stderr, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eval.cli import main


def _bench(fmnist_dir: Path, checkpoint: Path, results: Path, *extra: str) -> list[str]:
    return ["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint), "--results", str(results),
            "--methods", "source", "--corruptions", "gaussian_noise", "--batch-size", "16", *extra]


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """Return the error line, checking it is the only thing on stderr and nothing was printed."""
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("tta: error: ") and captured.err.count("\n") == 1, captured.err
    return captured.err


@pytest.mark.parametrize(("extra", "message"), [
    (["--methods", ""], "no methods given"),
    (["--methods", ",,"], "no methods given"),
    (["--corruptions", ""], "no corruptions given"),
    (["--severities", ""], "no severities given"),
    (["--methods", "source,source"], "['source'] given more than once"),
    (["--corruptions", "fog,fog"], "['fog'] given more than once"),
    (["--severities", "5,5"], "[5] given more than once"),
    (["--severities", "7"], "severities must be integers in 1..5, got [7]"),
    (["--corruptions", "gaussian_nois"], "unknown corruption(s) ['gaussian_nois']"),
    (["--device", "bogus"], "unknown device 'bogus'"),
    (["--out", "t.xlsx"], "unsupported extension '.xlsx'"),
])
def test_bench_rejects_bad_grid_before_any_work(fmnist_dir, checkpoint, tmp_path, capsys, extra, message) -> None:  # type: ignore[no-untyped-def]
    results = tmp_path / "r.sqlite"
    assert main([*_bench(fmnist_dir, checkpoint, results), *extra]) == 2
    assert message in _one_line_error(capsys)
    assert not results.exists() and not (tmp_path / "t.xlsx").exists()


@pytest.mark.parametrize(("method", "option"), [
    ("tent", "lr=abc"), ("tent", "lr="), ("tent", "lr=nan"), ("tent", "lr=-1"), ("tent", "steps=0"),
    ("tent", "steps=1.5"), ("tent", "optimizer=rmsprop"), ("norm", "stats=bogus"), ("lame", "knn=2.5"),
])
def test_bench_rejects_bad_option_values_before_any_work(fmnist_dir, checkpoint, tmp_path, capsys, method,  # type: ignore[no-untyped-def]
                                                         option) -> None:
    results = tmp_path / "r.sqlite"
    args = _bench(fmnist_dir, checkpoint, results, "--option", f"{method}.{option}")
    args[args.index("--methods") + 1] = method
    assert main(args) == 2
    assert f"method {method!r} rejects its options" in _one_line_error(capsys)
    assert not results.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_bench_rejects_cuda_without_a_gpu(fmnist_dir, checkpoint, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(_bench(fmnist_dir, checkpoint, tmp_path / "r.sqlite", "--device", "cuda")) == 2
    assert "no cuda device" in _one_line_error(capsys)


def _truncated(checkpoint: Path, tmp_path: Path) -> Path:
    path = tmp_path / "truncated.pt"
    path.write_bytes(checkpoint.read_bytes()[:20000])
    return path


@pytest.mark.parametrize(("make", "message"), [
    (_truncated, "truncated or not a file written by torch.save"),
    (lambda _, tmp: (tmp / "text.pt", (tmp / "text.pt").write_text("not a checkpoint\n" * 20))[0], "not readable"),
    (lambda _, tmp: (tmp / "obj.pt", torch.save({"a": slice(1)}, tmp / "obj.pt"))[0], "without executing code"),
    (lambda _, tmp: (tmp / "folder.pt", (tmp / "folder.pt").mkdir())[0], "is a folder"),
])
def test_bench_and_export_reject_unreadable_checkpoints(fmnist_dir, checkpoint, tmp_path, capsys, make,  # type: ignore[no-untyped-def]
                                                        message) -> None:
    bad = make(checkpoint, tmp_path)
    assert main(_bench(fmnist_dir, bad, tmp_path / "r.sqlite")) == 2
    line = _one_line_error(capsys)
    assert message in line and str(bad) in line
    assert main(["export", "--method", "norm", "--checkpoint", str(bad), "--out", str(tmp_path / "x.onnx")]) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "r.sqlite").exists() and not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("flag", ["--results", "--out"])
def test_bench_rejects_output_under_a_file(fmnist_dir, checkpoint, tmp_path, capsys, flag) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "afile").write_text("")
    args = _bench(fmnist_dir, checkpoint, tmp_path / "r.sqlite")
    args += [flag, str(tmp_path / "afile" / "r.json")]
    assert main(args) == 2
    assert "afile is a file, not a folder" in _one_line_error(capsys)


def test_bench_store_error_is_on_its_own_line(fmnist_dir, checkpoint, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "notes.sqlite"
    store.write_text("not a database, but a long enough text file " * 4)
    assert main(_bench(fmnist_dir, checkpoint, store)) == 2
    assert "is not a results database" in _one_line_error(capsys)  # no progress bar before it


@pytest.mark.parametrize("flag", ["--plot", "--plot-stream", "--plot-protocols"])
def test_report_rejects_a_plot_path_under_a_file_before_printing(tmp_path, capsys, flag) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "afile").write_text("")
    assert main(["report", "--results", str(tmp_path / "r.sqlite"), flag, str(tmp_path / "afile" / "x.png")]) == 2
    assert "afile is a file, not a folder" in _one_line_error(capsys)
    assert main(["report", "--results", str(tmp_path / "r.sqlite"), flag, str(tmp_path / "x.txt")]) == 2
    assert "unsupported extension '.txt'" in _one_line_error(capsys)


@pytest.mark.parametrize(("extra", "message"), [
    (["--method", "tent", "--option", "lr=abc"], "method 'tent' rejects its options {'lr': 'abc'}"),
    (["--method", "tnet"], "unknown method 'tnet'"),
    (["--out", "afile/x.onnx"], "afile is a file, not a folder"),
])
def test_export_rejects_bad_input_before_any_work(checkpoint, tmp_path, capsys, monkeypatch, extra, message) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    assert main(["export", "--checkpoint", str(checkpoint), "--out", "x.onnx", *extra]) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "x.onnx").exists()
