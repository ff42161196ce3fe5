"""The suites' source (training) splits and ``tta bench --source-data``, on tiny files written by the tests."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from eval.cli import main
from eval.datasets.fashion_mnist import load_fashion_mnist, write_idx
from eval.datasets.source_split import SourceSplit, check_source_data, source_training_data
from eval.models.suites import SuiteSpec
from eval.results.store import ResultsStore
from tests.source_data_method import source_method_registered

ON_DISK = {"arch": "tests.helpers:tiny_rgb_classifier", "weights": Path("unused.pth")}


def _all(split: SourceSplit) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(split)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


# --- fmnist-c: the Fashion-MNIST training split -----------------------------------------------------------


def test_fmnist_source_is_the_training_split_in_unit_range_and_re_iterable(fmnist_dir: Path) -> None:
    split = source_training_data(SuiteSpec(data_root=fmnist_dir), batch_size=16)
    images, labels = load_fashion_mnist("train", fmnist_dir)
    for _ in range(2):
        x, y = _all(split)
        assert x.dtype == torch.float32 and x.shape == (64, 1, 28, 28)
        assert torch.equal(x, images.float() / 255) and torch.equal(y, labels)


def test_source_split_pickles_for_worker_processes(fmnist_dir: Path) -> None:
    split = source_training_data(SuiteSpec(data_root=fmnist_dir), limit=5)
    copied = pickle.loads(pickle.dumps(split))
    assert torch.equal(_all(copied)[0], _all(split)[0]) and "limit=5" in repr(copied)


def test_fmnist_source_limit_cuts_the_last_batch(fmnist_dir: Path) -> None:
    split = source_training_data(SuiteSpec(data_root=fmnist_dir), limit=10, batch_size=4)
    assert [len(x) for x, _ in split] == [4, 4, 2]


def test_fmnist_source_data_replaces_the_data_root(fmnist_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    write_idx(other / "train-images-idx3-ubyte", torch.full((3, 28, 28), 255, dtype=torch.uint8))
    write_idx(other / "train-labels-idx1-ubyte", torch.tensor([7, 8, 9], dtype=torch.uint8))
    x, y = _all(source_training_data(SuiteSpec(data_root=fmnist_dir, source_data=other)))
    assert torch.equal(x, torch.ones(3, 1, 28, 28)) and y.tolist() == [7, 8, 9]


def test_fmnist_without_the_training_split_names_the_files_and_the_flag(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"training split.*train-images-idx3-ubyte.*--source-data DIR"):
        check_source_data(SuiteSpec(data_root=tmp_path))


# --- cifar10-c / cifar100-c: the python release's training files ---------------------------------------


def _cifar_file(path: Path, first: int, count: int = 3, key: str = "labels") -> np.ndarray:
    """Write a CIFAR python file of ``count`` images whose pixels all equal ``first + i``; return its data."""
    data = np.repeat(np.arange(first, first + count, dtype=np.uint8)[:, None], 3072, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"data": data, key: [i % 10 for i in range(first, first + count)]}))
    return data


def _cifar10_release(folder: Path) -> Path:
    for i in range(1, 6):
        _cifar_file(folder / "cifar-10-batches-py" / f"data_batch_{i}", first=10 * i)
    return folder / "cifar-10-batches-py"


def _cifar_spec(root: Path, dataset: str = "cifar10-c", **kwargs: object) -> SuiteSpec:
    return SuiteSpec(dataset=dataset, data_root=root, **ON_DISK, **kwargs)  # type: ignore[arg-type]


def test_cifar10_source_reads_the_five_batches_in_order(tmp_path: Path) -> None:
    _cifar10_release(tmp_path / "CIFAR-10-C")
    x, y = _all(source_training_data(_cifar_spec(tmp_path / "CIFAR-10-C"), batch_size=2))
    firsts = [10 * i + k for i in range(1, 6) for k in range(3)]
    assert x.shape == (15, 3, 32, 32) and torch.equal(x[:, 0, 0, 0], torch.tensor(firsts) / 255)
    assert y.tolist() == [v % 10 for v in firsts]


def test_cifar_source_limit_reads_no_file_past_it(tmp_path: Path) -> None:
    release = _cifar10_release(tmp_path / "CIFAR-10-C")
    (release / "data_batch_3").write_bytes(b"not a pickle")
    split = source_training_data(_cifar_spec(tmp_path / "CIFAR-10-C"), limit=5, batch_size=2)
    assert [len(x) for x, _ in split] == [2, 1, 2]
    with pytest.raises(ValueError, match="data_batch_3"):
        list(source_training_data(_cifar_spec(tmp_path / "CIFAR-10-C")))


def test_cifar100_source_is_the_train_file_with_fine_labels(tmp_path: Path) -> None:
    _cifar_file(tmp_path / "CIFAR-100-C" / "cifar-100-python" / "train", first=90, count=4, key="fine_labels")
    x, y = _all(source_training_data(_cifar_spec(tmp_path / "CIFAR-100-C", "cifar100-c")))
    assert len(x) == 4 and y.tolist() == [0, 1, 2, 3]


def test_cifar_source_beside_the_data_root_is_announced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    release = _cifar10_release(tmp_path / "data")
    (tmp_path / "data" / "CIFAR-10-C").mkdir()
    with caplog.at_level(logging.WARNING, logger="eval.datasets"):
        assert len(_all(source_training_data(_cifar_spec(tmp_path / "data" / "CIFAR-10-C")))[0]) == 15
    assert str(release) in caplog.text and "outside --data-root" in caplog.text


@pytest.mark.parametrize("given", ["release", "holder"])
def test_cifar_source_data_is_the_release_folder_or_its_holder(tmp_path: Path, given: str) -> None:
    release = _cifar10_release(tmp_path / "elsewhere")
    (tmp_path / "CIFAR-10-C").mkdir()
    spec = _cifar_spec(tmp_path / "CIFAR-10-C", source_data=release if given == "release" else release.parent)
    assert len(_all(source_training_data(spec))[0]) == 15


def test_cifar_missing_training_files_are_named(tmp_path: Path) -> None:
    release = _cifar10_release(tmp_path / "CIFAR-10-C")
    (release / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing data_batch_4.*--source-data PATH"):
        check_source_data(_cifar_spec(tmp_path / "CIFAR-10-C"))
    with pytest.raises(FileNotFoundError, match=r"--source-data .*nowhere: neither the cifar-10-batches-py/"):
        check_source_data(_cifar_spec(tmp_path / "CIFAR-10-C", source_data=tmp_path / "nowhere"))


def test_cifar_source_data_is_read_without_running_code(tmp_path: Path) -> None:
    release = _cifar10_release(tmp_path / "CIFAR-10-C")
    marker = tmp_path / "ran"
    (release / "data_batch_1").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match="data_batch_1: refused to load it"):
        list(source_training_data(_cifar_spec(tmp_path / "CIFAR-10-C")))
    assert not marker.exists()


class _Payload:
    """Pickles as a call that would create ``marker``: a crafted data file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


# --- imagenet-c: a training folder given with --source-data ------------------------------------------------


def _train_folder(root: Path, per_class: tuple[int, ...] = (3, 1, 2), side: int = 40) -> Path:
    for c, count in enumerate(per_class):
        (root / f"n0{c}").mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (side, side + 8), (10 * c, 20 * i, 0)).save(root / f"n0{c}" / f"{i}.JPEG")
    return root


def _imagenet_spec(tmp_path: Path, **kwargs: object) -> SuiteSpec:
    return SuiteSpec(dataset="imagenet-c", data_root=tmp_path / "ImageNet-C", **ON_DISK, **kwargs)  # type: ignore[arg-type]


def test_imagenet_source_takes_the_classes_in_turn_and_preprocesses_as_the_test_images(tmp_path: Path) -> None:
    folder = _train_folder(tmp_path / "train")
    x, y = _all(source_training_data(_imagenet_spec(tmp_path, source_data=folder), batch_size=4))
    assert y.tolist() == [0, 1, 2, 0, 2, 0] and x.shape == (6, 3, 224, 224)
    x, _ = _all(source_training_data(_imagenet_spec(tmp_path, source_data=folder, preprocess="none"), limit=2))
    assert x.shape == (2, 3, 48, 40) and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0


def test_imagenet_source_needs_the_flag(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="imagenet-c has no default source data.*--source-data PATH"):
        check_source_data(_imagenet_spec(tmp_path))


def test_imagenet_source_folder_problems_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing: no such folder"):
        check_source_data(_imagenet_spec(tmp_path, source_data=tmp_path / "missing"))
    (tmp_path / "flat").mkdir()
    with pytest.raises(FileNotFoundError, match="flat has no class folders"):
        check_source_data(_imagenet_spec(tmp_path, source_data=tmp_path / "flat"))
    for c in range(1001):
        (tmp_path / "many" / f"n{c:05d}").mkdir(parents=True)
    with pytest.raises(ValueError, match="many has 1001 class folders but the model has 1000 classes"):
        check_source_data(_imagenet_spec(tmp_path, source_data=tmp_path / "many"))


@pytest.mark.parametrize("dataset, data_root, message", [("mnist-c", Path("x"), "no source data is known for"),
                                                         ("cifar10-c", None, "cifar10-c needs --data-root")])
def test_specs_without_a_source_are_refused(dataset: str, data_root: Path | None, message: str) -> None:
    spec = SimpleNamespace(dataset=dataset, data_root=data_root, source_data=None, preprocess="none", num_workers=0)
    with pytest.raises(ValueError, match=message):
        check_source_data(spec)


@pytest.mark.parametrize("limit, batch_size", [(0, 8), (2, 0)])
def test_limit_and_batch_size_are_checked(fmnist_dir: Path, limit: int, batch_size: int) -> None:
    with pytest.raises(ValueError, match="must be an int >= 1"):
        source_training_data(SuiteSpec(data_root=fmnist_dir), limit=limit, batch_size=batch_size)


# --- tta bench: the suite supplies it, --source-data overrides it ------------------------------------------


def _bench(fmnist_dir: Path, checkpoint: Path, results: Path, methods: str, *extra: str) -> list[str]:
    return ["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint), "--results", str(results),
            "--methods", methods, "--corruptions", "fog", "--limit", "8", "--batch-size", "4", *extra]


def test_bench_supplies_the_suite_training_split_to_a_method_that_needs_it(
        fmnist_dir: Path, checkpoint: Path, tmp_path: Path) -> None:
    with source_method_registered() as method:
        assert main(_bench(fmnist_dir, checkpoint, tmp_path / "r.sqlite", f"source,{method}")) == 0
    with ResultsStore(tmp_path / "r.sqlite") as store:
        assert sorted(r.key.method for r in store.records()) == ["source", method]


def test_bench_missing_source_data_fails_before_any_work(
        fmnist_dir: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with source_method_registered() as method:
        code = main(_bench(fmnist_dir, checkpoint, tmp_path / "r.sqlite", method,
                           "--source-data", str(tmp_path / "nowhere")))
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("tta: error: methods that use source data") and "nowhere" in err
    assert not (tmp_path / "r.sqlite").exists()


def test_bench_refuses_source_data_when_no_method_uses_it(
        fmnist_dir: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_bench(fmnist_dir, checkpoint, tmp_path / "r.sqlite", "source,norm",
                       "--source-data", str(fmnist_dir))) == 2
    err = capsys.readouterr().err
    assert "--source-data only applies to methods that use source data, and none of --methods source,norm does" in err
    assert not (tmp_path / "r.sqlite").exists()
