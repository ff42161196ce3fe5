"""Test-time adaptation for deployed PyTorch classifiers: ``tta.wrap(model, "tent")`` and friends."""

from tta import methods as _methods  # noqa: F401  (registers the built-in methods)
from tta.base import TTAMethod, check_batch
from tta.losses import softmax_entropy
from tta.methods import Norm, Source, Tent
from tta.params import count_trainable, norm_affine_parameters, requires_grad_only
from tta.registry import adapter_options, create_adapter, list_adapters, register_adapter
from tta.wrap import wrap

list_methods = list_adapters

__all__ = [
    "Norm",
    "Source",
    "TTAMethod",
    "Tent",
    "adapter_options",
    "check_batch",
    "count_trainable",
    "create_adapter",
    "list_adapters",
    "list_methods",
    "norm_affine_parameters",
    "register_adapter",
    "requires_grad_only",
    "softmax_entropy",
    "wrap",
]
