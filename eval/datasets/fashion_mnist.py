"""Fashion-MNIST from local IDX files (gzipped or not); never downloads.

The folder is found in this order: the ``data_root`` argument (``--data-root`` on the command
line), the ``TTA_FASHION_MNIST`` environment variable, then Debian's ``dataset-fashion-mnist``
package at ``/usr/share/datasets/fashion-mnist``.
"""

from __future__ import annotations

import gzip
import os
import zlib
from math import prod
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DEBIAN_FASHION_MNIST",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ENV",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "load_fashion_mnist",
    "read_idx",
    "resolve_fashion_mnist_root",
    "write_idx",
]

Split = Literal["train", "test"]

FASHION_MNIST_ENV = "TTA_FASHION_MNIST"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""Image and label file stems per split; each may also carry a ``.gz`` suffix."""

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

# Pixel mean and std of the 60,000 training images, in [0, 1] units.
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_DTYPE_CODES = {np.dtype(code).newbyteorder("="): byte for byte, code in _IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as error:
        raise ValueError(f"{path}: corrupt or truncated gzip stream ({error})") from error


def _parse_header(path: Path, raw: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(
            f"{path}: bad IDX magic number {raw[:4].hex() or '(empty file)'}; expected 0x0000TTNN with "
            f"type TT in {[hex(code) for code in _IDX_DTYPES]} and NN >= 1 dimensions"
        )
    ndim, offset = raw[3], 4 + 4 * raw[3]
    if len(raw) < offset:
        raise ValueError(f"{path}: truncated IDX header: expected {offset} bytes for {ndim} dims, found {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    return np.dtype(_IDX_DTYPES[raw[2]]), dims, offset


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a native-byte-order numpy array.

    Args:
        path: An IDX file; gzip compression is detected from the content, not the name.

    Returns:
        The array, with the shape and type given by the file's header.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the magic number is wrong or the data is shorter or longer than the header says.
    """
    path = Path(path)
    raw = _read_bytes(path)
    dtype, dims, offset = _parse_header(path, raw)
    expected = prod(dims) * dtype.itemsize
    if len(raw) - offset != expected:
        kind = "truncated" if len(raw) - offset < expected else "oversized"
        raise ValueError(
            f"{path}: {kind} IDX file: header says {dims} x {dtype.itemsize} bytes = {expected} data bytes, "
            f"found {len(raw) - offset}"
        )
    data = np.frombuffer(raw, dtype=dtype, count=prod(dims), offset=offset).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: np.ndarray | Tensor) -> Path:
    """Write an array as an IDX file, gzipped when ``path`` ends in ``.gz``.

    Args:
        path: Destination file.
        array: Data of type uint8, int8, int16, int32, float32 or float64, at least one dimension.

    Returns:
        The destination path.

    Raises:
        TypeError: If the array's type has no IDX code.
    """
    data = array.numpy() if isinstance(array, Tensor) else np.asarray(array)
    code = _DTYPE_CODES.get(data.dtype.newbyteorder("="))
    if code is None or data.ndim == 0:
        allowed = list(_IDX_DTYPES.values())
        raise TypeError(f"cannot write {data.dtype} with {data.ndim} dims as IDX; use one of {allowed}")
    header = bytes([0, 0, code, data.ndim]) + np.asarray(data.shape, dtype=">u4").tobytes()
    payload = header + data.astype(_IDX_DTYPES[code]).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(payload, mtime=0) if path.suffix == ".gz" else payload)
    return path


_TORCHVISION_SUBFOLDERS = (Path("FashionMNIST", "raw"), Path("raw"))
"""Where torchvision's ``FashionMNIST(root)`` keeps the IDX files below ``root`` (or below ``root/FashionMNIST``)."""


def _find_file(root: Path, stem: str) -> Path | None:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    return None


def _missing_message(root: Path, source: str, missing: list[str]) -> str:
    names = ", ".join(f"{stem}[.gz]" for stem in missing)
    return (
        f"Fashion-MNIST files not found in {root} nor in its FashionMNIST/raw/ (torchvision's layout; "
        f"{root} taken from {source}): missing {names}. "
        f"Places looked at, in order: the data_root argument / --data-root, the {FASHION_MNIST_ENV} "
        f"environment variable, then {DEBIAN_FASHION_MNIST}. Fix: pass --data-root DIR, set "
        f"{FASHION_MNIST_ENV}=DIR, or `apt-get install dataset-fashion-mnist`."
    )


def resolve_fashion_mnist_root(
    data_root: str | os.PathLike[str] | None = None, *, splits: tuple[Split, ...] = ("train", "test")
) -> Path:
    """Return the folder holding the Fashion-MNIST IDX files.

    The folder is ``data_root`` if given, else ``$TTA_FASHION_MNIST`` if set, else
    :data:`DEBIAN_FASHION_MNIST`. The files are taken from that folder, else from torchvision's
    layout below it (``FashionMNIST/raw/``, or ``raw/`` when it is torchvision's ``FashionMNIST``
    folder); it is not searched further.

    Args:
        data_root: An explicit folder (``--data-root``).
        splits: The splits whose image and label files must be present.

    Returns:
        The chosen folder.

    Raises:
        FileNotFoundError: If a needed file is absent; the message names the files, the places
            looked at and how to fix it.
    """
    if data_root is not None:
        root, source = Path(data_root), "the data_root argument"
    elif os.environ.get(FASHION_MNIST_ENV):
        root, source = Path(os.environ[FASHION_MNIST_ENV]), f"${FASHION_MNIST_ENV}"
    else:
        root, source = DEBIAN_FASHION_MNIST, "the Debian default"
    stems = [stem for split in splits for stem in FASHION_MNIST_FILES[split]]
    for folder in (root, *(root / sub for sub in _TORCHVISION_SUBFOLDERS)):
        if all(_find_file(folder, stem) is not None for stem in stems):
            return folder
    missing = [stem for stem in stems if _find_file(root, stem) is None]
    raise FileNotFoundError(_missing_message(root, source, missing))


def load_fashion_mnist(split: Split, data_root: str | os.PathLike[str] | None = None) -> tuple[Tensor, Tensor]:
    """Load one Fashion-MNIST split as tensors.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        data_root: Folder of IDX files; see :func:`resolve_fashion_mnist_root` for the fallbacks.

    Returns:
        ``(images, labels)``: uint8 ``(N, 1, 28, 28)`` and int64 ``(N,)`` with values in ``0..9``.

    Raises:
        FileNotFoundError: If the files are absent.
        ValueError: If ``split`` is unknown or the files are malformed or disagree.
    """
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; use one of {list(FASHION_MNIST_FILES)}")
    root = resolve_fashion_mnist_root(data_root, splits=(split,))
    image_file, label_file = (_find_file(root, stem) for stem in FASHION_MNIST_FILES[split])
    images, labels = read_idx(image_file), read_idx(label_file)  # type: ignore[arg-type]
    _check_split_arrays(images, labels, image_file, label_file)  # type: ignore[arg-type]
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _check_split_arrays(images: np.ndarray, labels: np.ndarray, image_file: Path, label_file: Path) -> None:
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        found = f"{images.dtype} {images.shape}"
        raise ValueError(f"{image_file}: expected uint8 images of shape (N, 28, 28), found {found}")
    if labels.ndim != 1 or len(labels) != len(images):
        found = f"shape {labels.shape}"
        raise ValueError(f"{label_file}: expected {len(images)} labels to match {image_file}, found {found}")
    if labels.size and not 0 <= int(labels.min()) <= int(labels.max()) < len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{label_file}: labels must lie in 0..9, found {labels.min()}..{labels.max()}")
