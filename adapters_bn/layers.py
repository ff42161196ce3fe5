"""AdaptiveBatchNorm: a BatchNorm whose statistics mode is explicit and whose source statistics are kept.

Non-finite batches: a batch whose statistics are NaN or Inf in some channel (a NaN/Inf input value, or
an overflow) never reaches the stored statistics. Buffers are updated per channel with
``torch.where(isfinite(new), new, old)``, so such a channel keeps what it held and later clean batches
normalize as if the bad batch had not been seen; that batch's own outputs are non-finite, which the
caller sees. This costs no host-device synchronization (no ``.item()`` per layer), so CUDA inference
is not slowed; callers that must refuse such a batch check their input once, before the model.

Shape checks are free (no synchronization) and come first: an empty batch raises ``ValueError`` in every
mode that computes batch statistics (``batch``, ``mix``, updating ``ema``) before any buffer changes.
"""

from __future__ import annotations

import copy
import math
from typing import Literal, cast, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adapters_bn.surgery import BATCHNORM_TYPES

__all__ = ["BNStats", "BN_STATS", "AdaptiveBatchNorm"]

BNStats = Literal["source", "batch", "mix", "ema"]
BN_STATS: tuple[str, ...] = get_args(BNStats)

_PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def check_stats_options(stats: object, momentum: object = None, prior: object = None) -> None:
    """Raise unless the statistics mode, EMA momentum and mixing prior are valid; ``None`` skips a check.

    Raises:
        TypeError: if ``momentum`` or ``prior`` is not a real number.
        ValueError: if ``stats`` is not one of :data:`BN_STATS` or a number is outside [0, 1].
    """
    if not isinstance(stats, str) or stats not in BN_STATS:
        raise ValueError(f"unknown statistics mode {stats!r}; choose one of {list(BN_STATS)}")
    for name, value, note in (("momentum", momentum, ""), ("prior", prior, " (0 = pure batch statistics)")):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number in [0, 1]{note}, got {type(value).__name__}")
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"{name} must be in [0, 1]{note}, got {value}")


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


def values_per_channel(x: Tensor) -> int:
    """Return how many values each channel of ``x`` (``(B, C, *)``) has: what batch statistics average over."""
    return x.numel() // max(x.shape[1], 1)


def batch_var_mean(x: Tensor, *, correction: int = 0) -> tuple[Tensor, Tensor]:
    """Return the per-channel ``(variance, mean)`` of ``x`` (``(B, C, *)``), accumulated in float32 for halves."""
    dims = [0] + list(range(2, x.dim()))
    return torch.var_mean(_accumulation_input(x), dim=dims, correction=correction)


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
      as constants by autograd. ``momentum=0`` normalizes with the stored target statistics. One
      value per channel (a ``(1, C)`` input to a BatchNorm1d) is accepted: it moves the mean and
      leaves the variance, which a single value cannot estimate (see ``_ema_update``).

    ``running_mean``/``running_var`` hold the statistics used by the last forward (the current
    target estimate), except that a channel whose batch statistics are NaN/Inf keeps its previous
    values (module docstring); ``source_mean``/``source_var`` are never written after construction.
    The layer ignores ``train()``/``eval()``: the mode alone decides, so dropout can stay off.

    Raises:
        TypeError: if ``source`` is not a BatchNorm layer (a LayerNorm, a Linear...).
        ValueError: if ``source`` has no running statistics or an option is out of range; in
            ``forward``, for a wrong channel count, an empty batch, or one value per channel in
            ``batch`` mode (and ``mix`` with ``prior == 0``).

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
        if not isinstance(source, BATCHNORM_TYPES):
            raise TypeError(
                "AdaptiveBatchNorm wraps a BatchNorm layer (BatchNorm1d/2d/3d, SyncBatchNorm or torchvision "
                f"FrozenBatchNorm2d), got {type(source).__name__}"
            )
        check_stats_options(stats, momentum, prior)
        self._setup(source, stats, momentum, prior)

    @classmethod
    def for_checked_options(
        cls, source: nn.Module, *, stats: BNStats, momentum: float, prior: float
    ) -> AdaptiveBatchNorm:
        """Return the layer over the BatchNorm ``source`` for options its caller checked once for a whole model.

        :func:`adapters_bn.adapt_batchnorm` checks ``stats``, ``momentum`` and ``prior`` once and builds
        every layer here, instead of checking them again in each layer's constructor.
        """
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._setup(source, stats, momentum, prior)
        return layer

    def _setup(self, source: nn.Module, stats: BNStats, momentum: float, prior: float) -> None:
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
        # With a prior > 0 the source statistics regularize a single value per channel; without, it is degenerate.
        self._check_batch(x, allow_single=self.stats == "mix" and self.prior > 0.0)
        if self.stats == "mix":
            return self._forward_mix(x)
        return self._forward_batch(x)

    def _store(self, mean: Tensor, var: Tensor) -> None:
        """Write ``(mean, var)`` into the running buffers, per channel, only where both are finite.

        ``torch.where`` keeps this free of host-device synchronization; see the module docstring.
        """
        with torch.no_grad():
            finite = torch.isfinite(mean) & torch.isfinite(var)
            self.running_mean.copy_(torch.where(finite, mean.to(self.running_mean.dtype), self.running_mean))
            self.running_var.copy_(torch.where(finite, var.to(self.running_var.dtype), self.running_var))

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

    def _check_batch(self, x: Tensor, *, allow_single: bool = False) -> None:
        """Raise ``ValueError`` for a batch whose statistics are undefined (shape only: no synchronization)."""
        per_channel = values_per_channel(x)
        if per_channel == 0:
            raise ValueError(
                f"empty batch of shape {tuple(x.shape)}: batch statistics ({self.stats!r} mode) need at least one "
                "sample; nothing was stored"
            )
        if per_channel == 1 and not allow_single:
            raise ValueError(
                f"batch statistics are degenerate for input of shape {tuple(x.shape)}: one value per "
                "channel. Use a batch of 2 or more, or stats='ema'/'mix' with a prior > 0, or 'source'."
            )

    def _forward_batch(self, x: Tensor) -> Tensor:
        if not self.update_stats:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        # momentum=1 makes the kernel write this batch's mean and unbiased variance into fresh tensors
        # (which autograd may keep for backward); they reach the buffers only where finite (_store).
        mean, var = torch.zeros_like(self.running_mean), torch.ones_like(self.running_var)
        out = F.batch_norm(x, mean, var, self.weight, self.bias, True, 1.0, self.eps)
        n = values_per_channel(x)
        self._store(mean, var * ((n - 1) / n))  # the biased variance that normalized this batch
        return out

    def _forward_mix(self, x: Tensor) -> Tensor:
        var, mean = batch_var_mean(x)
        mean = self.prior * self.source_mean + (1.0 - self.prior) * mean
        var = self.prior * self.source_var + (1.0 - self.prior) * var
        if self.update_stats:
            self._store(mean.detach(), var.detach())
        shape = _channel_shape(x)
        out = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        if self.weight is not None and self.bias is not None:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        return out

    def _forward_ema(self, x: Tensor) -> Tensor:
        if self.update_stats and self.momentum > 0.0:
            # One value per channel is a valid update here: the layer normalizes with the running statistics.
            self._check_batch(x, allow_single=True)
            with torch.no_grad():
                self._store(*self._ema_update(x.detach()))
        return self._normalize_with(x, self.running_mean, self.running_var)

    def _ema_update(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return the running ``(mean, var)`` moved by ``momentum`` toward this batch's statistics.

        The batch variance is unbiased, as PyTorch's running update. With one value per channel it is
        undefined, and the variance is left as it is while the mean moves.
        NOTE(deviation): RoTTA's RobustBN (BIT-DA/RoTTA, core/utils/bn_layers.py) folds in the biased
        variance, which is 0 for one value per channel; on a stream of single samples that shrinks the
        variance toward 0 (it never sees the spread between samples) and inflates the outputs, so a
        single value per channel here updates the mean only.
        """
        if values_per_channel(x) > 1:
            var, mean = batch_var_mean(x, correction=1)
            var = self.running_var.lerp(var.to(self.running_var.dtype), self.momentum)
        else:
            mean, var = batch_var_mean(x)[1], self.running_var
        return self.running_mean.lerp(mean.to(self.running_mean.dtype), self.momentum), var

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
