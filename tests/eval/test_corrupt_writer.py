"""Tests of eval.datasets.writers and ``tta corrupt``: layouts, resumption, atomic parts, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval.cli import main
from eval.corruptions import corrupt
from eval.datasets.fashion_mnist import write_idx
from eval.datasets.on_the_fly import batch_seed
from eval.datasets.writers import load_image_folder, write_corrupted


def clean_arrays(count: int = 6, side: int = 16, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, side, side, channels), generator=g, dtype=torch.uint8).numpy()
    return images, np.arange(count) % 3


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Write <root>/<class>/<file>: two classes, a PNG and a JPEG each, 20x24 RGB."""
    root = tmp_path / "clean"
    images, _ = clean_arrays(4, 24)
    for i, (cls, suffix) in enumerate([("cat", ".png"), ("cat", ".jpg"), ("dog", ".png"), ("dog", ".JPEG")]):
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i, :20]).save(root / cls / f"img{i}{suffix}")
    return root


def expected_part(images: np.ndarray, name: str, severity: int, batch_size: int, seed: int = 0) -> np.ndarray:
    parts = []
    for k, start in enumerate(range(0, len(images), batch_size)):
        x = torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2).float() / 255
        y = corrupt(x, name, severity, generator=torch.Generator().manual_seed(batch_seed(seed, name, severity, k)))
        parts.append((y * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(parts)


def test_write_npy_layout_stacks_severities_like_cifar10c(tmp_path: Path) -> None:
    images, labels = clean_arrays()
    written = write_corrupted(images, tmp_path / "out", layout="npy", corruptions=["contrast", "gaussian_noise"],
                              severities=[2, 1], labels=labels, batch_size=4)
    assert {p.name for p in written} == {"contrast.npy", "gaussian_noise.npy", "labels.npy", "severities.json"}
    noise = np.load(tmp_path / "out" / "gaussian_noise.npy")
    assert noise.shape == (12, 16, 16, 3) and noise.dtype == np.uint8
    assert np.array_equal(noise[:6], expected_part(images, "gaussian_noise", 1, 4))
    assert np.array_equal(noise[6:], expected_part(images, "gaussian_noise", 2, 4))
    assert np.array_equal(np.load(tmp_path / "out" / "labels.npy"), np.tile(labels, 2))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["contrast.npy", "gaussian_noise.npy", "labels.npy",
                                                                    "severities.json"]


def test_write_resumes_after_an_interruption_with_identical_output(tmp_path: Path) -> None:
    images, labels = clean_arrays()
    kwargs = {"layout": "npy", "corruptions": ["gaussian_noise", "fog"], "severities": [1, 3], "labels": labels,
              "batch_size": 4}
    calls = []

    def interrupt_in_third_part(count: int) -> None:
        calls.append(count)
        if len(calls) == 7:  # parts have 2 batches each: stop inside the fourth part
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_corrupted(images, tmp_path / "a", on_progress=interrupt_in_third_part, **kwargs)  # type: ignore[arg-type]
    parts = tmp_path / "a" / ".parts"
    assert sorted(str(p.relative_to(parts)) for p in parts.rglob("*.npy")) == ["fog/1.npy"]
    assert (tmp_path / "a" / "gaussian_noise.npy").exists()
    starts: list[tuple[int, int]] = []
    write_corrupted(images, tmp_path / "a", on_start=lambda total, done: starts.append((total, done)),
                    **kwargs)  # type: ignore[arg-type]
    assert starts == [(24, 18)]  # 4 parts x 6 images, 3 parts on disk
    write_corrupted(images, tmp_path / "b", **kwargs)  # type: ignore[arg-type]
    for name in ("gaussian_noise.npy", "fog.npy", "labels.npy"):
        assert np.array_equal(np.load(tmp_path / "a" / name), np.load(tmp_path / "b" / name)), name
    assert not parts.exists()


def test_write_skips_finished_parts_without_computing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = clean_arrays()
    write_corrupted(images, tmp_path, layout="npy", corruptions=["contrast"], labels=labels)

    def fail(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("recomputed a finished part")

    monkeypatch.setattr("eval.corruptions.corrupt", fail)
    starts: list[tuple[int, int]] = []
    write_corrupted(images, tmp_path, layout="npy", corruptions=["contrast"], labels=labels,
                    on_start=lambda total, done: starts.append((total, done)))
    assert starts == [(30, 30)]


def test_write_folder_layout_keeps_class_and_file_names(tmp_path: Path, image_folder: Path) -> None:
    source = load_image_folder(image_folder)
    assert source.classes == ("cat", "dog") and source.labels == (0, 0, 1, 1)
    out = tmp_path / "imagenet-c"
    write_corrupted(source, out, layout="folder", corruptions=["pixelate"], severities=[5], size=16, batch_size=3)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["pixelate/5/.complete", "pixelate/5/cat/img0.png", "pixelate/5/cat/img1.jpg",
                     "pixelate/5/dog/img2.png", "pixelate/5/dog/img3.JPEG"]
    with Image.open(out / "pixelate/5/cat/img1.jpg") as jpeg:
        assert jpeg.format == "JPEG" and jpeg.size == (16, 16)
    (out / "pixelate/5/.complete").unlink()
    (out / "pixelate/5/dog/img2.png").unlink()  # an interrupted part: one file missing
    before = (out / "pixelate/5/cat/img0.png").stat().st_mtime_ns
    write_corrupted(source, out, layout="folder", corruptions=["pixelate"], severities=[5], size=16, batch_size=3)
    assert (out / "pixelate/5/dog/img2.png").exists() and (out / "pixelate/5/.complete").exists()
    assert (out / "pixelate/5/cat/img0.png").stat().st_mtime_ns == before


def test_write_folder_layout_of_arrays_names_classes_by_label(tmp_path: Path) -> None:
    images, labels = clean_arrays(3, channels=1)
    write_corrupted(images, tmp_path, layout="folder", corruptions=["brightness"], severities=[1], labels=labels)
    with Image.open(tmp_path / "brightness/1/2/00002.png") as image:
        assert image.mode == "L" and image.size == (16, 16)


def test_write_rejects_bad_arguments(tmp_path: Path) -> None:
    images, labels = clean_arrays()
    with pytest.raises(ValueError, match=r"unknown corruption 'snowy'.*gaussian_noise"):
        write_corrupted(images, tmp_path, layout="npy", corruptions=["snowy"], labels=labels)
    with pytest.raises(ValueError, match="needs labels"):
        write_corrupted(images, tmp_path, layout="npy", corruptions=["contrast"])
    with pytest.raises(ValueError, match=r"severities must be in 1\.\.5"):
        write_corrupted(images, tmp_path, layout="npy", corruptions=["contrast"], severities=[6], labels=labels)
    with pytest.raises(ValueError, match="uint8"):
        write_corrupted(images.astype(np.float32), tmp_path, layout="npy", corruptions=["contrast"], labels=labels)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    assert not any(tmp_path.iterdir())


def test_cli_corrupt_writes_npy_from_an_images_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = clean_arrays()
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", labels)
    args = ["corrupt", "--input", str(tmp_path / "images.npy"), "--out", str(tmp_path / "c"),
            "--corruptions", "contrast,frost", "--severities", "1,5", "--batch-size", "4"]
    assert main(args) == 0
    assert np.load(tmp_path / "c" / "frost.npy").shape == (12, 16, 16, 3)
    assert "npy layout" in capsys.readouterr().out
    assert main(args) == 0  # resumed: nothing left to do
    assert "resuming: 24 image(s)" in capsys.readouterr().err


def test_cli_corrupt_reads_fashion_mnist_and_folders(tmp_path: Path, image_folder: Path) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 28, 28), generator=g, dtype=torch.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", torch.randint(0, 10, (5,), generator=g, dtype=torch.uint8))
    assert main(["corrupt", "--input", "fmnist", "--data-root", str(tmp_path), "--out", str(tmp_path / "f"),
                 "--corruptions", "holdout", "--severities", "3", "--limit", "4"]) == 0
    assert np.load(tmp_path / "f" / "spatter.npy").shape == (4, 28, 28, 1)
    assert main(["corrupt", "--input", str(image_folder), "--out", str(tmp_path / "g"), "--size", "16",
                 "--corruptions", "zoom_blur", "--severities", "2"]) == 0
    assert len(list((tmp_path / "g" / "zoom_blur" / "2").rglob("img*"))) == 4
    assert main(["corrupt", "--input", str(tmp_path / "nope"), "--out", str(tmp_path / "h")]) == 2
