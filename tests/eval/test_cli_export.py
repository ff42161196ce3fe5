"""``tta export`` and ``tta bench --runtime onnx`` in-process, on a tiny checkpoint and synthetic data."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.cli import main
from eval.results.tables import Results

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.onnx


def test_export_adaptive_writes_a_graph_with_ema_state(checkpoint: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "edge.onnx"
    args = ["export", "--checkpoint", str(checkpoint), "--mode", "adaptive", "--ema-momentum", "0.1",
            "--batch-size", "4", "--exporter", "torchscript", "--out", str(out)]
    assert main(args) == 0
    assert "adaptive graph (9 BatchNorm layers with in-graph statistics, 18 EMA state inputs)" in capsys.readouterr().out
    names = [i.name for i in ort.InferenceSession(str(out)).get_inputs()]
    assert names == ["input"]  # the state inputs are optional: they default to the exported statistics


def test_export_frozen_after_adapting_on_a_corruption(checkpoint: Path, fmnist_dir: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = ["export", "--checkpoint", str(checkpoint), "--method", "tent", "--adapt-on", "gaussian_noise-5",
            "--adapt-batches", "2", "--batch-size", "8", "--data-root", str(fmnist_dir), "--lame-head", "fc",
            "--exporter", "torchscript", "--out", str(tmp_path / "tent.onnx")]
    assert main(args) == 0
    assert "frozen graph (current statistics and affine parameters fixed), then LAME" in capsys.readouterr().out
    assert (tmp_path / "tent.onnx").stat().st_size > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "tent", "--mode", "adaptive"], "mode='frozen'"),
        (["--mode", "adaptive", "--adapt-on", "gaussian_noise-5"], "adapts on the device"),
        (["--adapt-on", "noise"], "CORRUPTION-SEVERITY"),
    ],
)
def test_export_errors_are_clear(checkpoint: Path, tmp_path: Path, capsys, extra: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_bench_onnx_runtime_matches_torch(checkpoint: Path, fmnist_dir: Path, tmp_path: Path) -> None:
    def bench(runtime: str) -> dict[str, float]:
        out = tmp_path / f"{runtime}.json"
        args = ["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint), "--results",
                str(tmp_path / "r.sqlite"), "--methods", "source,norm", "--corruptions", "contrast",
                "--batch-size", "16", "--runtime", runtime, "--out", str(out)]
        assert main(args) == 0
        return {r.key.method: r.error for r in Results.from_json(out.read_text())}

    torch_errors, onnx_errors = bench("torch"), bench("onnx")
    assert torch_errors.keys() == onnx_errors.keys() == {"source", "norm"}
    assert all(abs(torch_errors[m] - onnx_errors[m]) <= 1 / 32 for m in torch_errors)


def test_bench_onnx_runtime_refuses_gradient_methods(checkpoint: Path, fmnist_dir: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = ["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint), "--results",
            str(tmp_path / "r.sqlite"), "--methods", "tent", "--runtime", "onnx"]
    assert main(args) == 2
    assert "tta export --mode frozen" in capsys.readouterr().err
