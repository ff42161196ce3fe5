"""``tta dann`` in-process on a synthetic Fashion-MNIST folder: adapted checkpoint, bench on it, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eval.cli import main
from eval.models.source import load_source_model
from eval.results.tables import Results


@pytest.fixture
def target_folder(tmp_path: Path) -> Path:
    """Write 16 unlabeled colour PNGs of another size in a nested folder (read as grayscale, resized to 28x28)."""
    from PIL import Image

    folder = tmp_path / "target"
    (folder / "sub").mkdir(parents=True)
    g = torch.Generator().manual_seed(1)
    for i in range(16):
        Image.fromarray(torch.randint(0, 256, (20, 24, 3), generator=g, dtype=torch.uint8).numpy()).save(
            folder / "sub" / f"{i}.png"
        )
    return folder


def _dann_args(fmnist_dir: Path, checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return ["dann", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint), "--out", str(out),
            "--target", "gaussian_noise", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8",
            "--hidden", "16", "--target-limit", "16", *extra]


def test_dann_writes_a_checkpoint_that_bench_scores(fmnist_dir, checkpoint, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out, report = tmp_path / "adapted.pt", tmp_path / "report.json"
    assert main(_dann_args(fmnist_dir, checkpoint, out, "--report", str(report))) == 0
    table = capsys.readouterr().out
    assert "| no adaptation |" in table and "| dann |" in table and "gaussian_noise-5" in table
    model = load_source_model(out)
    assert not torch.equal(model.fc.weight, load_source_model(checkpoint).fc.weight)
    arms = json.loads(report.read_text())["arms"]
    assert [a["arm"] for a in arms] == ["dann"] and len(arms[0]["history"]) == 1
    scores = tmp_path / "bench.json"
    bench = ["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(out), "--methods", "source",
             "--corruptions", "gaussian_noise", "--results", str(tmp_path / "r.sqlite"), "--out", str(scores)]
    assert main(bench) == 0
    (record,) = Results.from_json(scores.read_text())
    assert record.error == arms[0]["target_error"] and record.n == 48


def test_dann_unknown_target_is_a_clear_error(fmnist_dir, checkpoint, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = _dann_args(fmnist_dir, checkpoint, tmp_path / "a.pt")
    args[args.index("gaussian_noise")] = "gausian_noise"
    assert main(args) == 2
    assert "neither a folder nor a corruption" in capsys.readouterr().err


def test_dann_compare_on_an_image_folder_trains_every_arm_without_scoring(fmnist_dir, checkpoint, target_folder, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = _dann_args(fmnist_dir, checkpoint, tmp_path / "a.pt", "--report", str(tmp_path / "r.json"), "--compare",
                      "--trainable", "norm")
    args[args.index("gaussian_noise")] = str(target_folder)
    assert main(args) == 0
    table = capsys.readouterr().out
    assert all(f"| {arm} |" in table for arm in ("source_only", "dann_lambda0", "dann")) and "no adaptation" not in table
    arms = json.loads((tmp_path / "r.json").read_text())["arms"]
    assert [a["target_error"] for a in arms] == [None, None, None]
    for name in ("a.pt", "a-source_only.pt", "a-dann_lambda0.pt"):
        assert load_source_model(tmp_path / name) is not None


def test_dann_interrupted_run_resumes_from_the_epoch_checkpoint(fmnist_dir, checkpoint, target_folder, tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import tta.da.fit

    out = tmp_path / "a.pt"
    args = _dann_args(fmnist_dir, checkpoint, out)
    args[args.index("--epochs") + 1] = "2"
    args[args.index("gaussian_noise")] = str(target_folder)  # no scoring: only training is under test
    real_epoch = tta.da.fit._run_epoch
    calls = []

    def interrupt_second_epoch(*a, **k):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*a, **k)

    monkeypatch.setattr(tta.da.fit, "_run_epoch", interrupt_second_epoch)
    assert main(args) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err and not out.exists()
    calls.clear()
    monkeypatch.setattr(tta.da.fit, "_run_epoch", lambda *a, **k: (calls.append(1), real_epoch(*a, **k))[1])
    assert main(args) == 0
    assert len(calls) == 1 and out.is_file()
