"""``tta bench`` never gives wrong numbers silently: flags, normalization, class folders, severity tables, models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval.bench.provenance import run_metadata
from eval.bench.spec import BenchSpec
from eval.cli import main
from eval.datasets import load_fashion_mnist
from eval.datasets.folder import ImageFolderDomain, check_folder_root
from eval.domains import Domain
from eval.models.architectures import ModelSpec, build_model
from eval.models.suites import SuiteSpec, open_suite
from eval.models.wide_resnet import WideResNet, wrn28_10
from eval.results.store import ResultsStore
from tests.helpers import tiny_rgb_classifier

FACTORY = "tests.helpers:tiny_rgb_classifier"


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.err.startswith("tta: error: ") and captured.err.count("\n") == 1, captured.err
    return captured.err


def _fmnist(fmnist_dir: Path, checkpoint: Path, results: Path, *extra: str) -> list[str]:
    return ["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint), "--results", str(results),
            "--methods", "source", "--corruptions", "gaussian_noise", "--batch-size", "16", *extra]


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.pth"
    torch.save(tiny_rgb_classifier(10).state_dict(), path)
    return path


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    root = tmp_path / "CIFAR-10-C"
    root.mkdir()
    rng = np.random.default_rng(0)
    np.save(root / "fog.npy", rng.integers(0, 256, (5 * 4, 8, 8, 3), dtype=np.uint8))
    np.save(root / "labels.npy", np.tile(rng.integers(0, 10, 4), 5))
    return root


# --- flags that do not apply to the chosen dataset ----------------------------------------------------------


@pytest.mark.parametrize("extra", [
    ["--model", "resnet18"], ["--weights", "r18.pth"], ["--mean", "0.5"], ["--std", "0.5"], ["--per-class", "5"],
    ["--preprocess", "none"], ["--workers", "2"], ["--subset-file", "ids.txt"], ["--classes", "wnids.txt"],
])
def test_fmnist_c_refuses_flags_it_does_not_use(fmnist_dir, checkpoint, tmp_path, capsys, extra) -> None:  # type: ignore[no-untyped-def]
    results = tmp_path / "r.sqlite"
    assert main(_fmnist(fmnist_dir, checkpoint, results, *extra)) == 2
    message = _one_line_error(capsys)
    assert f"{extra[0]} does not apply to --dataset fmnist-c" in message
    assert not results.exists()


@pytest.mark.parametrize("extra", [["--checkpoint", "m.pt"], ["--per-class", "5"], ["--severity-table", "cifar"],
                                   ["--preprocess", "none"]])
def test_cifar10_c_refuses_flags_it_does_not_use(cifar_root, weights, tmp_path, capsys, extra) -> None:  # type: ignore[no-untyped-def]
    results = tmp_path / "r.sqlite"
    assert main(["bench", "--dataset", "cifar10-c", "--data-root", str(cifar_root), "--model", FACTORY,
                 "--weights", str(weights), "--methods", "source", "--corruptions", "fog", "--results",
                 str(results), *extra]) == 2
    assert f"{extra[0]} does not apply to --dataset cifar10-c" in _one_line_error(capsys)
    assert not results.exists()


def test_provenance_records_only_the_settings_the_dataset_uses(tmp_path: Path) -> None:
    cifar = SuiteSpec(dataset="cifar10-c", data_root=tmp_path, arch=FACTORY, weights=tmp_path / "w.pth")
    suite = run_metadata(BenchSpec(methods=("source",), suite=cifar))["suite"]
    assert isinstance(suite, dict)
    assert {"checkpoint", "preprocess", "per_class", "subset_file", "classes", "severity_table"}.isdisjoint(suite)
    assert suite["arch"] == FACTORY and suite["mean"] == [0.0, 0.0, 0.0] and suite["std"] == [1.0, 1.0, 1.0]
    fmnist = run_metadata(BenchSpec(methods=("source",)))["suite"]
    assert isinstance(fmnist, dict)
    assert {"arch", "weights", "mean", "std", "preprocess", "per_class"}.isdisjoint(fmnist) and "checkpoint" in fmnist


# --- CIFAR normalization ---------------------------------------------------------------------------------------


def test_cifar_default_feeds_the_model_unnormalized_inputs_and_says_so(cifar_root, weights, tmp_path,  # type: ignore[no-untyped-def]
                                                                       capsys) -> None:
    spec = SuiteSpec(dataset="cifar10-c", data_root=cifar_root, arch=FACTORY, weights=weights)
    model = open_suite(spec).model
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(model(x), model.model(x))  # type: ignore[operator]  # RobustBench models take [0, 1]
    assert main(["bench", "--dataset", "cifar10-c", "--data-root", str(cifar_root), "--model", FACTORY,
                 "--weights", str(weights), "--methods", "source", "--corruptions", "fog", "--severities", "1",
                 "--results", str(tmp_path / "r.sqlite")]) == 0
    assert "normalization inside the model: mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)" in capsys.readouterr().err


# --- ImageNet-C class folders ------------------------------------------------------------------------------------


def _two_class_tree(root: Path, wnids: tuple[str, ...] = ("n02", "n05")) -> Path:
    for wnid in wnids:
        (root / "fog" / "5" / wnid).mkdir(parents=True)
        Image.new("RGB", (8, 8), (40, 80, 120)).save(root / "fog" / "5" / wnid / "0.JPEG")
    return root


def _class_list(path: Path, count: int) -> Path:
    path.write_text("".join(f"n{i:02d}\n" for i in range(count)))
    return path


def test_fewer_class_folders_than_model_classes_need_a_class_list(tmp_path: Path) -> None:
    root = _two_class_tree(tmp_path / "C")
    with pytest.raises(ValueError, match=r"2 class folders but the model has 10 classes.*--classes"):
        check_folder_root(root, [Domain("fog", 5)], num_classes=10)
    classes = _class_list(tmp_path / "wnids.txt", 10)
    check_folder_root(root, [Domain("fog", 5)], num_classes=10, classes=classes)
    domain = ImageFolderDomain(root, Domain("fog", 5), preprocess="none", classes=classes)
    assert [int(domain[i][1]) for i in range(2)] == [2, 5]  # the list's indices, not the sorted folder index


def test_class_folders_must_be_named_in_the_class_list(tmp_path: Path) -> None:
    root = _two_class_tree(tmp_path / "C", ("n02", "n99"))
    with pytest.raises(ValueError, match=r"n99.*not in .*wnids.txt"):
        check_folder_root(root, [Domain("fog", 5)], num_classes=10, classes=_class_list(tmp_path / "wnids.txt", 10))
    with pytest.raises(ValueError, match=r"wnids.txt.*3 class names.*model has 10"):
        check_folder_root(root, [Domain("fog", 5)], num_classes=10, classes=_class_list(tmp_path / "wnids.txt", 3))


def test_bench_refuses_a_two_class_folder_for_a_1000_class_model_unless_classes_are_given(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    root = _two_class_tree(tmp_path / "ImageNet-C")
    weights = tmp_path / "w.pth"
    torch.save(tiny_rgb_classifier(1000).state_dict(), weights)
    args = ["bench", "--dataset", "imagenet-c", "--data-root", str(root), "--model", FACTORY, "--weights",
            str(weights), "--methods", "source", "--corruptions", "fog", "--preprocess", "none",
            "--results", str(tmp_path / "r.sqlite")]
    assert main(args) == 2
    assert "--classes" in _one_line_error(capsys)
    assert main([*args, "--classes", str(_class_list(tmp_path / "wnids.txt", 1000))]) == 0
    with ResultsStore(tmp_path / "r.sqlite") as store:
        (record,) = store.records()
    assert record.n == 2


# --- severity tables -----------------------------------------------------------------------------------------------


def test_severity_table_choice_changes_the_images_and_the_dataset_id(fmnist_dir, checkpoint, tmp_path) -> None:  # type: ignore[no-untyped-def]
    results = tmp_path / "r.sqlite"
    assert main(_fmnist(fmnist_dir, checkpoint, results, "--corruptions", "gaussian_blur")) == 0
    assert main(_fmnist(fmnist_dir, checkpoint, results, "--corruptions", "gaussian_blur",
                        "--severity-table", "imagenet")) == 0
    with ResultsStore(results) as store:
        datasets = {r.key.dataset: r for r in store.records()}
    assert set(datasets) == {"fmnist-c/corruptions-v2", "fmnist-c/corruptions-v2/imagenet-table"}
    images, labels = load_fashion_mnist("test", fmnist_dir)
    suites = [open_suite(SuiteSpec(data_root=fmnist_dir, checkpoint=checkpoint, severity_table=table))
              for table in ("cifar", "imagenet")]
    batches = [s.loader(Domain("gaussian_blur", 5), batch_size=4, seed=0, limit=4, device="cpu") for s in suites]
    first = [next(iter(b))[0] for b in batches]
    assert not torch.equal(first[0], first[1]) and len(labels) == len(images)


# --- --model module:function and the shipped WideResNet-28-10 ----------------------------------------------------------


def test_model_factory_in_the_current_directory_is_found(tmp_path, monkeypatch, weights) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "my_first_hour_models.py").write_text(
        "from tests.helpers import tiny_rgb_classifier\n\n"
        "def net(num_classes):\n    return tiny_rgb_classifier(num_classes)\n\n"
        "def fixed():\n    return tiny_rgb_classifier(10)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path(__file__).parents[2]))  # tests.helpers stays importable
    build_model(ModelSpec("my_first_hour_models:net", weights, num_classes=10))
    with pytest.raises(ValueError, match=r"my_first_hour_models:fixed.*num_classes") as caught:
        build_model(ModelSpec("my_first_hour_models:fixed", weights, num_classes=10))
    assert "\n" not in str(caught.value)


def test_wrn28_10_loads_a_robustbench_state_dict(tmp_path: Path) -> None:
    with torch.device("meta"):  # the layout alone, without initializing 36M parameters
        layout = wrn28_10(num_classes=10)
    state = layout.state_dict()
    for key in ("conv1.weight", "block1.layer.0.convShortcut.weight", "block1.layer.3.bn2.running_var",
                "block3.layer.3.conv2.weight", "bn1.weight", "fc.weight", "fc.bias"):
        assert key in state
    assert len(state) == 155 and sum(p.numel() for p in layout.parameters()) == 36_479_194
    released = {f"module.{k}": torch.full(v.shape, 0.5, dtype=v.dtype) for k, v in state.items()}
    path = tmp_path / "Standard.pt"
    torch.save({"best_acc": 0.0, "state_dict": released}, path)  # RobustBench's checkpoint layout
    model = build_model(ModelSpec("wrn28_10", path, num_classes=10, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)))
    loaded = model.get_submodule("model").state_dict()
    assert all(bool((v == 0.5).all()) for v in loaded.values() if v.is_floating_point()) and len(loaded) == 155


def test_wide_resnet_forward_gives_logits() -> None:
    assert WideResNet(depth=10, widen_factor=1, num_classes=3)(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(depth=12)
