"""Re-orderable on-disk loaders: the label-shift and sample-mixed streams read batch by batch, same batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval.datasets.folder import ImageFolderDomain
from eval.datasets.indexed import IndexedLoader, dataset_labels
from eval.datasets.npy import NpyCorruptionDomain
from eval.domains import Domain
from eval.protocols.registry import get_protocol
from eval.protocols.streams import StreamItem

N = 40  # images per severity
DOMAINS = (Domain("gaussian_noise", 5), Domain("fog", 5))


@pytest.fixture
def npy_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("gaussian_noise", "fog"):
        np.save(tmp_path / f"{name}.npy", rng.integers(0, 256, (5 * N, 8, 8, 3), dtype=np.uint8))
    np.save(tmp_path / "labels.npy", np.tile(rng.integers(0, 10, N), 5).astype(np.int64))
    return tmp_path


class _Counting(NpyCorruptionDomain):
    """Counts the items read, to show that a stream reads what it uses, when it uses it."""

    reads = 0

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        type(self).reads += 1
        return super().__getitem__(index)


def _loaders(root: Path, indexed: bool) -> dict[Domain, object]:
    loaders: dict[Domain, object] = {}
    for domain in DOMAINS:
        data = NpyCorruptionDomain(root, domain)
        labels = dataset_labels(data)
        assert labels is not None
        loader = IndexedLoader(data, labels, batch_size=16)
        loaders[domain] = loader if indexed else list(loader)  # a plain list: held in memory, re-ordered there
    return loaders


def _items(protocol: str, loaders: dict[Domain, object]) -> list[StreamItem]:
    return list(get_protocol(protocol, seed=3).stream(loaders))  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", ["class-sorted", "dirichlet", "mixed-samples"])
def test_indexed_stream_equals_the_in_memory_stream(npy_root: Path, protocol: str) -> None:
    indexed, in_memory = _items(protocol, _loaders(npy_root, True)), _items(protocol, _loaders(npy_root, False))
    assert len(indexed) == len(in_memory) > 2
    for a, b in zip(indexed, in_memory, strict=True):
        assert a.domain == b.domain and a.reset == b.reset and a.sample_domains == b.sample_domains
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    if protocol == "class-sorted":
        assert all(bool((item.y[1:] >= item.y[:-1]).all()) for item in indexed)


def test_indexed_stream_reads_only_the_batches_it_has_yielded(npy_root: Path) -> None:
    data = _Counting(npy_root, DOMAINS[0])
    loader = IndexedLoader(data, dataset_labels(data), batch_size=16)  # type: ignore[arg-type]
    _Counting.reads = 0
    stream = get_protocol("class-sorted").stream({DOMAINS[0]: loader})
    first = next(iter(stream))
    assert first.x.shape[0] == 16 and _Counting.reads == 16  # not the whole domain


def test_labels_come_without_reading_images(npy_root: Path, tmp_path: Path) -> None:
    data = _Counting(npy_root, DOMAINS[1], limit=10)
    _Counting.reads = 0
    labels = dataset_labels(torch.utils.data.Subset(data, [3, 1]))
    assert labels is not None and _Counting.reads == 0
    assert labels.tolist() == [int(data.labels[3]), int(data.labels[1])]
    folder = tmp_path / "imagenet-c" / "fog" / "5"
    for wnid in ("n01", "n02"):
        (folder / wnid).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(folder / wnid / "a.JPEG")
    assert dataset_labels(ImageFolderDomain(tmp_path / "imagenet-c", Domain("fog", 5), preprocess="none")).tolist() == [0, 1]
    assert dataset_labels(torch.utils.data.TensorDataset(torch.zeros(2), torch.zeros(2))) is None
    with pytest.raises(ValueError, match="3 labels for a dataset of 10 items"):
        IndexedLoader(data, torch.zeros(3, dtype=torch.long), batch_size=4)
