"""CIFAR-C .npy and ImageNet-C folder layouts on tiny replicas written by fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from eval.datasets.folder import ImageFolderDomain, check_folder_root
from eval.datasets.npy import NpyCorruptionDomain, check_npy_root
from eval.domains import Domain

N = 4  # images per severity


@pytest.fixture
def npy_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("gaussian_noise", "fog"):
        images = np.stack([np.full((8, 8, 3), 10 * s + i, dtype=np.uint8) for s in range(5) for i in range(N)])
        np.save(tmp_path / f"{name}.npy", images)
    np.save(tmp_path / "labels.npy", np.tile(rng.integers(0, 10, N), 5).astype(np.int64))
    return tmp_path


def test_npy_domain_reads_its_severity_block(npy_root: Path) -> None:
    data = NpyCorruptionDomain(npy_root, Domain("fog", 3))
    assert len(data) == N
    x, y = data[1]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    assert torch.allclose(x, torch.full_like(x, (10 * 2 + 1) / 255))
    assert int(y) == int(np.load(npy_root / "labels.npy")[2 * N + 1])
    assert len(NpyCorruptionDomain(npy_root, Domain("fog", 1), limit=2)) == 2
    batches = list(DataLoader(data, batch_size=3))
    assert [b[0].shape[0] for b in batches] == [3, 1]


def test_npy_missing_files_are_all_listed(npy_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing 2 file\(s\).*snow\.npy.*zoom_blur\.npy"):
        check_npy_root(npy_root, ["fog", "snow", "zoom_blur"])


def test_npy_truncated_file_is_named(npy_root: Path) -> None:
    path = npy_root / "fog.npy"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="fog.npy"):
        check_npy_root(npy_root, ["gaussian_noise", "fog"])


def _write_image_tree(root: Path, domains: list[str], size: int = 40) -> None:
    for folder in domains:
        for wnid in ("n01", "n02"):
            (root / folder / wnid).mkdir(parents=True)
            for i in range(3):
                value = 60 * i + (100 if wnid == "n02" else 0)
                Image.new("RGB", (size, size), (value, value, value)).save(root / folder / wnid / f"img{i}.JPEG")


def test_folder_domain_streams_labels_and_preprocessing(tmp_path: Path) -> None:
    _write_image_tree(tmp_path, ["fog/5"])
    data = ImageFolderDomain(tmp_path, Domain("fog", 5), preprocess="none")
    assert len(data) == 6 and [int(data[i][1]) for i in range(6)] == [0, 0, 0, 1, 1, 1]
    assert data[0][0].shape == (3, 40, 40)
    cropped = ImageFolderDomain(tmp_path, Domain("fog", 5))
    assert cropped[0][0].shape == (3, 224, 224)
    subset = ImageFolderDomain(tmp_path, Domain("fog", 5), preprocess="none", per_class=1)
    assert len(subset) == 2
    listing = tmp_path / "ids.txt"
    listing.write_text("n02/img2.JPEG\nn01/img0.JPEG\n")
    chosen = ImageFolderDomain(tmp_path, Domain("fog", 5), preprocess="none", subset_file=listing)
    assert [p.name for p, _ in chosen.items] == ["img0.JPEG", "img2.JPEG"]


def test_folder_missing_domains_are_all_listed(tmp_path: Path) -> None:
    _write_image_tree(tmp_path, ["fog/5"])
    (tmp_path / "snow" / "5").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"2 folder\(s\).*snow/5 \(no class folders\).*zoom_blur/5 \(missing\)"):
        check_folder_root(tmp_path, [Domain("fog", 5), Domain("snow", 5), Domain("zoom_blur", 5)])


def test_folder_truncated_image_is_named(tmp_path: Path) -> None:
    _write_image_tree(tmp_path, ["fog/5"])
    bad = tmp_path / "fog" / "5" / "n01" / "img1.JPEG"
    bad.write_bytes(bad.read_bytes()[:100])
    data = ImageFolderDomain(tmp_path, Domain("fog", 5), preprocess="none")
    with pytest.raises(ValueError, match="img1.JPEG"):
        data[1]
