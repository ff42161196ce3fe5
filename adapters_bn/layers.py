"""AdaptiveBatchNorm: a BatchNorm whose statistics mode is explicit and whose source statistics are kept."""

from __future__ import annotations

import copy
from typing import Literal, cast, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BNStats", "BN_STATS", "AdaptiveBatchNorm"]

BNStats = Literal["source", "batch", "mix", "ema"]
BN_STATS: tuple[str, ...] = get_args(BNStats)

_PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def check_stats_options(stats: str, momentum: float, prior: float) -> None:
    """Raise ``ValueError`` unless the statistics mode, EMA momentum and mixing prior are valid."""
    if stats not in BN_STATS:
        raise ValueError(f"unknown statistics mode {stats!r}; choose one of {list(BN_STATS)}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    if not 0.0 <= prior <= 1.0:
        raise ValueError(f"prior must be in [0, 1] (0 = pure batch statistics), got {prior}")


def _accumulation_input(x: Tensor) -> Tensor:
    """Return ``x`` in float32 when it is float16/bfloat16, so batch statistics are not rounded to 8-11 bits."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _tensor_attribute(source: nn.Module, name: str, *, optional: bool = False) -> Tensor | None:
    """Return ``source.<name>`` as a tensor or None; ``optional`` allows the attribute to be missing.

    Raises:
        AttributeError: if the attribute is missing and not ``optional``.
        TypeError: if it holds something other than a tensor or None.
    """
    value = getattr(source, name, None) if optional else getattr(source, name)
    if value is None or isinstance(value, Tensor):
        return value
    raise TypeError(f"{type(source).__name__}.{name} must be a tensor or None, got {type(value).__name__}")


def _channel_shape(x: Tensor) -> list[int]:
    return [1, x.shape[1]] + [1] * (x.dim() - 2)


class AdaptiveBatchNorm(nn.Module):
    """A BatchNorm layer with an explicit statistics mode and its source statistics kept as buffers.

    Modes (``stats``):

    - ``source``: the source running statistics, as the deployed model in ``eval()``.
    - ``batch``: statistics of the test batch (AdaBN / test-time BN, Tent's mode); biased variance,
      differentiable, exactly what ``nn.BatchNorm`` computes in training mode.
    - ``mix``: ``prior * source + (1 - prior) * batch`` for mean and variance (alpha-BN; the
      ``N / (N + n)`` prior of Schneider et al., NeurIPS 2020, is one choice of ``prior``).
    - ``ema``: target running statistics, started at the source ones and updated by ``momentum``
      with each batch before normalizing (unbiased variance, as PyTorch's running update); treated
      as constants by autograd. ``momentum=0`` normalizes with the stored target statistics.

    ``running_mean``/``running_var`` always hold the statistics used by the last forward (the
    current target estimate); ``source_mean``/``source_var`` are never written after construction.
    The layer ignores ``train()``/``eval()``: the mode alone decides, so dropout can stay off.

    Shape:
        Input ``(B, C, *)`` with ``C == num_features``; output of the same shape.
    """

    # Declared so the type checker sees tensors, not nn.Module.__getattr__'s ``Tensor | Module``.
    weight: nn.Parameter | None
    bias: nn.Parameter | None
    running_mean: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor
    source_mean: Tensor
    source_var: Tensor

    def __init__(
        self,
        source: nn.Module,
        *,
        stats: BNStats = "batch",
        momentum: float = 0.1,
        prior: float = 0.0,
    ) -> None:
        super().__init__()
        check_stats_options(stats, momentum, prior)
        mean, var = _tensor_attribute(source, "running_mean"), _tensor_attribute(source, "running_var")
        if mean is None or var is None:
            raise ValueError(f"{type(source).__name__} has no running statistics to keep as source statistics")
        self.num_features = int(mean.numel())
        self.eps = float(cast(float, source.eps))  # a plain float, which Module.__getattr__ types as Tensor | Module
        self.stats: BNStats = stats
        self.momentum = float(momentum)
        self.prior = float(prior)
        self.update_stats = True
        self._frozen_source = not isinstance(source, nn.modules.batchnorm._BatchNorm)
        self.weight = self._as_parameter(_tensor_attribute(source, "weight"))
        self.bias = self._as_parameter(_tensor_attribute(source, "bias"))
        self.register_buffer("running_mean", mean.detach().clone())
        self.register_buffer("running_var", var.detach().clone())
        tracked = _tensor_attribute(source, "num_batches_tracked", optional=True)
        if tracked is not None:
            self.register_buffer("num_batches_tracked", tracked.detach().clone())
        self.register_buffer("source_mean", mean.detach().clone())
        self.register_buffer("source_var", var.detach().clone())
        self._template = (self._strip(source),)  # tuple: not registered as a submodule
        self.train(source.training)

    @staticmethod
    def _as_parameter(value: Tensor | None) -> nn.Parameter | None:
        if value is None or isinstance(value, nn.Parameter):
            return value
        return nn.Parameter(value.detach().clone(), requires_grad=False)

    @staticmethod
    def _strip(source: nn.Module) -> nn.Module:
        template = copy.copy(source)
        template._parameters, template._buffers, template._modules = {}, {}, {}
        return template

    def extra_repr(self) -> str:
        return f"{self.num_features}, stats={self.stats}, momentum={self.momentum}, prior={self.prior}, eps={self.eps}"

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"AdaptiveBatchNorm expects input (B, {self.num_features}, ...), got shape {tuple(x.shape)}"
            )
        if self.stats == "source":
            return self._normalize_with(x, self.source_mean, self.source_var)
        if self.stats == "ema":
            return self._forward_ema(x)
        if self.stats == "mix" and self.prior > 0.0:
            return self._forward_mix(x)
        self._check_batch(x)
        if self.stats == "mix":  # prior == 0: pure batch statistics, fall through to the batch path
            return self._forward_mix(x)
        return self._forward_batch(x)

    def _normalize_with(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        if self._frozen_source:
            # FrozenBatchNorm2d's own arithmetic, so source outputs match the deployed model bit for bit.
            weight, bias = self._frozen_affine()
            scale = weight.reshape(_channel_shape(x)) * (var.reshape(_channel_shape(x)) + self.eps).rsqrt()
            return x * scale + (bias.reshape(_channel_shape(x)) - mean.reshape(_channel_shape(x)) * scale)
        return F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)

    def _frozen_affine(self) -> tuple[Tensor, Tensor]:
        """Return ``(weight, bias)`` of a frozen source, which FrozenBatchNorm2d always carries."""
        if self.weight is None or self.bias is None:
            raise RuntimeError(f"{type(self._template[0]).__name__} source has no weight/bias to normalize with")
        return self.weight, self.bias

    def _check_batch(self, x: Tensor) -> None:
        per_channel = x.numel() // max(x.shape[1], 1)
        if per_channel == 0:
            raise ValueError("empty batch: batch statistics need at least one sample")
        if per_channel == 1:
            raise ValueError(
                f"batch statistics are degenerate for input of shape {tuple(x.shape)}: one value per "
                "channel. Use a batch of 2 or more, or stats='ema'/'mix' with a prior > 0, or 'source'."
            )

    def _forward_batch(self, x: Tensor) -> Tensor:
        if not self.update_stats:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        # momentum=1 makes the kernel write this batch's mean and unbiased variance as the running
        # statistics. When autograd records the call it keeps those tensors for backward, so they must
        # then be fresh tensors, not the buffers we overwrite later.
        records_graph = torch.is_grad_enabled() and (x.requires_grad or self._affine_requires_grad())
        if records_graph:
            mean, var = torch.zeros_like(self.running_mean), torch.ones_like(self.running_var)
        else:
            mean, var = self.running_mean, self.running_var
        out = F.batch_norm(x, mean, var, self.weight, self.bias, True, 1.0, self.eps)
        n = x.numel() // x.shape[1]
        with torch.no_grad():
            if records_graph:
                self.running_mean.copy_(mean)
                self.running_var.copy_(var)
            self.running_var.mul_((n - 1) / n)  # the biased variance that normalized this batch
        return out

    def _affine_requires_grad(self) -> bool:
        if self.weight is None or self.bias is None:
            return False
        return self.weight.requires_grad or self.bias.requires_grad

    def _forward_mix(self, x: Tensor) -> Tensor:
        dims = [0] + list(range(2, x.dim()))
        var, mean = torch.var_mean(_accumulation_input(x), dim=dims, correction=0)
        mean = self.prior * self.source_mean + (1.0 - self.prior) * mean
        var = self.prior * self.source_var + (1.0 - self.prior) * var
        if self.update_stats:
            with torch.no_grad():
                self.running_mean.copy_(mean)
                self.running_var.copy_(var)
        shape = _channel_shape(x)
        out = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        if self.weight is not None and self.bias is not None:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        return out

    def _forward_ema(self, x: Tensor) -> Tensor:
        if self.update_stats and self.momentum > 0.0:
            self._check_batch(x)
            dims = [0] + list(range(2, x.dim()))
            with torch.no_grad():
                var, mean = torch.var_mean(_accumulation_input(x.detach()), dim=dims, correction=1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(var.to(self.running_var.dtype), self.momentum)
        return self._normalize_with(x, self.running_mean, self.running_var)

    def current_statistics(self) -> tuple[Tensor, Tensor]:
        """Return the (mean, variance) this layer currently stands for: source ones in ``source`` mode."""
        if self.stats == "source":
            return self.source_mean, self.source_var
        return self.running_mean, self.running_var

    def to_source_module(self) -> nn.Module:
        """Return a module of the original class with the source statistics and the current affine values."""
        module = copy.copy(self._template[0])
        module._parameters, module._buffers, module._modules = {}, {}, {}
        if self._frozen_source:
            weight, bias = self._frozen_affine()
            module.register_buffer("weight", weight.detach().clone())
            module.register_buffer("bias", bias.detach().clone())
        else:
            module.register_parameter("weight", self.weight)
            module.register_parameter("bias", self.bias)
        module.register_buffer("running_mean", self.source_mean.clone())
        module.register_buffer("running_var", self.source_var.clone())
        if "num_batches_tracked" in self._buffers:
            module.register_buffer("num_batches_tracked", self.num_batches_tracked.clone())
        module.train(self.training)
        return module

    def to_batchnorm(self, *, use: Literal["source", "current"] = "current") -> nn.Module:
        """Return a plain eval-mode BatchNorm that computes what this layer computes with fixed statistics.

        BatchNorm1d/2d/3d sources keep their class; SyncBatchNorm and FrozenBatchNorm2d become BatchNorm2d.
        """
        cls = type(self._template[0])
        cls = cls if cls in _PLAIN_BN else nn.BatchNorm2d
        mean, var = (self.source_mean, self.source_var) if use == "source" else self.current_statistics()
        bn = cls(self.num_features, eps=self.eps, affine=self.weight is not None)
        bn = bn.to(device=mean.device, dtype=mean.dtype)
        with torch.no_grad():
            # track_running_stats=True (the default) makes the running buffers tensors, never None.
            cast(Tensor, bn.running_mean).copy_(mean)
            cast(Tensor, bn.running_var).copy_(var)
            if self.weight is not None and self.bias is not None:
                bn.weight.copy_(self.weight)
                bn.bias.copy_(self.bias)
        return bn.eval()
