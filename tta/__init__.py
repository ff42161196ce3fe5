"""Test-time adaptation for deployed PyTorch classifiers: ``tta.wrap(model, "tent")`` and friends."""

from tta import methods as _methods  # noqa: F401  (registers the built-in methods)
from tta.base import TTAMethod
from tta.checks import check_batch
from tta.onnx.export import export_onnx
from tta.ema import ema_update_
from tta.losses import soft_cross_entropy, softmax_entropy, symmetric_cross_entropy
from tta.methods import CoTTA, LAME, Norm, Source, Tent
from tta.params import count_trainable, norm_affine_parameters, requires_grad_only
from tta.registry import create_adapter, list_methods, method_options, register_adapter
from tta.wrap import wrap

__version__ = "0.1.0"  # the distribution's version (pyproject reads it from here)

__all__ = [
    "__version__",
    "CoTTA",
    "LAME",
    "Norm",
    "Source",
    "TTAMethod",
    "Tent",
    "check_batch",
    "count_trainable",
    "create_adapter",
    "ema_update_",
    "export_onnx",
    "list_methods",
    "method_options",
    "norm_affine_parameters",
    "register_adapter",
    "requires_grad_only",
    "soft_cross_entropy",
    "softmax_entropy",
    "symmetric_cross_entropy",
    "wrap",
]
