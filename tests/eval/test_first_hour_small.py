"""First-hour behaviour of the CLI and loaders: help defaults, shipped assets, progress and end messages, quiet Ray,
closed pipes, the torchvision Fashion-MNIST layout, resume logging and ``tta export --model``."""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from eval.cli import build_parser, main
from eval.datasets.fashion_mnist import load_fashion_mnist, write_idx
from eval.models.source import DEFAULT_CHECKPOINT
from eval.training.diffusion import DEFAULT_DIFFUSION_CHECKPOINT


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_help_shows_its_defaults() -> None:
    for name, sub in _subparsers().items():
        text = "".join(sub.format_help().split())  # wrapped lines may break inside a path
        for action in sub._actions:
            unset = any(action.default is value for value in (None, False, argparse.SUPPRESS)) or action.default == []
            if not action.option_strings or unset:  # 0 is a default to show, unlike None and False
                continue
            shown = "".join(f"(default: {action.default})".split())
            assert shown in text, f"tta {name} --help: {action.option_strings[0]}"


@pytest.mark.parametrize(("command", "shipped"), [("train-source", DEFAULT_CHECKPOINT),
                                                  ("train-diffusion", DEFAULT_DIFFUSION_CHECKPOINT)])
def test_training_never_writes_the_shipped_asset_by_default(command: str, shipped: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = _subparsers()[command].get_default("out")
    assert Path(out).resolve() != shipped.resolve()
    before = shipped.read_bytes()
    assert main([command, "--out", str(shipped), "--data-root", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "--overwrite-shipped" in err and len(err.strip().splitlines()) == 1
    assert shipped.read_bytes() == before


def _bench(fmnist_dir: Path, checkpoint: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint), "--results",
            str(tmp_path / "r.sqlite"), "--methods", "norm", "--corruptions", "gaussian_noise", "--batch-size",
            "16", *extra]


def test_bench_names_the_method_draws_no_empty_bar_and_says_where_results_went(
        fmnist_dir: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "table.md"
    assert main(_bench(fmnist_dir, checkpoint, tmp_path, "--out", str(out))) == 0
    err = capsys.readouterr().err
    assert "0batch" not in err and "bench norm" in err
    assert str(tmp_path / "r.sqlite") in err and str(out) in err
    assert main(_bench(fmnist_dir, checkpoint, tmp_path)) == 0  # all stored: no bar at all
    err = capsys.readouterr().err
    assert "0batch" not in err and "batch/s" not in err and str(tmp_path / "r.sqlite") in err


def test_corrupt_says_how_many_files_it_wrote_and_skipped(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "images.npy"
    np.save(images, np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
    np.save(tmp_path / "labels.npy", np.arange(4))
    args = ["corrupt", "--input", str(images), "--out", str(tmp_path / "c"), "--corruptions",
            "gaussian_noise,contrast", "--severities", "5"]
    assert main(args) == 0
    assert "wrote 2 part(s) (corruption x severity), skipped 0 already complete" in capsys.readouterr().out
    (tmp_path / "c" / "contrast.npy").unlink()
    assert main([*args[:5], "--corruptions", "gaussian_noise,contrast,fog", "--severities", "5"]) == 0
    assert "wrote 2 part(s) (corruption x severity), skipped 1 already complete" in capsys.readouterr().out


def test_ray_is_started_without_its_own_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    from eval.bench.executors import WorkUnit
    from eval.bench.executors.ray_executor import RayExecutor

    seen: dict[str, Any] = {}

    def init(**kwargs: Any) -> None:
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(RuntimeError, match="stop here"):
        RayExecutor().run(lambda *a, **k: None, [WorkUnit("norm", ("clean",))],  # type: ignore[arg-type]
                          on_cell=lambda cell: None)
    assert seen["log_to_driver"] is False and seen["include_dashboard"] is False
    assert seen["logging_level"] >= logging.ERROR


class _ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_list_into_a_closed_pipe_ends_quietly(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdout", _ClosedPipe())
    assert main(["list"]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_fashion_mnist_loader_finds_torchvisions_layout(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "t10k-images-idx3-ubyte", torch.zeros(3, 28, 28, dtype=torch.uint8))
    write_idx(raw / "t10k-labels-idx1-ubyte", torch.tensor([1, 2, 3], dtype=torch.uint8))
    images, labels = load_fashion_mnist("test", tmp_path)
    assert images.shape == (3, 1, 28, 28) and labels.tolist() == [1, 2, 3]


def test_resume_on_a_first_start_logs_at_info(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import tta
    from tests.helpers import tiny_classifier

    with caplog.at_level(logging.DEBUG, logger="tta"):
        tta.wrap(tiny_classifier(), "tent", resume=str(tmp_path / "state.pt"))
    records = [r for r in caplog.records if "no checkpoint" in r.getMessage()]
    assert records and all(r.levelno == logging.INFO for r in records)


def test_export_takes_a_torchvision_model_with_weights_and_input_shape(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    from torchvision.models import resnet18

    weights = tmp_path / "r18.pt"
    torch.save(resnet18(num_classes=10).state_dict(), weights)
    out = tmp_path / "r18.onnx"
    assert main(["export", "--model", "resnet18", "--weights", str(weights), "--num-classes", "10",
                 "--input-shape", "3,32,32", "--batch-size", "2", "--exporter", "torchscript",
                 "--out", str(out)]) == 0
    assert out.is_file() and "max |onnxruntime - torch|" in capsys.readouterr().out


def test_export_of_a_foreign_checkpoint_is_a_short_error(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    foreign = tmp_path / "mine.pt"
    torch.save({f"layer{i}.weight": torch.zeros(1) for i in range(50)}, foreign)
    assert main(["export", "--checkpoint", str(foreign), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert len(err) < 300 and "--out" not in err and "--model" in err
