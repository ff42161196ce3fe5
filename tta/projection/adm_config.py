"""Architecture of the ADM UNet (``ADMConfig``) and the configuration of the released 256x256 model.

Field names and defaults follow guided-diffusion's model flags, so a released model's MODEL_FLAGS
translate field by field; the checks here reject a configuration that could not build a UNet (level
widths GroupNorm cannot split, attention at a size no level has, heads that do not divide a width)
before any layer is made. :mod:`tta.projection.adm` builds and loads the model.

Reference: Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021
(arXiv:2105.05233). Adapted from: openai/guided-diffusion ``guided_diffusion/script_util.py``
(``create_model``, ``model_and_diffusion_defaults``) (MIT), behaviour only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ADMConfig", "DEFAULT_CHANNEL_MULT", "imagenet_256_uncond_config"]

DEFAULT_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}
"""Per-image-size channel multipliers used when none is given (``create_model`` in script_util.py)."""


@dataclass(frozen=True)
class ADMConfig:
    """Architecture of an ADM UNet; field names and meanings follow guided-diffusion's model flags.

    Attributes:
        image_size: training resolution (square); fixes the default ``channel_mult`` and converts
            ``attention_resolutions`` to downsampling rates.
        in_channels: image channels (3 for RGB, 1 for grayscale).
        model_channels: base width (``--num_channels``); level ``i`` has ``channel_mult[i] *
            model_channels`` channels, each a multiple of 32 (the GroupNorm groups).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: feature-map sizes in pixels at which self-attention follows each residual
            block, as the reference's flag (``32,16,8``); the middle block always has attention.
        dropout: dropout rate inside residual blocks (active only in ``train()``).
        channel_mult: width multiplier per level; ``None`` takes the reference's default for
            ``image_size`` (64, 128, 256, 512). Resolved in ``__post_init__``, so it is a tuple afterwards.
        num_heads: attention heads, used when ``num_head_channels`` is -1.
        num_head_channels: fixed width per head (overrides ``num_heads``); -1 to use ``num_heads``.
        num_heads_upsample: heads in the upsampling path when ``num_head_channels`` is -1; -1 means
            ``num_heads`` (deprecated in the reference, kept for checkpoint compatibility).
        use_scale_shift_norm: FiLM conditioning ``norm(h) * (1 + scale) + shift`` instead of adding the
            embedding.
        resblock_updown: resample with residual blocks (BigGAN style) instead of plain (de)convolutions.
        use_new_attention_order: q/k/v-major channel layout of the attention projection (the 64x64
            release) instead of the legacy head-major layout (the 128/256/512 releases).
        learn_sigma: output the variance interpolation too: ``out_channels = 2 * in_channels``.
    """

    image_size: int
    in_channels: int = 3
    model_channels: int = 256
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    dropout: float = 0.0
    channel_mult: tuple[float, ...] | None = None
    num_heads: int = 4
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    learn_sigma: bool = True

    def __post_init__(self) -> None:
        for name in ("image_size", "in_channels", "model_channels", "num_res_blocks", "num_heads"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("num_head_channels", "num_heads_upsample"):
            value = getattr(self, name)
            _check_int(name, value, minimum=-1)
            if value == 0:
                raise ValueError(f"{name} must be -1 (unused) or positive, got 0")
        for name in ("use_scale_shift_norm", "resblock_updown", "use_new_attention_order", "learn_sigma"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "channel_mult", self._resolve_channel_mult())
        object.__setattr__(self, "attention_resolutions", self._check_attention_resolutions())
        self._check_heads()

    def _resolve_channel_mult(self) -> tuple[float, ...]:
        """The given multipliers as a tuple, or the reference default for ``image_size``."""
        if self.channel_mult is None:
            if self.image_size not in DEFAULT_CHANNEL_MULT:
                raise ValueError(
                    f"no default channel_mult for image_size {self.image_size} (the reference has defaults for "
                    f"{sorted(DEFAULT_CHANNEL_MULT)}); pass channel_mult explicitly, e.g. (1, 2, 2)"
                )
            mult = DEFAULT_CHANNEL_MULT[self.image_size]
        else:
            mult = tuple(self.channel_mult)
        if not mult or any(isinstance(m, bool) or not isinstance(m, (int, float)) or m <= 0 for m in mult):
            raise ValueError(
                f"channel_mult must be a non-empty sequence of positive numbers, got {self.channel_mult!r}"
            )
        for m in mult:
            width = int(m * self.model_channels)
            if width < 1 or width % 32:
                raise ValueError(
                    f"channel_mult {m} x model_channels {self.model_channels} = {width} channels, but every level "
                    "needs a positive multiple of 32 channels (GroupNorm with 32 groups)"
                )
        factor = 2 ** (len(mult) - 1)
        if self.image_size % factor:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by 2 ** (len(channel_mult) - 1) = {factor}: "
                f"{len(mult)} levels halve the image {len(mult) - 1} times and the upsampling path must meet the "
                "same sizes"
            )
        return mult

    def _check_attention_resolutions(self) -> tuple[int, ...]:
        """The attention resolutions as a tuple of ints, each naming a feature-map size of some level."""
        resolutions = tuple(self.attention_resolutions)
        mult = self.channel_mult
        assert mult is not None  # resolved just before
        sizes = [self.image_size // 2**level for level in range(len(mult))]
        for res in resolutions:
            if isinstance(res, bool) or not isinstance(res, int) or res not in sizes:
                raise ValueError(
                    f"attention resolution {res!r} is not the size of any level: with image_size "
                    f"{self.image_size} and {len(mult)} levels the feature maps are {sizes} pixels"
                )
        return resolutions

    def _check_heads(self) -> None:
        """Every attention layer's width (attention levels and the middle block) must split into the heads."""
        mult = self.channel_mult or ()
        levels = {len(mult) - 1} | {self.attention_rates[i].bit_length() - 1 for i in range(len(self.attention_rates))}
        for ch in sorted({int(mult[level] * self.model_channels) for level in levels}):
            if self.num_head_channels != -1:
                if ch % self.num_head_channels:
                    raise ValueError(
                        f"num_head_channels {self.num_head_channels} does not divide the {ch} channels of a level"
                    )
            else:
                for name in ("num_heads", "num_heads_upsample"):
                    heads = getattr(self, name)
                    if heads != -1 and ch % heads:
                        raise ValueError(f"{name} {heads} does not divide the {ch} channels of a level")

    @property
    def out_channels(self) -> int:
        """Output channels: epsilon, plus the variance values when ``learn_sigma``."""
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def attention_rates(self) -> tuple[int, ...]:
        """``attention_resolutions`` as downsampling rates (``image_size // res``), as the reference model uses."""
        return tuple(self.image_size // res for res in self.attention_resolutions)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this: ``2 ** (levels - 1)``."""
        return 2 ** (len(self.channel_mult or ()) - 1)


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    """Raise unless ``value`` is an int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def imagenet_256_uncond_config() -> ADMConfig:
    """Configuration of ``256x256_diffusion_uncond.pt`` (MODEL_FLAGS of the README of openai/guided-diffusion).

    ``--attention_resolutions 32,16,8 --image_size 256 --learn_sigma True --num_channels 256
    --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_scale_shift_norm True``,
    channel multipliers (1, 1, 2, 2, 4, 4); 552,814,086 parameters.
    """
    return ADMConfig(
        image_size=256,
        in_channels=3,
        model_channels=256,
        num_res_blocks=2,
        attention_resolutions=(32, 16, 8),
        dropout=0.0,
        channel_mult=(1, 1, 2, 2, 4, 4),
        num_heads=4,
        num_head_channels=64,
        num_heads_upsample=-1,
        use_scale_shift_norm=True,
        resblock_updown=True,
        use_new_attention_order=False,
        learn_sigma=True,
    )

