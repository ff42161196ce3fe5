"""Normalization-layer surgery: find norm layers, make BatchNorm statistics adaptive, restore, fold."""

from adapters_bn.convert import (
    adapt_batchnorm,
    fold_batchnorm,
    freeze_statistics,
    iter_adaptive,
    restore_batchnorm,
    set_statistics,
)
from adapters_bn.layers import BN_STATS, AdaptiveBatchNorm, BNStats
from adapters_bn.stats import recompute_statistics
from adapters_bn.surgery import (
    AFFINE_NORM_TYPES,
    BATCHNORM_TYPES,
    NORM_TYPES,
    is_batchnorm,
    iter_batchnorms,
    iter_norm_layers,
    replace_modules,
)

__all__ = [
    "AFFINE_NORM_TYPES",
    "BATCHNORM_TYPES",
    "BN_STATS",
    "NORM_TYPES",
    "AdaptiveBatchNorm",
    "BNStats",
    "adapt_batchnorm",
    "fold_batchnorm",
    "freeze_statistics",
    "is_batchnorm",
    "iter_adaptive",
    "iter_batchnorms",
    "iter_norm_layers",
    "recompute_statistics",
    "replace_modules",
    "restore_batchnorm",
    "set_statistics",
]
