"""What adapts: selecting normalization affine parameters and freezing everything else."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from adapters_bn import NORM_TYPES, AdaptiveBatchNorm

__all__ = ["ADAPTABLE_NORM_TYPES", "norm_affine_parameters", "requires_grad_only", "count_trainable"]

ADAPTABLE_NORM_TYPES: tuple[type[nn.Module], ...] = NORM_TYPES + (AdaptiveBatchNorm,)


def norm_affine_parameters(
    model: nn.Module, types: tuple[type[nn.Module], ...] = ADAPTABLE_NORM_TYPES
) -> list[tuple[str, nn.Parameter]]:
    """Return ``(qualified_name, parameter)`` for the weight and bias of every normalization layer.

    Covers BatchNorm (plain or adaptive), LayerNorm and GroupNorm; layers without affine
    parameters contribute nothing. Order follows ``model.named_modules()``, as in Tent's
    ``collect_params``.
    """
    selected = []
    for module_name, module in model.named_modules():
        if not isinstance(module, types):
            continue
        for param_name, param in module.named_parameters(recurse=False):
            if param_name in ("weight", "bias"):
                selected.append((f"{module_name}.{param_name}" if module_name else param_name, param))
    return selected


def requires_grad_only(model: nn.Module, names: Iterable[str]) -> nn.Module:
    """Enable gradients for the named parameters only and disable all others, in place; returns ``model``.

    Raises:
        ValueError: if a name is not a parameter of ``model``.
    """
    wanted = set(names)
    params = dict(model.named_parameters())
    unknown = wanted - params.keys()
    if unknown:
        raise ValueError(f"not parameters of the model: {sorted(unknown)}")
    for name, param in params.items():
        param.requires_grad_(name in wanted)
    return model


def count_trainable(model: nn.Module) -> int:
    """Return the number of scalar parameters that require gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
