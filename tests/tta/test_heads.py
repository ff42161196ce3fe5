"""split_classifier on torchvision ResNet-18, MobileNetV3-Small, VisionTransformer, the Fashion-MNIST ResNet."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torchvision.models import mobilenet_v3_small

from eval.models.source import fmnist_resnet, with_normalization
from tests.helpers import seeded, small_resnet, small_vit
from tta.heads import split_classifier


def _mobilenet() -> nn.Module:
    return seeded(lambda: mobilenet_v3_small(num_classes=10)).eval()


def _fmnist() -> nn.Module:
    return seeded(lambda: fmnist_resnet(width=4)).eval()


CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], str, int]] = {
    "resnet18": (small_resnet, (2, 3, 16, 16), "fc", 512),
    "mobilenet_v3_small": (_mobilenet, (2, 3, 16, 16), "classifier", 576),
    "vit": (small_vit, (2, 3, 16, 16), "heads", 32),
    "fmnist_resnet": (_fmnist, (2, 1, 28, 28), "fc", 16),
}


@pytest.mark.parametrize("name", list(CASES))
def test_split_classifier_recomposes_the_model(name: str) -> None:
    build, shape, attribute, dim = CASES[name]
    model = build()
    x = torch.rand(shape)
    features, head = split_classifier(model)
    with torch.no_grad():
        f = features(x)
        assert f.shape == (shape[0], dim)
        assert torch.allclose(head(f), model(x), atol=1e-6)
    assert head is getattr(model, attribute)


def test_split_classifier_shares_parameters_with_the_model() -> None:
    model = _fmnist()
    features, head = split_classifier(model)
    model_params = {id(p) for p in model.parameters()}
    assert {id(p) for p in features.parameters()} <= model_params
    assert {id(p) for p in head.parameters()} <= model_params


class _Unconventional(nn.Module):
    """A classifier whose head follows no convention: the caller must name it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out = nn.Linear(4, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x))


def test_split_classifier_unconventional_head_must_be_named() -> None:
    model = _Unconventional()
    with pytest.raises(ValueError, match="head="):
        split_classifier(model)
    assert split_classifier(model, head="out")[1] is model.out


def test_split_classifier_named_head_in_a_wrapped_model() -> None:
    model = with_normalization(_fmnist(), mean=[0.5], std=[0.25])
    assert split_classifier(model)[1] is model.model.fc  # found through the Sequential's last child
    features, head = split_classifier(model, head="model.fc")
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(head(features(x)), model(x), atol=1e-6)
    assert head is model.model.fc


def test_split_classifier_unknown_head_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no submodule 'model.head'"):
        split_classifier(_fmnist(), head="model.head")


class _TimmLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def test_split_classifier_uses_the_timm_interface() -> None:
    model = _TimmLike()
    features, head = split_classifier(model)
    x = torch.rand(2, 3, 8, 8)
    assert head is model.fc
    assert torch.equal(head(features(x)), model(x))


class _TwiceHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.fc(x))


def test_split_classifier_head_called_twice_is_a_clear_error() -> None:
    features, _ = split_classifier(_TwiceHead())
    with pytest.raises(ValueError, match="called 2 times"):
        features(torch.rand(2, 4))


def test_sequential_conventions_find_wrapped_and_trailing_linear_heads() -> None:
    import torchvision

    from eval.models.source import with_normalization
    from tests.helpers import tiny_classifier
    from tta.heads import split_classifier

    wrapped = with_normalization(torchvision.models.resnet18(num_classes=10).eval(), [0.5] * 3, [0.25] * 3)
    features, head = split_classifier(wrapped)
    assert head is wrapped.model.fc
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(head(features(x)), wrapped(x))
    tiny = tiny_classifier()
    assert split_classifier(tiny)[1] is tiny[8]
