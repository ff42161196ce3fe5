"""Find and replace normalization layers anywhere in a model, returning the new root."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = [
    "BATCHNORM_TYPES",
    "AFFINE_NORM_TYPES",
    "NORM_TYPES",
    "replace_modules",
    "iter_batchnorms",
    "iter_norm_layers",
    "is_batchnorm",
]

# BatchNorm1d/2d/3d and SyncBatchNorm all derive from _BatchNorm; torchvision's frozen variant does not.
BATCHNORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)
# Normalization layers without running statistics: only their affine parameters can adapt.
AFFINE_NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm)
NORM_TYPES: tuple[type[nn.Module], ...] = BATCHNORM_TYPES + AFFINE_NORM_TYPES


def is_batchnorm(module: nn.Module) -> bool:
    """Return whether ``module`` is a BatchNorm with running statistics (any dimension, sync or frozen)."""
    if isinstance(module, FrozenBatchNorm2d):
        return True
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None


def replace_modules(
    root: nn.Module,
    match: Callable[[str, nn.Module], bool],
    build: Callable[[nn.Module], nn.Module],
    prefix: str = "",
) -> nn.Module:
    """Replace every submodule for which ``match(name, module)`` holds by ``build(module)``.

    Works in place on ``root``'s children and returns the new root, so ``root`` may itself match
    (the timm ``freeze_batch_norm_2d`` pattern). A matched module's children are not visited.
    """
    if match(prefix, root):
        return build(root)
    for name, child in list(root.named_children()):
        full = f"{prefix}.{name}" if prefix else name
        new = replace_modules(child, match, build, full)
        if new is not child:
            setattr(root, name, new)
    return root


def iter_norm_layers(
    root: nn.Module, types: tuple[type[nn.Module], ...] = NORM_TYPES
) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(qualified_name, module)`` for every normalization layer of the given types."""
    for name, module in root.named_modules():
        if isinstance(module, types):
            yield name, module


def iter_batchnorms(root: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(qualified_name, module)`` for every BatchNorm layer that holds running statistics."""
    for name, module in root.named_modules():
        if is_batchnorm(module):
            yield name, module
