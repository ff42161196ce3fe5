"""The benchmark's checks before any work: the spec's grid and device, and each method's options on the suite's model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eval.bench.spec import BenchSpec, check_device_available
from eval.bench.driver import check_methods, open_bench
from eval.models.suites import SuiteSpec, open_suite


def _spec(fmnist_dir: Path, checkpoint: Path, **kwargs: object) -> BenchSpec:
    return BenchSpec(**{"methods": ("source", "norm", "tent", "lame", "cotta"), "corruptions": ("gaussian_noise",),
                        "suite": SuiteSpec(data_root=fmnist_dir, checkpoint=checkpoint), **kwargs})  # type: ignore[arg-type]


def test_check_methods_leaves_the_model_and_random_state_untouched(fmnist_dir: Path, checkpoint: Path) -> None:
    spec = _spec(fmnist_dir, checkpoint)
    suite = open_suite(spec.suite)
    before = {k: v.clone() for k, v in suite.model.state_dict().items()}
    rng = torch.get_rng_state()
    check_methods(spec, suite)
    after = suite.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(torch.get_rng_state(), rng)
    assert not suite.model.training and all(p.grad is None for p in suite.model.parameters())


def test_open_bench_names_the_method_and_its_rejected_options(fmnist_dir: Path, checkpoint: Path) -> None:
    spec = _spec(fmnist_dir, checkpoint, methods=("source", "tent"), options={"tent": {"steps": 0}})
    with pytest.raises(ValueError, match=r"method 'tent' rejects its options \{'steps': 0\}"):
        open_bench(spec)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("methods", (), "no methods given"),
    ("methods", ("norm", "source", "norm"), r"\['norm'\] given more than once"),
    ("corruptions", ("fog", "fgo"), r"unknown corruption\(s\) \['fgo'\]"),
    ("severities", (0, 5), r"severities must be integers in 1..5, got \[0\]"),
    ("device", "cuda:x", "unknown device 'cuda:x'"),
])
def test_bench_spec_rejects_bad_grids(fmnist_dir: Path, checkpoint: Path, field: str, value: object,
                                      message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _spec(fmnist_dir, checkpoint, **{field: value})


def test_on_disk_suites_leave_corruption_names_to_the_file_check(tmp_path: Path) -> None:
    suite = SuiteSpec(dataset="cifar10-c", data_root=tmp_path, arch="resnet18", weights=tmp_path / "w.pt")
    assert BenchSpec(corruptions=("my_own_corruption",), suite=suite).corruptions == ("my_own_corruption",)


def test_check_device_available_accepts_cpu_and_auto() -> None:
    check_device_available("cpu")
    check_device_available("auto")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no cuda device"):
            check_device_available("cuda:1")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_run_bench_refuses_a_missing_device_before_writing(fmnist_dir: Path, checkpoint: Path, tmp_path: Path) -> None:
    from eval.bench.driver import run_bench
    from eval.results.store import ResultsStore

    spec = BenchSpec(methods=("source",), corruptions=("fog",), limit=16, device="cuda",
                     suite=SuiteSpec(data_root=fmnist_dir, checkpoint=checkpoint))
    with ResultsStore(tmp_path / "r.sqlite") as store, pytest.raises(ValueError, match="no cuda device"):
        run_bench(spec, store)
    with ResultsStore(tmp_path / "r.sqlite") as store:
        assert store.records() == []
