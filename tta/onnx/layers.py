"""Export-only modules: BatchNorm with explicit test-batch statistics, and the EMA-state carrier.

These modules exist only while a model is traced for ONNX. They spell batch statistics out as
plain reductions (``ReduceMean`` in the graph), because the torch 2.x exporters turn a BatchNorm
in training mode that has running statistics into an inference BatchNorm (running statistics),
without telling. Nothing here is used for adaptation in PyTorch; ``adapters_bn`` does that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeGuard, cast

import torch
from torch import Tensor, nn

from adapters_bn import AdaptiveBatchNorm, is_batchnorm, replace_modules

__all__ = ["BatchStatisticsNorm", "StatefulGraph", "NormConfig", "to_batch_statistics"]


@dataclass(frozen=True)
class NormConfig:
    """How one exported BatchNorm picks its statistics.

    Args:
        prior: Weight of the source statistics, ``prior * source + (1 - prior) * batch`` (alpha-BN);
            0 is pure test-batch statistics. Ignored when ``ema_momentum`` is set.
        ema_momentum: If set, the layer keeps EMA statistics carried as graph inputs/outputs and
            normalizes with ``state + ema_momentum * (batch - state)`` (unbiased batch variance).
    """

    prior: float = 0.0
    ema_momentum: float | None = None


def _tensor(value: object, name: str) -> Tensor:
    """Return a BatchNorm buffer as a tensor; a layer without running statistics cannot be exported."""
    if not isinstance(value, Tensor):
        raise TypeError(f"expected the BatchNorm buffer {name!r} to be a tensor, got {type(value).__name__}")
    return value


def _channel_shape(x: Tensor) -> list[int]:
    return [1, x.shape[1]] + [1] * (x.dim() - 2)


class BatchStatisticsNorm(nn.Module):
    """BatchNorm computing the test-batch mean and biased variance with explicit reductions.

    Mixes them with the source statistics by ``prior`` (alpha-BN), or, with ``ema_momentum``,
    updates EMA statistics it receives through :class:`StatefulGraph` and normalizes with the update,
    exactly as :class:`adapters_bn.AdaptiveBatchNorm` in ``mix`` / ``ema`` mode.

    Shape:
        Input ``(B, C, *)``; output of the same shape.
    """

    # Buffers, declared for type checkers (``nn.Module.__getattr__`` is typed ``Tensor | Module``).
    source_mean: Tensor
    source_var: Tensor
    initial_mean: Tensor
    initial_var: Tensor
    weight: Tensor | None
    bias: Tensor | None

    def __init__(self, layer: nn.Module, config: NormConfig) -> None:
        super().__init__()
        if isinstance(layer, AdaptiveBatchNorm):
            mean, var = _tensor(layer.source_mean, "source_mean"), _tensor(layer.source_var, "source_var")
            current_mean, current_var = layer.current_statistics()
        else:
            mean = current_mean = _tensor(layer.running_mean, "running_mean")
            var = current_var = _tensor(layer.running_var, "running_var")
        self.register_buffer("source_mean", mean.detach().clone())
        self.register_buffer("source_var", var.detach().clone())
        # Where the EMA state starts (and a reset returns to): the layer's estimate at export time.
        self.register_buffer("initial_mean", current_mean.detach().clone())
        self.register_buffer("initial_var", current_var.detach().clone())
        weight, bias = cast(Tensor | None, layer.weight), cast(Tensor | None, layer.bias)
        self.register_buffer("weight", None if weight is None else weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.eps = float(cast(float, layer.eps))
        self.prior = float(config.prior)
        self.ema_momentum = config.ema_momentum
        self.state: tuple[Tensor, Tensor] | None = None
        self.next_state: tuple[Tensor, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        dims = [0, *range(2, x.dim())]
        shape = _channel_shape(x)
        mean = x.mean(dim=dims)
        centered = x - mean.reshape(shape)
        var = (centered * centered).mean(dim=dims)  # biased, as BatchNorm normalizes in training
        if self.ema_momentum is None:
            mean = self.prior * self.source_mean + (1.0 - self.prior) * mean
            var = self.prior * self.source_var + (1.0 - self.prior) * var
        else:
            mean, var = self._update_ema(x, mean, var)
        # Per-channel scale and shift first, so the full-size tensor sees one multiply and one add.
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.weight is not None:
            scale = scale * self.weight
            shift = shift * self.weight
        if self.bias is not None:
            shift = shift + self.bias
        return x * scale.reshape(shape) + shift.reshape(shape)

    def _update_ema(self, x: Tensor, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        momentum = self.ema_momentum
        if self.state is None or momentum is None:
            raise RuntimeError("EMA BatchStatisticsNorm runs only inside StatefulGraph, which feeds its state")
        count = x.numel() / x.shape[1]
        unbiased = var * (count / (count - 1))  # PyTorch's running-variance update uses the unbiased one
        state_mean, state_var = self.state
        new_mean = state_mean + momentum * (mean - state_mean)
        # One value per channel leaves the variance (undefined: 0 * inf); a channel whose statistics are
        # NaN/Inf keeps its state: as adapters_bn's ema mode, and without host synchronization.
        new_var = torch.where(torch.isfinite(unbiased), state_var + momentum * (unbiased - state_var), state_var)
        finite = torch.isfinite(new_mean) & torch.isfinite(new_var)
        new_mean, new_var = torch.where(finite, new_mean, state_mean), torch.where(finite, new_var, state_var)
        self.next_state = (new_mean, new_var)
        return new_mean, new_var


class StatefulGraph(nn.Module):
    """Model whose EMA statistics are explicit inputs and outputs: ``(x, *state) -> (logits, *next_state)``.

    ``state`` holds, for each EMA layer in ``named_modules`` order, its mean then its variance.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.ema_names = [n for n, m in model.named_modules() if _is_ema(m)]

    def ema_layers(self) -> list[BatchStatisticsNorm]:
        """Return the EMA layers in the order of the state tensors."""
        return [m for _, m in self.model.named_modules() if _is_ema(m)]

    def initial_state(self) -> list[Tensor]:
        """Return the state at export time: every EMA layer's mean and variance estimate then."""
        return [t.clone() for layer in self.ema_layers() for t in (layer.initial_mean, layer.initial_var)]

    def forward(self, x: Tensor, state: list[Tensor]) -> tuple[Tensor, ...]:
        layers = self.ema_layers()
        if len(state) != 2 * len(layers):
            raise ValueError(f"expected {2 * len(layers)} state tensors (mean, var per EMA layer), got {len(state)}")
        for index, layer in enumerate(layers):
            layer.state = (state[2 * index], state[2 * index + 1])
        try:
            logits = self.model(x)
            next_state = [t for layer in layers for t in layer.next_state]  # type: ignore[union-attr]
        finally:
            for layer in layers:
                layer.state = layer.next_state = None
        return (logits, *next_state)


def _is_ema(module: nn.Module) -> TypeGuard[BatchStatisticsNorm]:
    return isinstance(module, BatchStatisticsNorm) and module.ema_momentum is not None


def to_batch_statistics(model: nn.Module, config: NormConfig | None) -> nn.Module:
    """Replace every BatchNorm (plain or adaptive) by a :class:`BatchStatisticsNorm`, in place; returns the root.

    Args:
        model: The model to convert (a copy the caller owns).
        config: Statistics for every layer; ``None`` keeps each adaptive layer's own mode (``source``
            = prior 1, ``batch`` = prior 0, ``mix`` its prior, ``ema`` its momentum) and gives plain
            BatchNorm layers prior 0.
    """
    return replace_modules(
        model,
        lambda _name, m: is_batchnorm(m) or isinstance(m, AdaptiveBatchNorm),
        lambda m: BatchStatisticsNorm(m, config or layer_config(m)),
    )


def layer_config(layer: nn.Module) -> NormConfig:
    """Return the statistics an adaptive layer uses now (prior 0 for a plain BatchNorm)."""
    if not isinstance(layer, AdaptiveBatchNorm):
        return NormConfig()
    if layer.stats == "ema":
        return NormConfig(ema_momentum=layer.momentum)
    return NormConfig(prior={"source": 1.0, "batch": 0.0}.get(layer.stats, layer.prior))
