"""Tests for eval.models.source: input normalisation, the Fashion-MNIST ResNet and checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from eval.datasets import DEBIAN_FASHION_MNIST, load_fashion_mnist
from eval.models.source import (
    ARCH,
    DEFAULT_CHECKPOINT,
    FashionMNISTResNet,
    Standardize,
    fmnist_resnet,
    load_source_model,
    save_checkpoint,
    with_normalization,
)

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def checkpoint_record(model: FashionMNISTResNet, width: int) -> dict[str, object]:
    return {
        "state_dict": model.state_dict(), "arch": ARCH, "arch_kwargs": {"num_classes": 10, "width": width},
        "clean_test_accuracy": 0.5, "train_config": {"epochs": 0}, "torch_version": torch.__version__,
    }  # fmt: skip


def test_with_normalization_standardizes_each_channel() -> None:
    mean, std = [0.2, 0.4, 0.6], [0.5, 0.25, 2.0]
    wrapped = with_normalization(nn.Identity(), mean, std)
    x = torch.rand(2, 3, 4, 4)
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(wrapped(x), expected)


def test_with_normalization_keeps_model_and_adds_no_norm_layer() -> None:
    inner = nn.Linear(3, 2)
    wrapped = with_normalization(inner, [0.5], [0.5])
    assert wrapped.model is inner
    assert isinstance(wrapped.normalize, Standardize)
    assert not any(isinstance(module, NORM_TYPES) for module in wrapped.normalize.modules())
    assert list(wrapped.normalize.parameters()) == []
    assert {name for name, _ in wrapped.normalize.named_buffers()} == {"mean", "std"}


def test_standardize_rejects_bad_constants() -> None:
    with pytest.raises(ValueError, match="positive"):
        Standardize([0.5], [0.0])
    with pytest.raises(ValueError, match="same non-zero length"):
        Standardize([0.5, 0.5], [0.2])


def test_standardize_state_is_two_buffers() -> None:
    module = Standardize([0.5], [0.5])
    assert set(module.state_dict()) == {"mean", "std"}
    assert module(torch.full((1, 1, 2, 2), 0.5)).abs().max() == 0


def test_fmnist_resnet_output_shape_and_size() -> None:
    model = fmnist_resnet().eval()
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    num_parameters = sum(p.numel() for p in model.parameters())
    assert 50_000 < num_parameters < 300_000
    assert isinstance(model.fc, nn.Linear) and model.fc.in_features == 64
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 9
    assert model.forward_features(torch.rand(2, 1, 28, 28)).shape == (2, 64)


def test_fmnist_resnet_width_and_classes_are_configurable() -> None:
    model = fmnist_resnet(num_classes=4, width=4)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 4)
    assert model.fc.in_features == 16
    with pytest.raises(ValueError, match="width"):
        fmnist_resnet(width=0)


def test_load_source_model_round_trips_checkpoint(tmp_path: Path) -> None:
    model = fmnist_resnet(width=4).eval()
    path = save_checkpoint(tmp_path / "sub" / "model.pt", checkpoint_record(model, width=4))
    loaded = load_source_model(path)
    assert not loaded.training
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["model.pt"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_load_source_model_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tta train-source") as info:
        load_source_model(tmp_path / "absent.pt")
    assert str(tmp_path / "absent.pt") in str(info.value)


def test_load_source_model_rejects_non_checkpoints(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage.pt is not readable: corrupt or not a file written by torch.save"):
        load_source_model(garbage)
    bare = tmp_path / "bare.pt"
    torch.save(fmnist_resnet(width=4).state_dict(), bare)
    with pytest.raises(ValueError, match="not a source-model checkpoint"):
        load_source_model(bare)


def test_load_source_model_rejects_wrong_arch_and_weights(tmp_path: Path) -> None:
    record = checkpoint_record(fmnist_resnet(width=4), width=4)
    path = save_checkpoint(tmp_path / "other.pt", {**record, "arch": "resnet50"})
    with pytest.raises(ValueError, match="resnet50"):
        load_source_model(path)
    path = save_checkpoint(tmp_path / "mismatch.pt", {**record, "arch_kwargs": {"num_classes": 10, "width": 8}})
    with pytest.raises(ValueError, match="do not match"):
        load_source_model(path)


def test_save_checkpoint_requires_all_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="torch_version"):
        save_checkpoint(tmp_path / "x.pt", {"state_dict": {}, "arch": ARCH})
    assert not any(tmp_path.iterdir())


def test_shipped_checkpoint_is_small_and_records_training() -> None:
    assert DEFAULT_CHECKPOINT.stat().st_size < 2 * 1024 * 1024
    record = torch.load(DEFAULT_CHECKPOINT, weights_only=True)
    assert record["arch"] == ARCH and record["clean_test_accuracy"] >= 0.9
    assert {"epochs", "lr", "seed", "batch_size", "width"} <= set(record["train_config"])


@pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"Debian's dataset-fashion-mnist is not installed at {DEBIAN_FASHION_MNIST}",
)
@torch.no_grad()
def test_shipped_checkpoint_is_accurate_on_real_test_images() -> None:
    model = load_source_model()
    images, labels = load_fashion_mnist("test", DEBIAN_FASHION_MNIST)
    predictions = model(images[:1000].float() / 255).argmax(1)
    assert (predictions == labels[:1000]).float().mean() >= 0.85
