"""Tiny models and synthetic domains for fast behaviour tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import VisionTransformer, resnet18

import tta
from tests.tta.projection.tiny_denoiser import TinyDenoiser
from tta import registry
from tta.base import Need, TTAMethod
from tta.registry import get_adapter_class, register_adapter


def seeded(build: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    """Build a model with its own fixed random initialization, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def tiny_classifier(norm: str = "bn", num_classes: int = 10) -> nn.Module:
    """Return conv-norm-ReLU x2 -> pool -> linear for 3x16x16 input (BN, GN or none), the same each call."""

    def make_norm(channels: int) -> nn.Module:
        if norm == "bn":
            return nn.BatchNorm2d(channels)
        if norm == "gn":
            return nn.GroupNorm(2, channels)
        if norm == "none":
            return nn.Identity()
        raise ValueError(norm)

    model = seeded(lambda: nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), make_norm(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2), make_norm(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    ))
    randomize_bn_statistics(model)
    return model.eval()


def randomize_bn_statistics(model: nn.Module) -> nn.Module:
    """Give every BN non-trivial running statistics and affine values, as a trained model would have."""
    generator = torch.Generator().manual_seed(123)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            if module.affine:
                module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.data.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
    return model


def small_resnet(norm: str = "bn") -> nn.Module:
    """Return a torchvision ResNet-18 with BatchNorm or GroupNorm, 10 classes, in eval mode."""
    norm_layer = None if norm == "bn" else (lambda c: nn.GroupNorm(8, c))
    return randomize_bn_statistics(seeded(lambda: resnet18(num_classes=10, norm_layer=norm_layer))).eval()


def small_vit() -> nn.Module:
    """Return a 2-layer torchvision ViT for 3x16x16 input (LayerNorm only), in eval mode.

    torchvision zero-initializes the head; a random head gives non-trivial predictions to adapt on.
    """

    def build() -> nn.Module:
        vit = VisionTransformer(
            image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
        )
        nn.init.normal_(vit.heads.head.weight, std=0.5)
        return vit

    return seeded(build).eval()


def analytic_bn_model() -> nn.Module:
    """Return BN on one input channel -> mean pool -> fixed rule ``class = [x > 0, x < 0]``.

    Source statistics are mean 0, var 1: a batch shifted by +5 is all called class 0 with source
    statistics, and classified correctly with its own (balanced) batch statistics.
    """
    head = nn.Linear(1, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        head.bias.zero_()
    return nn.Sequential(nn.BatchNorm2d(1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()


def shifted_batch(n: int = 16, shift: float = 5.0) -> tuple[Tensor, Tensor]:
    """Return a balanced batch for :func:`analytic_bn_model`: class 0 near +1, class 1 near -1, plus ``shift``."""
    generator = torch.Generator().manual_seed(7)
    y = torch.arange(n) % 2
    centers = torch.where(y == 0, 1.0, -1.0).view(n, 1, 1, 1)
    x = centers + 0.1 * torch.randn(n, 1, 4, 4, generator=generator) + shift
    return x, y


def state_equal(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    """Return whether two state dicts have the same keys and bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def clone_state(module: nn.Module) -> dict[str, Tensor]:
    """Return a detached deep copy of ``module.state_dict()``."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def tiny_rgb_classifier(num_classes: int = 10) -> nn.Module:
    """Return a conv-BN classifier for any RGB size with ``num_classes`` outputs (architecture factory for tests)."""
    return seeded(lambda: nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
    ))


def tiny_source_data() -> list[tuple[Tensor, Tensor]]:
    """Two labeled random batches for :func:`tiny_classifier`, standing in for a method's source data."""
    generator = torch.Generator().manual_seed(11)
    return [(torch.rand(8, 3, 16, 16, generator=generator), torch.randint(0, 10, (8,), generator=generator))
            for _ in range(2)]


NEED_SUPPLIES: dict[Need, Callable[[], object]] = {"denoiser": TinyDenoiser, "source_data": tiny_source_data}
"""A fresh tiny supply for each need a method can declare (``TTAMethod.needs``), for the tiny classifier."""


def method_options(name: str, **options: Any) -> dict[str, Any]:
    """Options that build registered method ``name`` quickly on the tiny classifier, from its declarations.

    Its ``quick_options``, a tiny supply of each of its ``needs`` not given, then ``options`` (which win).
    """
    cls = get_adapter_class(name)
    supplied: dict[str, object] = {need: NEED_SUPPLIES[need]() for need in sorted(cls.needs) if need not in options}
    return {**cls.quick_options, **supplied, **options}


def build_method(name: str, model: nn.Module | None = None, **options: Any) -> TTAMethod:
    """Wrap ``model`` (default: a fresh :func:`tiny_classifier`) with registered method ``name`` as declared.

    For ``production=True`` (a guard) call ``tta.wrap(model, name, **method_options(name, ...))`` instead.
    """
    adapter = tta.wrap(tiny_classifier() if model is None else model, name, **method_options(name, **options))
    assert isinstance(adapter, TTAMethod), f"build_method returns the method itself; got {type(adapter).__name__}"
    return adapter


@contextmanager
def registered(name: str, cls: type[TTAMethod]) -> Iterator[str]:
    """Register test-only method ``cls`` as ``name`` (declarations checked) for the block only; yields ``name``."""
    register_adapter(name)(cls)
    try:
        yield name
    finally:
        del registry._REGISTRY[name]
