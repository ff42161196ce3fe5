"""Tests for eval.training.source_model: augmentation and a tiny end-to-end train_source run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eval.datasets import FASHION_MNIST_FILES, write_idx
from eval.models.source import load_source_model
from eval.training.source_model import augment_batch, evaluate_accuracy, train_source


@pytest.fixture(scope="module", autouse=True)
def warm_optimizer() -> None:
    """Pay torch's one-time lazy imports of the first optimizer step (seconds) outside the timed tests."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    parameter.grad = torch.ones(1)
    torch.optim.SGD([parameter], lr=0.1, momentum=0.9, nesterov=True).step()


def write_learnable_folder(root: Path, *, train: int = 192, test: int = 64) -> Path:
    """Write a tiny IDX folder whose class is the image's brightness level, so one epoch learns something."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("test", test)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        noise = rng.integers(0, 20, (count, 28, 28))
        images = (labels[:, None, None].astype(np.int64) * 23 + noise).clip(0, 255).astype(np.uint8)
        image_stem, label_stem = FASHION_MNIST_FILES[split]
        write_idx(root / f"{image_stem}.gz", images)
        write_idx(root / f"{label_stem}.gz", labels)
    return root


def test_augment_batch_is_seeded_shift_and_flip() -> None:
    x = torch.rand(6, 1, 28, 28)
    first = augment_batch(x, torch.Generator().manual_seed(0))
    assert first.shape == x.shape
    assert torch.equal(first, augment_batch(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(first, augment_batch(x, torch.Generator().manual_seed(1)))
    # A shift by at most 2 pixels keeps the central 24x24 window's pixels inside the output.
    centre = x[0, 0, 2:-2, 2:-2]
    assert torch.isin(centre, first[0]).all() or torch.isin(centre.flip(1), first[0]).all()


def test_evaluate_accuracy_counts_correct_predictions() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
        model[1].bias.zero_()
    images = torch.tensor([[255, 0, 0, 0], [0, 255, 0, 0], [255, 0, 0, 0]], dtype=torch.uint8).view(3, 1, 2, 2)
    assert evaluate_accuracy(model, images, torch.tensor([0, 1, 1]), batch_size=2) == pytest.approx(2 / 3)


def test_train_source_writes_loadable_reproducible_checkpoint(tmp_path: Path) -> None:
    root = write_learnable_folder(tmp_path / "data")
    calls: list[tuple[int, int, float]] = []
    kwargs = {"data_root": root, "epochs": 1, "batch_size": 32, "lr": 0.05, "seed": 3, "width": 4}
    result = train_source(tmp_path / "out" / "model.pt", progress=lambda *a: calls.append(a), **kwargs)
    assert result["epochs"] == 1 and result["steps"] == 6 and [c[:2] for c in calls] == [(s, 6) for s in range(1, 7)]
    assert 0.0 <= result["clean_test_accuracy"] <= 1.0
    model = load_source_model(result["out"])
    record = torch.load(result["out"], weights_only=True)
    assert record["train_config"]["lr"] == 0.05 and record["train_config"]["data_root"] == str(root)
    assert record["clean_test_accuracy"] == result["clean_test_accuracy"]
    again = train_source(tmp_path / "again.pt", **kwargs)
    rerun = load_source_model(again["out"])
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, rerun.state_dict()[name]), name


def test_train_source_missing_data_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="TTA_FASHION_MNIST"):
        train_source(tmp_path / "model.pt", data_root=tmp_path / "empty", epochs=1, lr=0.1)
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"lr": 0.0}, {"batch_size": 0}, {"width": 0}])
def test_train_source_rejects_bad_arguments(tmp_path: Path, bad: dict[str, float]) -> None:
    kwargs = {"epochs": 1, "lr": 0.1, **bad}
    with pytest.raises(ValueError):
        train_source(tmp_path / "model.pt", data_root=tmp_path, **kwargs)
