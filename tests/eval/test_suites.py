"""``tta bench`` on tiny on-disk replicas of the CIFAR-C and ImageNet-C layouts, and the online protocol."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from eval.cli import main
from eval.models.suites import Suite, SuiteSpec
from eval.results.store import ResultsStore
from eval.training.diffusion import DEFAULT_DIFFUSION_CHECKPOINT
from tests.helpers import registered, tiny_rgb_classifier
from tta.base import Changes, Exports, Need, TTAMethod

FACTORY = "tests.helpers:tiny_rgb_classifier"


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    root = tmp_path / "CIFAR-10-C"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("fog", "contrast"):
        np.save(root / f"{name}.npy", rng.integers(0, 256, (5 * 12, 8, 8, 3), dtype=np.uint8))
    np.save(root / "labels.npy", np.tile(rng.integers(0, 10, 12), 5))
    return root


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.pth"
    torch.save(tiny_rgb_classifier(10).state_dict(), path)
    return path


def test_bench_on_cifar_c_layout(cifar_root: Path, weights: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = ["bench", "--dataset", "cifar10-c", "--data-root", str(cifar_root), "--model", FACTORY,
            "--weights", str(weights), "--methods", "source,norm", "--corruptions", "fog,contrast",
            "--severities", "2,5", "--batch-size", "5", "--results", str(tmp_path / "r.sqlite")]
    assert main(args) == 0
    assert "fog-2" in capsys.readouterr().out
    with ResultsStore(tmp_path / "r.sqlite") as store:
        records = store.records(dataset="cifar10-c")
    assert len(records) == 8 and all(r.n == 12 for r in records)
    assert all(r.key.model.startswith(f"{FACTORY}:tiny.pth@") for r in records)


def _imagenet_c_replica(tmp_path: Path, weights: Path, *, side: int, per_class: int) -> Path:
    """Write fog-5 of a two-class ImageNet-C replica, a 1000-class tiny model's weights and its class list
    ``wnids.txt`` next to the root (two folders for a 1000-class model need one); return the root."""
    root = tmp_path / "ImageNet-C"
    (tmp_path / "wnids.txt").write_text("".join(f"n{i:02d}\n" for i in range(1, 1001)))
    for wnid in ("n01", "n02"):
        (root / "fog" / "5" / wnid).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (side, side), (40 * i, 80, 120)).save(root / "fog" / "5" / wnid / f"{i}.JPEG")
    torch.save(tiny_rgb_classifier(1000).state_dict(), weights)
    return root


def test_bench_on_imagenet_c_layout_with_subset(weights: Path, tmp_path: Path) -> None:
    root = _imagenet_c_replica(tmp_path, weights, side=16, per_class=3)
    args = ["bench", "--dataset", "imagenet-c", "--data-root", str(root), "--model", FACTORY, "--weights",
            str(weights), "--methods", "source", "--corruptions", "fog", "--preprocess", "none", "--per-class", "2",
            "--classes", str(tmp_path / "wnids.txt"),
            "--batch-size", "4", "--results", str(tmp_path / "r.sqlite")]
    assert main(args) == 0
    with ResultsStore(tmp_path / "r.sqlite") as store:
        (record,) = store.records()
    assert record.n == 4 and record.key.dataset == "imagenet-c/none/2perclass"


def test_missing_domains_fail_before_any_work(cifar_root: Path, weights: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = ["bench", "--dataset", "cifar10-c", "--data-root", str(cifar_root), "--model", FACTORY,
            "--weights", str(weights), "--corruptions", "fog,snow,frost", "--results", str(tmp_path / "r.sqlite")]
    assert main(args) == 2
    assert "frost.npy" in capsys.readouterr().err
    with ResultsStore(tmp_path / "r.sqlite") as store:
        assert store.records() == []


def test_on_disk_dataset_needs_model_and_weights(cifar_root: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["bench", "--dataset", "cifar10-c", "--data-root", str(cifar_root),
                 "--results", str(tmp_path / "r.sqlite")]) == 2
    assert "--weights" in capsys.readouterr().err


def test_online_protocol_is_recorded_apart(cifar_root: Path, weights: Path, tmp_path: Path) -> None:
    base = ["bench", "--dataset", "cifar10-c", "--data-root", str(cifar_root), "--model", FACTORY,
            "--weights", str(weights), "--methods", "tent", "--corruptions", "fog", "--batch-size", "4",
            "--results", str(tmp_path / "r.sqlite")]
    assert main(base) == 0 and main([*base, "--online-cost", "3"]) == 0
    with ResultsStore(tmp_path / "r.sqlite") as store:
        protocols = sorted(r.key.protocol for r in store.records())
    assert protocols == ["episodic", "episodic+online:3.0"]


def _write_clean_cifar(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump(entry, handle)


def test_clean_cifar_split_beside_cifar_c_is_the_clean_domain(cifar_root: Path, weights: Path, tmp_path: Path) -> None:
    _write_clean_cifar(cifar_root.parent / "cifar-10-batches-py", 7)
    args = ["bench", "--dataset", "cifar10-c", "--data-root", str(cifar_root), "--model", FACTORY,
            "--weights", str(weights), "--methods", "source", "--corruptions", "clean,fog", "--batch-size", "4",
            "--results", str(tmp_path / "r.sqlite")]
    assert main(args) == 0
    with ResultsStore(tmp_path / "r.sqlite") as store:
        (clean,) = store.records(corruption="clean")
    assert clean.n == 7 and clean.key.severity == 0


def test_missing_clean_cifar_names_where_it_was_looked_for(cifar_root: Path, weights: Path, tmp_path: Path,
                                                           capsys) -> None:  # type: ignore[no-untyped-def]
    args = ["bench", "--dataset", "cifar10-c", "--data-root", str(cifar_root), "--model", FACTORY,
            "--weights", str(weights), "--corruptions", "clean,fog", "--results", str(tmp_path / "r.sqlite")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(cifar_root / "cifar-10-batches-py" / "test_batch") in err
    assert str(cifar_root.parent / "cifar-10-batches-py" / "test_batch") in err


def test_truncated_clean_cifar_is_a_clear_error(tmp_path: Path) -> None:
    from eval.datasets.cifar_clean import CifarCleanTest

    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]})[:40])
    with pytest.raises(ValueError, match="not a complete CIFAR python test split"):
        CifarCleanTest(path, "cifar10-c")


def test_dda_on_imagenet_c_layout_with_a_saved_adm_checkpoint(weights: Path, tmp_path: Path) -> None:
    from tta.projection.adm_config import ADMConfig
    from tta.projection.adm import ADMUNet, save_adm

    root = _imagenet_c_replica(tmp_path, weights, side=24, per_class=2)
    config = ADMConfig(image_size=32, model_channels=32, channel_mult=(1, 2), attention_resolutions=(16,),
                       num_head_channels=8)
    save_adm(ADMUNet(config), tmp_path / "adm.pt")
    args = ["bench", "--dataset", "imagenet-c", "--data-root", str(root), "--model", FACTORY, "--weights",
            str(weights), "--methods", "dda", "--corruptions", "fog", "--preprocess", "none", "--batch-size", "4",
            "--classes", str(tmp_path / "wnids.txt"),
            "--option", f"dda.denoiser={tmp_path / 'adm.pt'}", "--option", "dda.resize=true",
            "--option", "dda.respacing=10", "--option", "dda.start_step=2", "--results", str(tmp_path / "r.sqlite")]
    assert main(args) == 0  # 24-px images projected by a 32-px model and back
    with ResultsStore(tmp_path / "r.sqlite") as store:
        (record,) = store.records(method="dda")
    assert record.n == 4


def test_missing_corruption_files_and_clean_split_are_listed_together(cifar_root: Path, weights: Path,
                                                                     tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = ["bench", "--dataset", "cifar10-c", "--data-root", str(cifar_root), "--model", FACTORY,
            "--weights", str(weights), "--corruptions", "clean,fog,snow", "--results", str(tmp_path / "r.sqlite")]
    (cifar_root / "fog.npy").unlink()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(cifar_root / "fog.npy") in err and str(cifar_root / "cifar-10-batches-py" / "test_batch") in err


class _Needing(TTAMethod):
    """A test-only method taking every need as an option; subclasses declare which they need."""

    changes: ClassVar[Changes] = "nothing"
    exports: ClassVar[Exports] = "none"

    def adapt_step(self, x: Tensor) -> Tensor:
        logits: Tensor = self.model(x)
        return logits

    @classmethod
    def from_model(cls, model: nn.Module, *, denoiser: object = None, source_data: object = None) -> _Needing:
        return cls(model)


def _needing(need: Need) -> type[TTAMethod]:
    return type(f"Needs_{need}", (_Needing,), {"needs": frozenset({need})})


def _suite(spec: SuiteSpec) -> Suite:
    return Suite(spec, "test", nn.Identity(), "identity")


def test_the_embedded_default_supplies_its_denoiser_to_any_method_that_needs_one(cifar_root: Path,
                                                                                 weights: Path) -> None:
    cifar = SuiteSpec(dataset="cifar10-c", data_root=cifar_root, arch=FACTORY, weights=weights)
    with registered("test_needs_denoiser", _needing("denoiser")) as name:
        assert _suite(SuiteSpec()).method_defaults(name) == {"denoiser": str(DEFAULT_DIFFUSION_CHECKPOINT)}
        assert _suite(cifar).method_defaults(name) == {}  # the method then asks for --option <method>.denoiser
    assert _suite(SuiteSpec()).method_defaults("dda") == {"denoiser": str(DEFAULT_DIFFUSION_CHECKPOINT)}
    assert _suite(SuiteSpec()).method_defaults("tent") == {} and _suite(cifar).method_defaults("dda") == {}


def test_a_suite_supplies_its_training_split_to_methods_that_need_source_data(fmnist_dir: Path) -> None:
    with registered("test_needs_source", _needing("source_data")) as name:
        defaults = _suite(SuiteSpec(data_root=fmnist_dir)).method_defaults(name)
    assert list(defaults) == ["source_data"]
    batches = list(defaults["source_data"])  # type: ignore[call-overload]
    assert sum(len(x) for x, _ in batches) == 64 and all(0 <= x.min() and x.max() <= 1 for x, _ in batches)
