"""Write corrupted copies of a clean dataset to disk: the CIFAR-10-C ``.npy`` or ImageNet-C folder layout.

- ``npy``: ``<out>/<corruption>.npy`` holds uint8 ``(S * N, H, W, C)`` images, the requested
  severities stacked in increasing order (CIFAR-10-C: all five, ``5 * 10000`` images),
  ``<out>/labels.npy`` the labels tiled ``S`` times, and ``<out>/severities.json`` which severities
  and N (see :mod:`eval.datasets.npy`). One folder holds one set of severities: adding other
  severities to it is refused before any work.
- ``folder``: ``<out>/<corruption>/<severity>/<class>/<file>``, ImageNet-C's layout; every
  image keeps its class folder and file name. JPEG files are saved at quality 85, as ImageNet-C's
  were; other extensions are saved losslessly by PIL.

Writing is resumable. Every finished piece is final on disk under its own name: a
``(corruption, severity)`` part of the ``npy`` layout, or one image of the ``folder`` layout,
is written under a temporary name and renamed, so an interrupted run never leaves a truncated
file that a rerun would count as done. A rerun with the same arguments skips what exists and
computes the rest. Batch ``k`` of a part is corrupted with a generator seeded by
:func:`~eval.datasets.on_the_fly.batch_seed` of ``(seed, corruption, severity, k)``, so the
result does not depend on where a run was interrupted (it does depend on ``batch_size``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from eval.datasets.labels import labels_problem
from eval.datasets.npy import NPY_LAYOUT_FILE, NpyLayout, read_npy_layout, write_npy_layout
from eval.datasets.on_the_fly import batch_seed

__all__ = ["IMAGE_SUFFIXES", "ImageFolderSource", "Layout", "load_image_folder", "write_corrupted"]

Layout = Literal["npy", "folder"]
#: File suffixes read from an ImageFolder tree (case-insensitive).
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
#: JPEG quality of written ``.jpg``/``.jpeg`` files (ImageNet-C's saver used 85).
JPEG_QUALITY = 85
Progress = Callable[[int], None]


@dataclass(frozen=True)
class ImageFolderSource:
    """Clean images listed from ``<root>/<class>/<file>``: relative paths and class indices."""

    root: Path
    files: tuple[Path, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]


def load_image_folder(root: str | os.PathLike[str]) -> ImageFolderSource:
    """List an ImageFolder tree (classes sorted by name, files sorted within each class).

    Raises:
        FileNotFoundError: ``root`` is missing or holds no class folder with images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"clean image folder {root} does not exist; expected <root>/<class>/<image>")
    classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")))
    files, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(path.relative_to(root))
                labels.append(index)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in class folders under {root}")
    return ImageFolderSource(root, tuple(files), tuple(labels), classes)


def write_corrupted(
    source: np.ndarray | ImageFolderSource,
    out: str | os.PathLike[str],
    *,
    layout: Layout,
    corruptions: Sequence[str],
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    labels: np.ndarray | None = None,
    batch_size: int = 64,
    seed: int = 0,
    size: int | None = None,
    device: torch.device | str = "cpu",
    on_start: Callable[[int, int], None] | None = None,
    on_progress: Progress | None = None,
) -> list[Path]:
    """Write every ``(corruption, severity)`` of a clean dataset, skipping parts already on disk.

    Args:
        source: uint8 images ``(N, H, W, C)`` with ``C`` 1 or 3, or an :class:`ImageFolderSource`.
        out: Output folder (created).
        layout: ``"npy"`` (CIFAR-10-C) or ``"folder"`` (ImageNet-C); see the module docstring.
        corruptions: Names from :func:`eval.corruptions.list_corruptions`.
        severities: Levels in 1..5.
        labels: Integer labels ``(N,)`` of an array source (required for ``"npy"``; the
            ``"folder"`` layout names class folders by label).
        batch_size: Images corrupted at once.
        seed: Base seed of the per-batch generators.
        size: For an image folder: resize the shorter side to ``size * 256 / 224`` and
            centre-crop ``size`` (ImageNet-C's 256/224 preprocessing); ``None`` keeps the
            images as they are, one image per batch when their sizes differ.
        device: Where the corruptions run.
        on_start: Called once with (images to write in total, images already on disk).
        on_progress: Called with the number of images just finished (written or skipped).

    Returns:
        The files written or found complete, in order.

    Raises:
        ValueError: Bad layout, names, severities, batch size, or an array without labels for ``"npy"``.
    """
    from eval.corruptions import get_corruption

    for name in corruptions:
        get_corruption(name)  # unknown names fail before anything is written
    if layout not in ("npy", "folder"):
        raise ValueError(f"layout must be 'npy' or 'folder', got {layout!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if any(s not in range(1, 6) for s in severities):
        raise ValueError(f"severities must be in 1..5, got {list(severities)}")
    severities = sorted(set(severities))
    images = _Images(source, size)
    if isinstance(source, ImageFolderSource) and labels is None:
        labels = np.asarray(source.labels)
    if layout == "npy" and labels is None:
        raise ValueError("the npy layout needs labels: pass labels=... for an array source")
    problem = None if labels is None else labels_problem("labels", np.asarray(labels))
    if problem:
        raise ValueError(problem)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    writer = _NpyWriter(out, images, labels, severities) if layout == "npy" else _FolderWriter(out, images, labels)
    parts = [(name, severity) for name in corruptions for severity in severities]
    done = sum(images.count for part in parts if writer.is_done(*part))
    if on_start is not None:
        on_start(images.count * len(parts), done)
    written = []
    for name, severity in parts:
        if not writer.is_done(name, severity):
            writer.write_part(name, severity, _Corrupter(name, severity, seed, batch_size, device), on_progress)
        written.extend(writer.finish(name, severity, severities))
    return list(dict.fromkeys(written))


class _Images:
    """Uniform batched access to an array or an image folder, as float ``(B, C, H, W)`` in [0, 1]."""

    def __init__(self, source: np.ndarray | ImageFolderSource, size: int | None) -> None:
        if isinstance(source, ImageFolderSource):
            self.folder: ImageFolderSource | None = source
            self.array: np.ndarray | None = None
            self.count = len(source.files)
        else:
            array = np.asarray(source)
            if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] not in (1, 3):
                raise ValueError(f"images must be uint8 (N, H, W, C) with C 1 or 3, got {array.dtype} {array.shape}")
            self.folder, self.array, self.count = None, array, len(array)
        self.size = size

    def load(self, indices: range) -> list[np.ndarray]:
        """Return uint8 ``(H, W, C)`` arrays for ``indices``."""
        if self.folder is None:
            return list(self.array[indices.start : indices.stop])  # type: ignore[index]
        root, files = self.folder.root, self.folder.files
        return [self._read(root / files[i]) for i in indices]

    def _read(self, path: Path) -> np.ndarray:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
            if self.size is not None:
                from torchvision.transforms import functional as TF

                image = TF.center_crop(TF.resize(image, round(self.size * 256 / 224)), [self.size, self.size])
            return np.asarray(image)


@dataclass(frozen=True)
class _Corrupter:
    name: str
    severity: int
    seed: int
    batch_size: int
    device: torch.device | str

    def __call__(self, arrays: list[np.ndarray], batch_index: int) -> list[np.ndarray]:
        """Corrupt a list of uint8 images (batched when they share a shape); return uint8 images."""
        from eval.corruptions import corrupt

        groups = [arrays] if len({a.shape for a in arrays}) == 1 else [[a] for a in arrays]
        results: list[np.ndarray] = []
        generator = torch.Generator(device=self.device).manual_seed(
            batch_seed(self.seed, self.name, self.severity, batch_index))
        for group in groups:
            x = torch.from_numpy(np.stack(group)).to(self.device).permute(0, 3, 1, 2).float() / 255
            y = corrupt(x, self.name, self.severity, generator=generator)
            results.extend(_to_uint8(y))
        return results


def _to_uint8(y: Tensor) -> list[np.ndarray]:
    return list((y * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())


class _NpyWriter:
    """The CIFAR-10-C layout; parts live in ``<out>/.parts/<corruption>/<severity>.npy`` until stacked."""

    def __init__(self, out: Path, images: _Images, labels: np.ndarray | None, severities: Sequence[int]) -> None:
        if images.array is None and images.size is None:
            raise ValueError("the npy layout needs images of one size: pass size=... for an image folder")
        self.out, self.images = out, images
        self.labels = np.asarray(labels)
        if len(self.labels) != images.count:
            raise ValueError(f"{images.count} images but {len(self.labels)} labels")
        _record_layout(out, NpyLayout(tuple(severities), images.count))

    def _part(self, name: str, severity: int) -> Path:
        return self.out / ".parts" / name / f"{severity}.npy"

    def is_done(self, name: str, severity: int) -> bool:
        return (self.out / f"{name}.npy").exists() or self._part(name, severity).exists()

    def write_part(self, name: str, severity: int, corrupter: _Corrupter, on_progress: Progress | None) -> None:
        chunks = []
        for k, start in enumerate(range(0, self.images.count, corrupter.batch_size)):
            batch = range(start, min(start + corrupter.batch_size, self.images.count))
            chunks.extend(corrupter(self.images.load(batch), k))
            if on_progress is not None:
                on_progress(len(batch))
        path = self._part(name, severity)
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_npy(path, np.stack(chunks))

    def finish(self, name: str, severity: int, severities: Sequence[int]) -> list[Path]:
        final = self.out / f"{name}.npy"
        labels = self.out / "labels.npy"
        if not labels.exists():
            _save_npy(labels, np.tile(self.labels, len(severities)))
        record = self.out / NPY_LAYOUT_FILE
        if severity != severities[-1] or final.exists():
            return [final, labels, record] if final.exists() else []
        _save_npy(final, np.concatenate([np.load(self._part(name, s)) for s in severities]))
        shutil.rmtree(self.out / ".parts" / name)
        if not any((self.out / ".parts").iterdir()):
            (self.out / ".parts").rmdir()
        return [final, labels, record]


def _record_layout(out: Path, layout: NpyLayout) -> None:
    """Record ``layout`` in ``out``, refusing a folder whose arrays already hold other severities or images."""
    labels = out / "labels.npy"
    rows = int(np.load(labels, mmap_mode="r").shape[0]) if labels.is_file() else layout.rows
    if (out / NPY_LAYOUT_FILE).is_file():
        found = read_npy_layout(out, rows)
        if (found.severities, found.per_severity) != (layout.severities, layout.per_severity):
            raise ValueError(f"{out} holds severities {list(found.severities)} of {found.per_severity} images "
                             f"({found.describe()}); write severities {list(layout.severities)} of "
                             f"{layout.per_severity} images to another --out folder")
    elif rows != layout.rows:
        raise ValueError(f"{labels} holds {rows} labels, not {len(layout.severities)} severities x "
                         f"{layout.per_severity} images; write to another --out folder")
    write_npy_layout(out, layout)


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


class _FolderWriter:
    """The ImageNet-C layout, one file per image; a ``.complete`` marker ends each part."""

    def __init__(self, out: Path, images: _Images, labels: np.ndarray | None) -> None:
        self.out, self.images = out, images
        if images.folder is not None:
            self.names = [str(p) for p in images.folder.files]
        else:
            if labels is None or len(labels) != images.count:
                raise ValueError("the folder layout of an array source needs one label per image")
            self.names = [f"{int(label)}/{i:05d}.png" for i, label in enumerate(labels)]

    def _dir(self, name: str, severity: int) -> Path:
        return self.out / name / str(severity)

    def is_done(self, name: str, severity: int) -> bool:
        return (self._dir(name, severity) / ".complete").exists()

    def write_part(self, name: str, severity: int, corrupter: _Corrupter, on_progress: Progress | None) -> None:
        part = self._dir(name, severity)
        for k, start in enumerate(range(0, self.images.count, corrupter.batch_size)):
            batch = range(start, min(start + corrupter.batch_size, self.images.count))
            targets = [part / self.names[i] for i in batch]
            if not all(t.exists() for t in targets):
                for target, image in zip(targets, corrupter(self.images.load(batch), k), strict=True):
                    if not target.exists():
                        _save_image(target, image)
            if on_progress is not None:
                on_progress(len(batch))
        (part / ".complete").touch()

    def finish(self, name: str, severity: int, severities: Sequence[int]) -> list[Path]:
        return [self._dir(name, severity)]


def _save_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    file_format = "JPEG" if jpeg else (Image.registered_extensions().get(path.suffix.lower()) or "PNG")
    picture.save(tmp, format=file_format, **({"quality": JPEG_QUALITY} if jpeg else {}))
    os.replace(tmp, path)
