"""Benchmark models from architecture names and local weights; no downloads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from eval.models.architectures import ModelSpec, build_model


def test_torchvision_name_with_local_weights_and_normalization_inside(tmp_path: Path) -> None:
    reference = torchvision.models.resnet18(num_classes=10).eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, tmp_path / "w.pth")
    spec = ModelSpec("resnet18", tmp_path / "w.pth", num_classes=10)
    model = build_model(spec)
    x = torch.rand(2, 3, 32, 32)
    normalized = (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), reference(normalized))
    assert "resnet18:w.pth@" in spec.describe()


def test_missing_weights_say_where_to_put_them(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded.*--weights"):
        build_model(ModelSpec("resnet18", tmp_path / "absent.pth"))


def test_mismatched_weights_and_unknown_arch_are_clear(tmp_path: Path) -> None:
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="does not fit"):
        build_model(ModelSpec("mobilenet_v3_small", tmp_path / "r18.pth", num_classes=10))
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model(ModelSpec("resnet_999", tmp_path / "r18.pth"))
    with pytest.raises(ValueError, match="cannot find function 'fn' in module 'no_such_module'"):
        build_model(ModelSpec("no_such_module:fn", tmp_path / "r18.pth"))
    with pytest.raises(ValueError, match="cannot find function 'no_such_fn' in module 'torchvision.models'"):
        build_model(ModelSpec("torchvision.models:no_such_fn", tmp_path / "r18.pth"))


def test_wrong_number_of_classes_is_a_value_error(tmp_path: Path) -> None:
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="does not fit"):
        build_model(ModelSpec("resnet18", tmp_path / "r18.pth", num_classes=1000))
