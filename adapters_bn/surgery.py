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
    "check_module",
]

# BatchNorm1d/2d/3d and SyncBatchNorm all derive from _BatchNorm; torchvision's frozen variant does not.
BATCHNORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)
# Normalization layers without running statistics: only their affine parameters can adapt.
AFFINE_NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm)
NORM_TYPES: tuple[type[nn.Module], ...] = BATCHNORM_TYPES + AFFINE_NORM_TYPES


def check_module(value: object, what: str = "model") -> nn.Module:
    """Return ``value`` if it is an ``nn.Module``, so functions fail clearly before touching anything.

    Raises:
        TypeError: if ``value`` is not an ``nn.Module`` (a string, None, a tensor...).
    """
    if not isinstance(value, nn.Module):
        raise TypeError(f"expected {what} to be an nn.Module, got {type(value).__name__}")
    return value


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

    Raises:
        TypeError: if ``root`` is not an ``nn.Module``.
    """
    check_module(root, "root")
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
    """Return an iterator of ``(qualified_name, module)`` for every normalization layer of the given types.

    Raises:
        TypeError: at the call (not at the first ``next``) if ``root`` is not an ``nn.Module``.
    """
    check_module(root)
    return ((name, module) for name, module in root.named_modules() if isinstance(module, types))


def iter_batchnorms(root: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Return an iterator of ``(qualified_name, module)`` for every BatchNorm that holds running statistics.

    Raises:
        TypeError: at the call (not at the first ``next``) if ``root`` is not an ``nn.Module``.
    """
    check_module(root)
    return ((name, module) for name, module in root.named_modules() if is_batchnorm(module))
