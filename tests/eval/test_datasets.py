"""Tests for eval.datasets: IDX reading, Fashion-MNIST loading and corrupted views."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from eval.datasets import (
    DEBIAN_FASHION_MNIST,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ENV,
    FASHION_MNIST_FILES,
    CorruptedView,
    batch_seed,
    load_fashion_mnist,
    read_idx,
    resolve_fashion_mnist_root,
    write_idx,
)
from eval.datasets import on_the_fly

requires_debian_data = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason=f"Debian's dataset-fashion-mnist is not installed at {DEBIAN_FASHION_MNIST}",
)


def write_fashion_folder(root: Path, *, train: int = 8, test: int = 6, suffix: str = ".gz") -> Path:
    """Write a tiny Fashion-MNIST-shaped IDX folder."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        image_stem, label_stem = FASHION_MNIST_FILES[split]
        write_idx(root / f"{image_stem}{suffix}", rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
        write_idx(root / f"{label_stem}{suffix}", rng.integers(0, 10, count, dtype=np.uint8))
    return root


def fake_corrupt(x: Tensor, name: str, severity: int, generator: torch.Generator, table: str = "auto") -> Tensor:
    """Stand-in corruption: seeded noise whose size grows with severity."""
    noise = torch.rand(x.shape, generator=generator, device=x.device)
    return (x + 0.1 * severity * noise).clamp(0, 1)


@pytest.fixture
def patched_corrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(on_the_fly, "_corrupt", fake_corrupt)


@pytest.fixture
def clean_data() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8, generator=generator)
    return images, torch.arange(10) % 3


# --- IDX format ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_round_trips_written_file(tmp_path: Path, suffix: str, dtype: type) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - (0 if dtype is np.uint8 else 7)).astype(dtype)
    path = write_idx(tmp_path / f"data-idx{suffix}", array)
    restored = read_idx(path)
    assert restored.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(restored, array)


def test_write_idx_gz_is_gzip(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "labels.gz", np.zeros(3, dtype=np.uint8))
    assert gzip.decompress(path.read_bytes())[:4] == bytes([0, 0, 0x08, 1])


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_truncated_file_raises_naming_it(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"images-idx3-ubyte{suffix}"
    payload = bytes([0, 0, 0x08, 3]) + np.array([2, 28, 28], dtype=">u4").tobytes() + bytes(100)
    path.write_bytes(gzip.compress(payload) if suffix else payload)
    with pytest.raises(ValueError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value) and "1568" in str(info.value) and "100" in str(info.value)


def test_read_idx_cut_gzip_stream_raises_value_error(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x.gz", np.ones((50, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match="x.gz"):
        read_idx(path)


def test_read_idx_bad_magic_raises(tmp_path: Path) -> None:
    path = tmp_path / "not-idx"
    path.write_bytes(b"PK\x03\x04 definitely not an idx file")
    with pytest.raises(ValueError, match="bad IDX magic") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_trailing_bytes_raise(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "labels", np.zeros(4, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(ValueError, match="oversized"):
        read_idx(path)


def test_write_idx_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="IDX"):
        write_idx(tmp_path / "x", np.zeros(2, dtype=np.complex64))


# --- Fashion-MNIST -------------------------------------------------------------------------------


def test_resolve_missing_folder_names_files_places_and_fixes(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        resolve_fashion_mnist_root(tmp_path / "nowhere")
    message = str(info.value)
    for needed in ("t10k-images-idx3-ubyte", "train-labels-idx1-ubyte", str(tmp_path / "nowhere"),
                   FASHION_MNIST_ENV, "--data-root", "apt-get install dataset-fashion-mnist",
                   str(DEBIAN_FASHION_MNIST)):  # fmt: skip
        assert needed in message


def test_resolve_names_only_missing_split_files(tmp_path: Path) -> None:
    root = write_fashion_folder(tmp_path / "fm")
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    assert resolve_fashion_mnist_root(root, splits=("train",)) == root
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte") as info:
        resolve_fashion_mnist_root(root)
    assert "t10k-images" not in str(info.value)


def test_resolve_uses_argument_before_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_env, from_arg = write_fashion_folder(tmp_path / "env"), write_fashion_folder(tmp_path / "arg", suffix="")
    monkeypatch.setenv(FASHION_MNIST_ENV, str(from_env))
    assert resolve_fashion_mnist_root() == from_env
    assert resolve_fashion_mnist_root(from_arg) == from_arg


def test_resolve_environment_without_files_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"\\${FASHION_MNIST_ENV}"):
        resolve_fashion_mnist_root()


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_load_fashion_mnist_reads_synthetic_folder(tmp_path: Path, suffix: str) -> None:
    root = write_fashion_folder(tmp_path, train=8, test=6, suffix=suffix)
    images, labels = load_fashion_mnist("test", root)
    assert images.shape == (6, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (6,) and labels.dtype == torch.int64
    expected = read_idx(root / f"t10k-images-idx3-ubyte{suffix}")
    np.testing.assert_array_equal(images[:, 0].numpy(), expected)


def test_load_fashion_mnist_count_mismatch_raises(tmp_path: Path) -> None:
    root = write_fashion_folder(tmp_path)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.zeros(5, dtype=np.uint8))
    with pytest.raises(ValueError, match="expected 6 labels"):
        load_fashion_mnist("test", root)


def test_load_fashion_mnist_unknown_split_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'train', 'test'"):
        load_fashion_mnist("val", tmp_path)  # type: ignore[arg-type]


@requires_debian_data
def test_load_fashion_mnist_real_data_shapes_and_counts() -> None:
    images, labels = load_fashion_mnist("test", DEBIAN_FASHION_MNIST)
    assert images.shape == (10_000, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(labels.bincount(), torch.full((len(FASHION_MNIST_CLASSES),), 1000))
    train_labels = read_idx(resolve_fashion_mnist_root(DEBIAN_FASHION_MNIST) / "train-labels-idx1-ubyte.gz")
    assert train_labels.shape == (60_000,)


# --- CorruptedView -------------------------------------------------------------------------------


def test_batch_seed_is_stable() -> None:
    # Golden values: a change here changes every on-the-fly benchmark number.
    assert batch_seed(0, "gaussian_noise", 5, 3) == 5286393142412563792
    assert batch_seed(1, "clean", 0, 0) == 2881030249674234495


def test_corrupted_view_same_seed_gives_same_batches(clean_data: tuple[Tensor, Tensor], patched_corrupt: None) -> None:
    first = list(CorruptedView(*clean_data, "gaussian_noise", 3, batch_size=4, seed=7))
    second = list(CorruptedView(*clean_data, "gaussian_noise", 3, batch_size=4, seed=7))
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_corrupted_view_batch_is_reproducible_alone(clean_data: tuple[Tensor, Tensor], patched_corrupt: None) -> None:
    view = CorruptedView(*clean_data, "gaussian_noise", 3, batch_size=4)
    iterated = list(view)
    fresh = CorruptedView(*clean_data, "gaussian_noise", 3, batch_size=4)
    assert torch.equal(fresh.batch(2)[0], iterated[2][0])
    assert torch.equal(fresh.batch(1)[0], iterated[1][0])


def test_corrupted_view_seed_and_domain_change_batches(
    clean_data: tuple[Tensor, Tensor], patched_corrupt: None
) -> None:
    base = CorruptedView(*clean_data, "gaussian_noise", 3, batch_size=4).batch(0)[0]
    assert not torch.equal(CorruptedView(*clean_data, "gaussian_noise", 3, batch_size=4, seed=1).batch(0)[0], base)
    assert not torch.equal(CorruptedView(*clean_data, "shot_noise", 3, batch_size=4).batch(0)[0], base)
    view = CorruptedView(*clean_data, "gaussian_noise", 3, batch_size=4)
    assert not torch.equal(view.batch(0)[0][:2], view.batch(1)[0][:2])


def test_corrupted_view_clean_passes_images_through(clean_data: tuple[Tensor, Tensor]) -> None:
    images, labels = clean_data
    batches = list(CorruptedView(images, labels, "clean", 0, batch_size=4))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x = torch.cat([x for x, _ in batches])
    assert x.dtype == torch.float32 and torch.equal(x, images.float() / 255)
    assert torch.equal(torch.cat([y for _, y in batches]), labels)


def test_corrupted_view_float_input_matches_uint8(clean_data: tuple[Tensor, Tensor], patched_corrupt: None) -> None:
    images, labels = clean_data
    from_uint8 = CorruptedView(images, labels, "impulse_noise", 2, batch_size=3).batch(1)[0]
    from_float = CorruptedView(images.float() / 255, labels, "impulse_noise", 2, batch_size=3).batch(1)[0]
    assert torch.allclose(from_uint8, from_float)


def test_corrupted_view_clean_batches_do_not_alias_data(clean_data: tuple[Tensor, Tensor]) -> None:
    images = clean_data[0].float() / 255
    x, _ = CorruptedView(images, clean_data[1], "clean", 0, batch_size=4).batch(0)
    x.zero_()
    assert images[:4].sum() > 0


def test_corrupted_view_limit_truncates(clean_data: tuple[Tensor, Tensor]) -> None:
    view = CorruptedView(*clean_data, "clean", 0, batch_size=4, limit=5)
    assert (view.num_examples, len(view)) == (5, 2)
    assert [len(y) for _, y in view] == [4, 1]
    assert CorruptedView(*clean_data, "clean", 0, batch_size=4, limit=100).num_examples == 10


def test_corrupted_view_rejects_bad_arguments(clean_data: tuple[Tensor, Tensor]) -> None:
    images, labels = clean_data
    with pytest.raises(ValueError, match="severity"):
        CorruptedView(images, labels, "gaussian_noise", 0, batch_size=4)
    with pytest.raises(ValueError, match="clean"):
        CorruptedView(images, labels, "clean", 2, batch_size=4)
    with pytest.raises(ValueError, match="labels"):
        CorruptedView(images, labels[:3], "clean", 0, batch_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        CorruptedView(images, labels, "clean", 0, batch_size=0)
    with pytest.raises(IndexError):
        CorruptedView(images, labels, "clean", 0, batch_size=4).batch(3)


def test_corrupted_view_with_real_gaussian_noise(clean_data: tuple[Tensor, Tensor]) -> None:
    view = CorruptedView(*clean_data, "gaussian_noise", 5, batch_size=4, seed=3)
    x, y = view.batch(1)
    assert x.shape == (4, 1, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x, CorruptedView(*clean_data, "gaussian_noise", 5, batch_size=4, seed=3).batch(1)[0])
    assert not torch.equal(x, clean_data[0][4:8].float() / 255)
