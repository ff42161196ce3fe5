"""Guarantees of the on-disk dataset readers: no code runs from a data file, severities and labels are
checked, and broken or mismatched images are all listed before any work."""

from __future__ import annotations

import builtins
import logging
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval.cli import main
from eval.datasets.cifar_clean import CifarCleanTest, find_clean_cifar
from eval.datasets.folder import check_folder_root
from eval.datasets.npy import NPY_LAYOUT_FILE, NpyCorruptionDomain, check_npy_root
from eval.datasets.writers import write_corrupted
from eval.domains import Domain
from eval.results.store import ResultsStore
from tests.helpers import tiny_rgb_classifier

FACTORY = "tests.helpers:tiny_rgb_classifier"


# --- the clean CIFAR split: a restricted unpickler ------------------------------------------------


class _Payload:
    """Pickles as a call of ``func(*args)``, the shape of a crafted data file."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, object]:
    payloads: dict[str, object] = {
        "os.system": _Payload(os.system, f"touch {marker}"),
        "builtins.exec": _Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
    }
    if hasattr(os, "posix_spawn"):
        import posix

        payloads["posix.system"] = _Payload(posix.system, f"touch {marker}")
    return payloads


@pytest.mark.parametrize("name", ["os.system", "builtins.exec", "posix.system"])
@pytest.mark.parametrize("where", ["whole", "inside labels"])
def test_crafted_clean_cifar_pickle_is_refused_without_running_code(tmp_path: Path, name: str, where: str) -> None:
    marker = tmp_path / "marker"
    payloads = _payloads(marker)
    if name not in payloads:
        pytest.skip(f"{name} does not exist on this platform")
    payload = payloads[name]
    entry = payload if where == "whole" else {"data": np.zeros((2, 3072), np.uint8), "labels": [0, payload]}
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(ValueError, match=r"test_batch.*refus"):
        CifarCleanTest(path, "cifar10-c")
    assert not marker.exists()


def _binstring(raw: bytes) -> bytes:
    return b"U" + bytes([len(raw)]) + raw if len(raw) < 256 else b"T" + struct.pack("<i", len(raw)) + raw


def _int(value: int) -> bytes:
    return b"K" + bytes([value]) if value < 256 else b"J" + struct.pack("<i", value)


def python2_pickle(data: np.ndarray, labels: list[int], label_key: str) -> bytes:
    """Protocol-2 bytes as Python 2's cPickle wrote the official release: 8-bit str keys and array data."""
    shape = b"(" + b"".join(_int(n) for n in data.shape) + b"t"
    dtype = (b"cnumpy\ndtype\n" + _binstring(b"u1") + b"K\x00K\x01\x87R"
             + b"(K\x03" + _binstring(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _binstring(b"b") + b"\x87R"
             + b"(K\x01" + shape + dtype + b"\x89" + _binstring(data.tobytes()) + b"tb")
    values = b"](" + b"".join(_int(v) for v in labels) + b"e"
    return b"\x80\x02}(" + _binstring(b"data") + array + _binstring(label_key.encode()) + values + b"u."


@pytest.mark.parametrize("style", ["python2", "bytes keys, protocol 2", "str keys, default protocol"])
@pytest.mark.parametrize("dataset", ["cifar10-c", "cifar100-c"])
def test_genuine_clean_cifar_formats_still_load(tmp_path: Path, style: str, dataset: str) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    labels = [1, 0, 9]
    key = "labels" if dataset == "cifar10-c" else "fine_labels"
    path = tmp_path / "test_batch"
    if style == "python2":
        path.write_bytes(python2_pickle(data, labels, key))
    elif style == "bytes keys, protocol 2":
        path.write_bytes(pickle.dumps({b"batch_label": b"testing batch 1 of 1", b"data": data, key.encode(): labels},
                                      protocol=2))
    else:
        path.write_bytes(pickle.dumps({"data": data, key: labels}))
    clean = CifarCleanTest(path, dataset)
    assert len(clean) == 3 and [int(clean[i][1]) for i in range(3)] == labels
    assert torch.equal(clean[2][0], torch.from_numpy(data[2].reshape(3, 32, 32)).float() / 255)


def test_clean_cifar_labels_outside_the_classes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [3, 10]}))
    with pytest.raises(ValueError, match=r"test_batch.*0 <= label < 10.*10"):
        CifarCleanTest(path, "cifar10-c")


def test_clean_cifar_found_beside_the_root_is_announced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "data" / "CIFAR-10-C"
    root.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="parent folder"):
        find_clean_cifar(root, "cifar10-c")
    beside = tmp_path / "data" / "cifar-10-batches-py" / "test_batch"
    beside.parent.mkdir()
    beside.write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0]}))
    with caplog.at_level(logging.WARNING, logger="eval.datasets"):
        assert find_clean_cifar(root, "cifar10-c") == beside
    assert str(beside) in caplog.text and "outside --data-root" in caplog.text


# --- the npy layout: recorded severities ------------------------------------------------------------


def _clean(count: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, 8, 8, 3), dtype=np.uint8), np.arange(count) % 3


def test_npy_layout_written_with_one_severity_is_read_as_that_severity(tmp_path: Path) -> None:
    images, labels = _clean()
    write_corrupted(images, tmp_path, layout="npy", corruptions=["gaussian_noise"], severities=[5], labels=labels)
    assert (tmp_path / NPY_LAYOUT_FILE).is_file()
    written = np.load(tmp_path / "gaussian_noise.npy")
    five = NpyCorruptionDomain(tmp_path, Domain("gaussian_noise", 5))
    assert len(five) == 10
    assert torch.equal(five[9][0], torch.from_numpy(written[9]).permute(2, 0, 1).float() / 255)
    with pytest.raises(ValueError, match=r"gaussian_noise\.npy holds severities \[5\].*severity 1"):
        NpyCorruptionDomain(tmp_path, Domain("gaussian_noise", 1))
    with pytest.raises(ValueError, match=r"severities \[5\].*severity 1, 2"):
        check_npy_root(tmp_path, ["gaussian_noise"], severities=[1, 2, 5])


def test_npy_layout_two_severities_read_by_block(tmp_path: Path) -> None:
    images, labels = _clean(4)
    write_corrupted(images, tmp_path, layout="npy", corruptions=["contrast"], severities=[2, 4], labels=labels)
    written = np.load(tmp_path / "contrast.npy")
    four = NpyCorruptionDomain(tmp_path, Domain("contrast", 4))
    assert torch.equal(four[0][0], torch.from_numpy(written[4]).permute(2, 0, 1).float() / 255)
    assert [int(four[i][1]) for i in range(4)] == labels.tolist()


def test_bench_refuses_a_severity_the_npy_file_does_not_hold(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = _clean()
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", labels)
    out = tmp_path / "CIFAR-10-C"
    assert main(["corrupt", "--input", str(tmp_path / "images.npy"), "--out", str(out),
                 "--corruptions", "fog", "--severities", "5"]) == 0
    weights = tmp_path / "tiny.pth"
    torch.save(tiny_rgb_classifier(10).state_dict(), weights)
    base = ["bench", "--dataset", "cifar10-c", "--data-root", str(out), "--model", FACTORY, "--weights",
            str(weights), "--methods", "source", "--corruptions", "fog", "--results", str(tmp_path / "r.sqlite")]
    capsys.readouterr()
    assert main([*base, "--severities", "1,5"]) == 2
    err = capsys.readouterr().err
    assert "fog.npy holds severities [5]" in err and "severity 1" in err
    with ResultsStore(tmp_path / "r.sqlite") as store:
        assert store.records() == []
    assert main([*base, "--severities", "5"]) == 0
    with ResultsStore(tmp_path / "r.sqlite") as store:
        (record,) = store.records()
    assert record.n == 10 and record.key.severity == 5


def test_npy_file_not_matching_its_recorded_severities_is_refused(tmp_path: Path) -> None:
    images, labels = _clean()
    write_corrupted(images, tmp_path, layout="npy", corruptions=["fog"], severities=[5], labels=labels)
    np.save(tmp_path / "fog.npy", np.zeros((50, 8, 8, 3), np.uint8))  # five severities under a one-severity record
    with pytest.raises(ValueError, match=r"fog\.npy.*\(1 x 10 = 10, H, W, C\).*\(50, 8, 8, 3\)"):
        check_npy_root(tmp_path, ["fog"], severities=[5])


@pytest.mark.parametrize("text", ["{", '{"severities": [5, 7], "images_per_severity": 10}',
                                  '{"severities": [5], "images_per_severity": "ten"}'])
def test_unreadable_severity_record_is_named(tmp_path: Path, text: str) -> None:
    images, labels = _clean()
    write_corrupted(images, tmp_path, layout="npy", corruptions=["fog"], severities=[5], labels=labels)
    (tmp_path / NPY_LAYOUT_FILE).write_text(text)
    with pytest.raises(ValueError, match=NPY_LAYOUT_FILE):
        check_npy_root(tmp_path, ["fog"], severities=[5])


def test_npy_file_without_a_record_must_hold_five_severities(tmp_path: Path) -> None:
    np.save(tmp_path / "fog.npy", np.zeros((12, 8, 8, 3), np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros(12, np.int64))
    with pytest.raises(ValueError, match=r"12 labels is not 5 severities x N.*" + NPY_LAYOUT_FILE):
        check_npy_root(tmp_path, ["fog"], severities=[1])


def test_writer_refuses_other_severities_in_a_written_folder(tmp_path: Path) -> None:
    images, labels = _clean()
    write_corrupted(images, tmp_path, layout="npy", corruptions=["fog"], severities=[5], labels=labels)
    with pytest.raises(ValueError, match=r"holds severities \[5\].*another --out folder"):
        write_corrupted(images, tmp_path, layout="npy", corruptions=["snow"], severities=[1, 5], labels=labels)
    assert not (tmp_path / "snow.npy").exists()
    write_corrupted(images, tmp_path, layout="npy", corruptions=["snow"], severities=[5], labels=labels)
    assert np.load(tmp_path / "snow.npy").shape == (10, 8, 8, 3)


# --- labels.npy --------------------------------------------------------------------------------------


def _npy_root(root: Path, labels: np.ndarray) -> Path:
    np.save(root / "fog.npy", np.zeros((len(labels), 8, 8, 3), np.uint8))
    np.save(root / "labels.npy", labels)
    return root


@pytest.mark.parametrize(("labels", "message"), [
    (np.zeros((10, 2), np.int64), r"labels\.npy.*1-D integer.*\(10, 2\)"),
    (np.full(10, 1.5), r"labels\.npy.*1-D integer.*float64"),
    (np.zeros(10, np.float32), r"labels\.npy.*1-D integer.*float32"),
    (np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 10]), r"labels\.npy.*0 <= label < 10.*10"),
    (np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, -1]), r"labels\.npy.*0 <= label < 10.*-1"),
])
def test_bad_labels_npy_is_refused_up_front(tmp_path: Path, labels: np.ndarray, message: str) -> None:
    root = _npy_root(tmp_path, labels)
    with pytest.raises(ValueError, match=message):
        check_npy_root(root, ["fog"], severities=[1], num_classes=10)


def test_labels_problems_are_listed_with_the_other_file_problems(tmp_path: Path) -> None:
    root = _npy_root(tmp_path, np.zeros((10, 2), np.int64))
    np.save(root / "snow.npy", np.zeros((10, 8, 8), np.uint8))
    with pytest.raises(ValueError) as caught:
        check_npy_root(root, ["fog", "snow"], severities=[1])
    assert "labels.npy" in str(caught.value) and "snow.npy" in str(caught.value)


def test_corrupt_refuses_two_column_labels_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, _ = _clean(4)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", np.zeros((4, 2), np.int64))
    assert main(["corrupt", "--input", str(tmp_path / "images.npy"), "--out", str(tmp_path / "c"),
                 "--corruptions", "fog", "--severities", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "labels.npy" in err and "1-D integer" in err and len(err.splitlines()) == 1


# --- ImageNet-C folders: images checked up front -----------------------------------------------------


def _tree(root: Path, domain: str = "fog/5", size: int = 40, per_class: int = 3) -> Path:
    for wnid in ("n01", "n02"):
        (root / domain / wnid).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (size, size), (60 * i, 90, 30)).save(root / domain / wnid / f"img{i}.JPEG", quality=85)
    return root


def test_truncated_and_corrupt_images_are_all_listed_before_any_work(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    truncated = root / "fog/5/n01/img1.JPEG"
    truncated.write_bytes(truncated.read_bytes()[:-40])  # the header is intact, the scan is cut
    garbage = root / "fog/5/n02/img2.JPEG"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(ValueError) as caught:
        check_folder_root(root, [Domain("fog", 5)])
    message = str(caught.value)
    assert "2 image(s)" in message and str(truncated) in message and str(garbage) in message


def test_images_outside_the_selection_are_not_checked(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "fog/5/n01/img2.JPEG").write_bytes(b"broken")
    check_folder_root(root, [Domain("fog", 5)], per_class=2)


def test_mixed_sizes_without_preprocessing_name_the_files_and_the_fix(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    odd = root / "fog/5/n02/img0.JPEG"
    Image.new("RGB", (48, 40)).save(odd)
    check_folder_root(root, [Domain("fog", 5)], preprocess="res256crop224")
    with pytest.raises(ValueError, match=r"differ from 40x40: .*img0\.JPEG \(48x40\).*--preprocess res256crop224"):
        check_folder_root(root, [Domain("fog", 5)], preprocess="none")


def test_bench_with_mixed_sizes_fails_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _tree(tmp_path / "ImageNet-C", size=16)
    Image.new("RGB", (20, 16)).save(root / "fog/5/n02/img1.JPEG")
    weights = tmp_path / "tiny.pth"
    torch.save(tiny_rgb_classifier(1000).state_dict(), weights)
    assert main(["bench", "--dataset", "imagenet-c", "--data-root", str(root), "--model", FACTORY, "--weights",
                 str(weights), "--methods", "source", "--corruptions", "fog", "--preprocess", "none",
                 "--batch-size", "8", "--results", str(tmp_path / "r.sqlite")]) == 2
    err = capsys.readouterr().err
    assert "img1.JPEG (20x16)" in err and "--preprocess res256crop224" in err


def test_more_class_folders_than_model_classes_are_refused(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    with pytest.raises(ValueError, match=r"2 class folders.*1 classes"):
        check_folder_root(root, [Domain("fog", 5)], num_classes=1)


def test_domains_with_different_class_folders_are_refused(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    _tree(root, "snow/5")
    (root / "snow/5/n03").mkdir()
    Image.new("RGB", (40, 40)).save(root / "snow/5/n03/a.JPEG")
    with pytest.raises(ValueError, match=r"snow/5.*class folders differ.*n03"):
        check_folder_root(root, [Domain("fog", 5), Domain("snow", 5)])


def test_bench_refuses_two_column_labels_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _npy_root(tmp_path, np.zeros((10, 2), np.int64))
    weights = tmp_path / "tiny.pth"
    torch.save(tiny_rgb_classifier(10).state_dict(), weights)
    assert main(["bench", "--dataset", "cifar10-c", "--data-root", str(root), "--model", FACTORY, "--weights",
                 str(weights), "--methods", "source", "--corruptions", "fog", "--severities", "1",
                 "--results", str(tmp_path / "r.sqlite")]) == 2
    err = capsys.readouterr().err
    assert "labels.npy: labels must be a 1-D integer array, found int64 (10, 2)" in err and "Traceback" not in err
