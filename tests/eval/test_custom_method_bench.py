"""``tta bench --methods module:Class`` runs a method defined outside the package with every executor."""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from eval.cli import main
from tests.eval.grid import stored_rows
from tests.tta.test_custom_methods import MODULE, importable_method_module

METHOD = f"{MODULE}:Scaled"
RAY = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")


@pytest.fixture
def outside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The example method's module in a folder on ``sys.path`` and ``PYTHONPATH`` (processes started later)."""
    folder = tmp_path / "outside"
    folder.mkdir()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    with importable_method_module(folder, monkeypatch):
        yield folder


@pytest.fixture
def private_ray(outside: Path) -> Iterator[None]:
    """A local Ray instance (2 CPUs, no dashboard) started after ``PYTHONPATH`` names the method's folder."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _bench(fmnist_dir: Path, checkpoint: Path, results: Path, executor: str, *extra: str) -> int:
    return main(["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint), "--results", str(results),
                 "--methods", f"source,{METHOD}", "--option", f"{METHOD}.scale=0.5", "--corruptions", "gaussian_noise",
                 "--batch-size", "16", "--limit", "32", "--executor", executor, *extra])


def _check_stored(results: Path) -> None:
    """The custom method's cell is stored under the name as given; halved logits keep every prediction."""
    rows = stored_rows(results)
    source, scaled = rows["episodic", "source", "gaussian_noise-5"], rows["episodic", METHOD, "gaussian_noise-5"]
    assert scaled[0] == source[0] and scaled[3] == source[3] == 32
    assert scaled[2] != source[2]  # the NLL sees the scaling: the custom method really ran


@pytest.mark.timeout(300)
@pytest.mark.parametrize("executor,extra", [("local", ()), ("processes", ("--jobs", "1"))], ids=["local", "processes"])
def test_bench_runs_a_method_outside_the_package(outside, fmnist_dir, checkpoint, tmp_path, executor,  # type: ignore[no-untyped-def]
                                                 extra) -> None:
    assert _bench(fmnist_dir, checkpoint, tmp_path / "r.sqlite", executor, *extra) == 0
    _check_stored(tmp_path / "r.sqlite")


@RAY
@pytest.mark.timeout(300)
def test_bench_runs_a_method_outside_the_package_on_ray(private_ray, fmnist_dir, checkpoint,  # type: ignore[no-untyped-def]
                                                        tmp_path) -> None:
    assert _bench(fmnist_dir, checkpoint, tmp_path / "r.sqlite", "ray", "--max-retries", "0") == 0
    _check_stored(tmp_path / "r.sqlite")


def test_unimportable_method_exits_2_naming_it(fmnist_dir, checkpoint, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = ["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint), "--results",
            str(tmp_path / "r.sqlite"), "--methods", "no_such_module_xyz:Method", "--limit", "16"]
    assert main(args) == 2
    assert "cannot import module 'no_such_module_xyz'" in capsys.readouterr().err
    assert not (tmp_path / "r.sqlite").exists()


def test_list_shows_entry_point_methods(outside, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import importlib.metadata

    point = importlib.metadata.EntryPoint("scaled_listed", METHOD, "tta.methods")
    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **params: importlib.metadata.EntryPoints([point]) if params.get("group") == "tta.methods"
                        else real(**params))
    assert main(["list"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "scaled_listed" in line)
    assert "scale=2.0" in line


def test_export_resolves_a_method_outside_the_package(outside, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """``tta export --method module:Class`` imports the method; its declaration (exports='none') then refuses it."""
    assert main(["export", "--method", "no_such_module_xyz:Method", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "cannot import module 'no_such_module_xyz'" in capsys.readouterr().err
    assert main(["export", "--method", f"{MODULE}:Scaled", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "unknown method" not in err and not (tmp_path / "m.onnx").exists()
