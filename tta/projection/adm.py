"""The ADM UNet of OpenAI's guided diffusion, loading the released checkpoints (e.g. 256x256_diffusion_uncond.pt) as is.

The denoiser DDA uses on ImageNet: a UNet whose levels hold residual blocks conditioned on a
sinusoidal timestep embedding (FiLM "scale-shift" normalization), multi-head self-attention at chosen
resolutions, BigGAN-style residual up/downsampling, and a learned-variance output (2 x channels:
epsilon, then the variance interpolation values). Our ``state_dict`` keys and shapes are those of the
reference ``UNetModel``, so ``load_adm`` reads the released files without any renaming.

Reference: Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021
(arXiv:2105.05233); Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models", ICML 2021
(arXiv:2102.09672) for the learned variance.
Adapted from: openai/guided-diffusion ``guided_diffusion/unet.py`` (``UNetModel``),
``guided_diffusion/nn.py`` and ``guided_diffusion/script_util.py`` (``create_model``) (MIT), behaviour only.

Differences from the reference implementation:
- Two-dimensional images only (the reference also builds 1-D and 3-D variants); resampling always
  uses learned convolutions (``conv_resample=True``, the value of every released model).
- No class conditioning (``num_classes``/``label_emb``): the unconditional releases do not use it.
- No gradient checkpointing: the reference always recomputes attention blocks in backward and
  optionally residual blocks (``use_checkpoint``); results are the same, memory use differs.
- ``attention_resolutions`` are given in pixels, as the reference's command-line flags, and converted to
  downsampling rates here; a resolution that names no level of the UNet is an error (the reference
  silently adds no attention for it).
- The input's height and width must be divisible by ``2 ** (len(channel_mult) - 1)``, checked up front
  with a clear error (the reference fails inside ``torch.cat`` on the way up).
- GroupNorm also computes in float32 when the whole model has been cast to half.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from tta._io import atomic_torch_save
from tta.projection._adm_blocks import (
    AttentionBlock,
    Downsample,
    GroupNorm32,
    ResBlock,
    TimestepSequential,
    Upsample,
    timestep_embedding,
    zero_,
)

__all__ = [
    "ADM_256_UNCOND_FILENAME",
    "ADM_256_UNCOND_URL",
    "ADMConfig",
    "ADMUNet",
    "imagenet_256_uncond_config",
    "load_adm",
    "save_adm",
    "timestep_embedding",
]

ADM_256_UNCOND_FILENAME = "256x256_diffusion_uncond.pt"
ADM_256_UNCOND_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt"
"""Where openai/guided-diffusion's README links the unconditional 256x256 ImageNet model (2.2 GB)."""

DEFAULT_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}
"""Per-image-size channel multipliers used when none is given (``create_model`` in script_util.py)."""

_MAX_LISTED = 5


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


class ADMUNet(nn.Module):
    """ADM UNet: ``(x_t, t) -> model output`` (epsilon, then variance values when ``learn_sigma``).

    Args:
        config: the architecture.
        use_fp16: run the input, middle and output blocks in float16 as the reference's
            ``convert_to_fp16``: their convolution weights are half; linear layers (timestep
            embedding), normalization weights and the output head stay float32; GroupNorm computes in
            float32. Meant for CUDA; the output is still in the input's dtype.

    Attributes:
        config: the architecture.
        use_fp16: whether the blocks run in float16.
    """

    def __init__(self, config: ADMConfig, *, use_fp16: bool = False) -> None:
        super().__init__()
        if not isinstance(config, ADMConfig):
            raise TypeError(f"config must be an ADMConfig, got {type(config).__name__}")
        self.config = config
        self.use_fp16 = False
        mult = config.channel_mult or ()
        base = config.model_channels
        emb_dim = 4 * base
        self.time_embed = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def res(ch: int, out: int, **resample: bool) -> ResBlock:
            return ResBlock(
                ch, emb_dim, dropout=config.dropout, out_channels=out,
                use_scale_shift_norm=config.use_scale_shift_norm, **resample,
            )

        def attention(ch: int, heads: int) -> AttentionBlock:
            if config.num_head_channels != -1:
                heads = ch // config.num_head_channels
            return AttentionBlock(ch, num_heads=heads, legacy_order=not config.use_new_attention_order)

        heads_up = config.num_heads if config.num_heads_upsample == -1 else config.num_heads_upsample
        ch = int(mult[0] * base)
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(config.in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        rate = 1
        for level, m in enumerate(mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(m * base))]
                ch = int(m * base)
                if rate in config.attention_rates:
                    layers.append(attention(ch, config.num_heads))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != len(mult) - 1:
                down = res(ch, ch, down=True) if config.resblock_updown else Downsample(ch, use_conv=True)
                self.input_blocks.append(TimestepSequential(down))
                skip_channels.append(ch)
                rate *= 2

        self.middle_block = TimestepSequential(res(ch, ch), attention(ch, config.num_heads), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), int(m * base))]
                ch = int(m * base)
                if rate in config.attention_rates:
                    layers.append(attention(ch, heads_up))
                if level and i == config.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if config.resblock_updown else Upsample(ch))
                    rate //= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(ch), nn.SiLU(), zero_(nn.Conv2d(ch, config.out_channels, 3, padding=1))
        )
        if use_fp16:
            self.convert_to_fp16()

    @property
    def block_dtype(self) -> torch.dtype:
        """The dtype the input, middle and output blocks compute in (float16 after ``convert_to_fp16``)."""
        return torch.float16 if self.use_fp16 else torch.float32

    def convert_to_fp16(self) -> ADMUNet:
        """Cast the convolution weights of the input, middle and output blocks to float16, in place."""
        self._convert_block_convs(torch.float16)
        self.use_fp16 = True
        return self

    def convert_to_fp32(self) -> ADMUNet:
        """Undo ``convert_to_fp16``, in place."""
        self._convert_block_convs(torch.float32)
        self.use_fp16 = False
        return self

    def _convert_block_convs(self, dtype: torch.dtype) -> None:
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            for module in part.modules():
                if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                    module.to(dtype)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Predict from the noisy image ``x`` at timesteps ``t``.

        Args:
            x: noisy images ``(B, in_channels, H, W)``, roughly in [-1, 1]; ``H`` and ``W`` multiples of
                ``config.size_multiple`` (any such size works; the model was trained at ``image_size``).
            t: timesteps ``(B,)`` (or one scalar for the whole batch), integer or float, on the model's
                training scale (0 ... 999 for 1000 diffusion steps; respaced schedules pass the original
                step indices).

        Returns:
            ``(B, config.out_channels, H, W)`` in ``x``'s dtype: predicted noise in the first
            ``in_channels`` channels, then (``learn_sigma``) the variance interpolation values v (nominally in [-1, 1]).

        Raises:
            ValueError: if a shape does not match.
            TypeError: if ``x`` is not floating point or not in the dtype of the model's float32 parts.
        """
        self._check_inputs(x, t)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        first = cast(nn.Linear, self.time_embed[0])  # built as Linear, SiLU, Linear in __init__
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(first.weight.dtype))
        h = x.to(self.block_dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.to(x.dtype))

    def _check_inputs(self, x: Tensor, t: Tensor) -> None:
        cfg = self.config
        if not isinstance(x, Tensor) or not isinstance(t, Tensor):
            raise TypeError(f"x and t must be tensors, got {type(x).__name__} and {type(t).__name__}")
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x must have shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        head_dtype = self.out[2].weight.dtype
        if x.dtype != head_dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"x is {x.dtype} but the model's output head is {head_dtype}; cast x (or the model)")
        height, width = x.shape[-2:]
        if height % cfg.size_multiple or width % cfg.size_multiple:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of {cfg.size_multiple}: the UNet halves it "
                f"{len(cfg.channel_mult or ()) - 1} times and must meet the same sizes on the way up "
                f"(trained at {cfg.image_size}x{cfg.image_size})"
            )
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x.shape[0]):
            raise ValueError(f"t must have shape ({x.shape[0]},) or be a scalar, got {tuple(t.shape)}")
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"t must hold integer or float timesteps, got {t.dtype}")


def save_adm(model: ADMUNet, path: str | os.PathLike[str]) -> None:
    """Write ``{"model": state_dict, "config": asdict(config)}`` to ``path`` atomically (readable by ``load_adm``).

    Raises:
        TypeError: if ``model`` is not an ``ADMUNet``.
    """
    if not isinstance(model, ADMUNet):
        raise TypeError(f"save_adm expects an ADMUNet, got {type(model).__name__}")
    atomic_torch_save({"model": model.state_dict(), "config": asdict(model.config)}, path)


def load_adm(
    path: str | os.PathLike[str],
    config: ADMConfig | None = None,
    *,
    use_fp16: bool = False,
    map_location: str | torch.device = "cpu",
) -> ADMUNet:
    """Build an ``ADMUNet`` and load its weights: a released guided-diffusion file or one from ``save_adm``.

    Weights are loaded without a randomly initialized copy (the model is built on the meta device and
    the file's tensors are assigned), so peak memory is about one model.

    Args:
        path: a plain ``state_dict`` (the official releases, e.g. ``256x256_diffusion_uncond.pt``) or
            ``{"model": state_dict, "config": {ADMConfig fields}}`` (``save_adm``).
        config: the architecture. ``None``: the file's own config if it has one, else
            ``imagenet_256_uncond_config()``. If both are given they must agree.
        use_fp16: convert the blocks to float16 after loading (see ``ADMUNet``).
        map_location: device the weights are loaded to (and the model lives on).

    Returns:
        The model in ``eval()`` mode, parameters float32 (blocks' convolutions float16 with ``use_fp16``).

    Raises:
        FileNotFoundError: if ``path`` does not exist; the message says where to get the official file.
        ValueError: if the file's keys or shapes do not match the configuration (the first few are
            listed), its layout is not one of the two above, or its config disagrees with ``config``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ADM diffusion checkpoint not found: {str(path)!r}. For ImageNet, download the official "
            f"{ADM_256_UNCOND_FILENAME} (2.2 GB, linked in the README of openai/guided-diffusion: "
            f"{ADM_256_UNCOND_URL}), put it anywhere (e.g. ./models/{ADM_256_UNCOND_FILENAME}) and pass that path "
            "here or to the command line's diffusion-checkpoint option."
        )
    payload = torch.load(path, map_location=map_location, weights_only=True)
    state_dict, file_config = _split_payload(payload, path)
    if config is None:
        config = file_config or imagenet_256_uncond_config()
    elif file_config is not None and file_config != config:
        raise ValueError(f"{path}: the file's config {file_config} differs from the config passed, {config}")
    with torch.device("meta"):
        model = ADMUNet(config)
    _check_state_dict(model, state_dict, path)
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.float()  # assign keeps the file's dtypes; a save_adm file of an fp16 model has half convolutions
    if use_fp16:
        model.convert_to_fp16()
    return model.eval()


def _split_payload(payload: Any, path: Path) -> tuple[dict[str, Tensor], ADMConfig | None]:
    """Return (state_dict, config or None) from a loaded file's content."""
    if isinstance(payload, Mapping) and "model" in payload and isinstance(payload["model"], Mapping):
        raw_config = payload.get("config")
        config = None
        if raw_config is not None:
            if not isinstance(raw_config, Mapping):
                raise ValueError(
                    f"{path}: 'config' must be a dict of ADMConfig fields, got {type(raw_config).__name__}"
                )
            known = {f.name for f in fields(ADMConfig)}
            unknown = sorted(set(raw_config) - known)
            if unknown:
                raise ValueError(f"{path}: config has fields ADMConfig does not know: {unknown}")
            config = ADMConfig(**raw_config)
        return dict(payload["model"]), config
    if isinstance(payload, Mapping) and payload and all(isinstance(v, Tensor) for v in payload.values()):
        return dict(payload), None
    described = sorted(map(str, payload))[:_MAX_LISTED] if isinstance(payload, Mapping) else type(payload).__name__
    raise ValueError(
        f"{path}: expected a state_dict of tensors or {{'model': state_dict, 'config': {{...}}}}, got {described}"
    )


def _check_state_dict(model: ADMUNet, state_dict: Mapping[str, Tensor], path: Path) -> None:
    """Raise a ValueError naming the first missing, unexpected and mis-shaped keys, if any."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mismatched = [
        f"{k}: file {found[k]} vs model {expected[k]}" for k in expected if k in found and found[k] != expected[k]
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("with a different shape", mismatched)):
        if items:
            more = f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:_MAX_LISTED])}{more}")
    raise ValueError(
        f"{path} does not fit the ADM UNet of {model.config}: " + "; ".join(parts)
        + ". Check the configuration (a class-conditional checkpoint, with label_emb.weight, is not supported)."
    )
