"""Construction of the ADM UNet's levels: the down path, the middle block and the up path.

Kept apart from ``ADMUNet`` so the model class reads as its parts. Blocks are made in the order of
guided-diffusion's ``UNetModel.__init__`` (``guided_diffusion/unet.py``, MIT, behaviour only): that
order fixes both the random initialization and the ``state_dict`` keys (``input_blocks.<i>``,
``middle_block``, ``output_blocks.<i>``) that the released checkpoints use.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tta.projection._adm_blocks import AttentionBlock, Downsample, ResBlock, TimestepSequential, Upsample
from tta.projection.adm_config import ADMConfig

__all__ = ["BlockFactory", "build_input_blocks", "build_middle_block", "build_output_blocks"]


@dataclass(frozen=True)
class BlockFactory:
    """Makes the residual and attention blocks of one configuration.

    Attributes:
        config: the architecture.
        emb_dim: width of the timestep embedding the residual blocks are conditioned on.
    """

    config: ADMConfig
    emb_dim: int

    def width(self, level: int) -> int:
        """Channels of level ``level``: ``channel_mult[level] * model_channels``."""
        return int((self.config.channel_mult or ())[level] * self.config.model_channels)

    def res(self, ch: int, out: int, **resample: bool) -> ResBlock:
        """A residual block from ``ch`` to ``out`` channels; ``up=True``/``down=True`` also resamples."""
        return ResBlock(
            ch, self.emb_dim, dropout=self.config.dropout, out_channels=out,
            use_scale_shift_norm=self.config.use_scale_shift_norm, **resample,
        )

    def attention(self, ch: int, heads: int) -> AttentionBlock:
        """Self-attention over ``ch`` channels: ``heads`` heads, or heads of ``num_head_channels`` when set."""
        if self.config.num_head_channels != -1:
            heads = ch // self.config.num_head_channels
        return AttentionBlock(ch, num_heads=heads, legacy_order=not self.config.use_new_attention_order)


def build_input_blocks(make: BlockFactory) -> tuple[nn.ModuleList, list[int]]:
    """The down path: the stem convolution, then per level its residual blocks and a downsampling.

    Returns:
        The blocks, and the channels of each block's output in order (the skip connections the up
        path concatenates, last first).
    """
    config = make.config
    levels = len(config.channel_mult or ())
    ch = make.width(0)
    blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(config.in_channels, ch, 3, padding=1))])
    skip_channels = [ch]
    rate = 1
    for level in range(levels):
        for _ in range(config.num_res_blocks):
            layers: list[nn.Module] = [make.res(ch, make.width(level))]
            ch = make.width(level)
            if rate in config.attention_rates:
                layers.append(make.attention(ch, config.num_heads))
            blocks.append(TimestepSequential(*layers))
            skip_channels.append(ch)
        if level != levels - 1:
            down = make.res(ch, ch, down=True) if config.resblock_updown else Downsample(ch, use_conv=True)
            blocks.append(TimestepSequential(down))
            skip_channels.append(ch)
            rate *= 2
    return blocks, skip_channels


def build_middle_block(make: BlockFactory, ch: int) -> TimestepSequential:
    """The bottleneck at ``ch`` channels: residual block, self-attention (always), residual block."""
    return TimestepSequential(make.res(ch, ch), make.attention(ch, make.config.num_heads), make.res(ch, ch))


def build_output_blocks(make: BlockFactory, skip_channels: list[int]) -> nn.ModuleList:
    """The up path: per level, deepest first, one more residual block than on the way down, then an upsampling.

    Args:
        make: the block factory.
        skip_channels: the channels returned by :func:`build_input_blocks` (not modified).
    """
    config = make.config
    heads_up = config.num_heads if config.num_heads_upsample == -1 else config.num_heads_upsample
    levels = len(config.channel_mult or ())
    skips = list(skip_channels)
    ch = skips[-1]
    rate = 2 ** (levels - 1)
    blocks = nn.ModuleList()
    for level in reversed(range(levels)):
        for i in range(config.num_res_blocks + 1):
            layers: list[nn.Module] = [make.res(ch + skips.pop(), make.width(level))]
            ch = make.width(level)
            if rate in config.attention_rates:
                layers.append(make.attention(ch, heads_up))
            if level and i == config.num_res_blocks:
                layers.append(make.res(ch, ch, up=True) if config.resblock_updown else Upsample(ch))
                rate //= 2
            blocks.append(TimestepSequential(*layers))
    return blocks
