"""Building blocks of the ADM UNet (normalization, timestep embedding, residual and attention blocks).

Each block is written from the architecture described in Dhariwal & Nichol, "Diffusion Models Beat
GANs on Image Synthesis", NeurIPS 2021 (arXiv:2105.05233) and its MIT-licensed code,
openai/guided-diffusion ``guided_diffusion/unet.py`` and ``guided_diffusion/nn.py`` (behaviour only).
Submodule names (``in_layers``, ``emb_layers``, ``out_layers``, ``skip_connection``, ``norm``,
``qkv``, ``proj_out``, ``op``, ``conv``) and their order inside ``nn.Sequential`` containers are part
of the checkpoint format: they make our ``state_dict`` keys identical to the released checkpoints'.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AttentionBlock",
    "Downsample",
    "GroupNorm32",
    "ResBlock",
    "TimestepSequential",
    "Upsample",
    "group_norm",
    "qkv_attention",
    "timestep_embedding",
    "zero_",
]

NORM_GROUPS = 32
"""Groups of every normalization layer (``normalization()`` in guided_diffusion/nn.py)."""


def timestep_embedding(t: Tensor, dim: int, *, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, the ADM formula, always float32.

    With ``half = dim // 2`` and frequencies ``f_i = max_period ** (-i / half)`` for ``i < half``, the
    embedding is ``[cos(t f_0), ..., cos(t f_{half-1}), sin(t f_0), ..., sin(t f_{half-1})]``, padded
    with one zero when ``dim`` is odd. This is ``timestep_embedding`` of guided_diffusion/nn.py
    (cosines first, unlike the sines-first Transformer encoding of Vaswani et al. 2017 it derives from).

    Args:
        t: timesteps, shape ``(B,)``, integer or floating.
        dim: embedding width.
        max_period: the longest period, 10000 as in the reference.

    Returns:
        A float32 tensor ``(B, dim)`` on ``t``'s device.

    Raises:
        ValueError: if ``t`` is not one-dimensional or ``dim`` is not positive.
    """
    if t.ndim != 1:
        raise ValueError(f"timesteps must have shape (B,), got {tuple(t.shape)}")
    if dim < 1:
        raise ValueError(f"embedding dim must be positive, got {dim}")
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=t.device) / half
    freqs = torch.exp(-math.log(max_period) * exponents)
    args = t.float()[:, None] * freqs[None, :]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, embedding.new_zeros(t.shape[0], 1)], dim=-1)
    return embedding


def group_norm(x: Tensor, norm: nn.GroupNorm) -> Tensor:
    """Apply ``norm`` in float32 and cast back to ``x``'s dtype (stable statistics for fp16 activations)."""
    weight = None if norm.weight is None else norm.weight.float()
    bias = None if norm.bias is None else norm.bias.float()
    return F.group_norm(x.float(), norm.num_groups, weight, bias, norm.eps).to(x.dtype)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups that always computes in float32 (``GroupNorm32`` of guided_diffusion/nn.py)."""

    def __init__(self, channels: int) -> None:
        super().__init__(NORM_GROUPS, channels)

    def forward(self, x: Tensor) -> Tensor:
        return group_norm(x, self)


def zero_(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` in place and return it (ADM's ``zero_module`` output init)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def qkv_attention(qkv: Tensor, num_heads: int, *, legacy_order: bool) -> Tensor:
    """Multi-head dot-product self-attention over a packed ``(B, 3 * C, T)`` projection.

    The two channel layouts of the reference code (guided_diffusion/unet.py):
    ``legacy_order=True`` (``QKVAttentionLegacy``, used by the 256x256 releases) splits heads first,
    i.e. channels are ``[head0: q k v, head1: q k v, ...]``; ``legacy_order=False`` (``QKVAttention``,
    ``use_new_attention_order``) splits q, k, v first: ``[q: heads, k: heads, v: heads]``. Queries and
    keys are each scaled by ``ch ** -0.25`` before the product (more stable in fp16 than dividing the
    product) and the softmax runs in float32, as in the reference.

    Args:
        qkv: packed queries, keys and values, ``(B, 3 * C, T)``.
        num_heads: number of heads; ``C`` must be divisible by it.
        legacy_order: which channel layout ``qkv`` uses (see above).

    Returns:
        The attended values, ``(B, C, T)``, in ``qkv``'s dtype.

    Raises:
        ValueError: if the channel count does not split into ``3 * num_heads`` equal parts.
    """
    batch, width, length = qkv.shape
    if width % (3 * num_heads):
        raise ValueError(f"qkv width {width} is not divisible by 3 * num_heads = {3 * num_heads}")
    ch = width // (3 * num_heads)
    if legacy_order:
        q, k, v = qkv.reshape(batch * num_heads, 3 * ch, length).split(ch, dim=1)
    else:
        q, k, v = (part.reshape(batch * num_heads, ch, length) for part in qkv.chunk(3, dim=1))
    scale = 1.0 / math.sqrt(math.sqrt(ch))
    weight = torch.bmm((q * scale).transpose(1, 2), k * scale)  # (B*H, T_query, T_key)
    weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
    out = torch.bmm(v, weight.transpose(1, 2))  # (B*H, ch, T_query)
    return out.reshape(batch, -1, length)


class TimestepSequential(nn.Sequential):
    """``nn.Sequential`` that hands the timestep embedding to the children that take one (ResBlock)."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution (``Upsample``, conv_resample=True)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample(nn.Module):
    """2x downsampling by a strided 3x3 convolution (``use_conv``) or 2x2 average pooling."""

    def __init__(self, channels: int, *, use_conv: bool) -> None:
        super().__init__()
        self.channels = channels
        self.op: nn.Module = (
            nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, stride=2)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep embedding, optionally resampling (BigGAN-style up/down).

    ``h = in_layers(x)`` (norm, SiLU, [resample], 3x3 conv); the embedding enters either as an added
    bias or, with ``use_scale_shift_norm``, as FiLM ``norm(h) * (1 + scale) + shift``; then SiLU,
    dropout and a zero-initialized 3x3 conv; the skip path is identity, or a 1x1 conv when the channel
    count changes, and is resampled like ``h`` (``ResBlock`` of guided_diffusion/unet.py).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        *,
        dropout: float = 0.0,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("a ResBlock resamples up or down, not both")
        out_channels = out_channels or channels
        self.channels = channels
        self.out_channels = out_channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.resample: nn.Module | None
        if up:
            self.resample = nn.Upsample(scale_factor=2, mode="nearest")
        elif down:
            self.resample = nn.AvgPool2d(2, stride=2)
        else:
            self.resample = None
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """Return ``skip(x) + residual(x, emb)``; ``emb`` is ``(B, emb_channels)``."""
        norm_act, conv_in = self.in_layers[:-1], self.in_layers[-1]
        h = norm_act(x)
        if self.resample is not None:  # resample between activation and conv, as the reference
            h, x = self.resample(h), self.resample(x)
        h = conv_in(h)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = out_rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = out_rest(out_norm(h + emb_out))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions with a residual connection (``AttentionBlock``).

    ``x + proj_out(attention(qkv(norm(x))))`` with 1x1 Conv1d projections; ``proj_out`` starts at zero.
    """

    def __init__(self, channels: int, *, num_heads: int, legacy_order: bool = True) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels {channels} are not divisible by num_heads {num_heads}")
        self.channels = channels
        self.num_heads = num_heads
        self.legacy_order = legacy_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        h = qkv_attention(self.qkv(self.norm(flat)), self.num_heads, legacy_order=self.legacy_order)
        return (flat + self.proj_out(h)).reshape(b, c, *spatial)
