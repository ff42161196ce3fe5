"""The ADM UNet of OpenAI's guided diffusion, loading the released checkpoints (e.g. 256x256_diffusion_uncond.pt) as is.

The denoiser DDA uses on ImageNet: a UNet whose levels hold residual blocks conditioned on a
sinusoidal timestep embedding (FiLM "scale-shift" normalization), multi-head self-attention at chosen
resolutions, BigGAN-style residual up/downsampling, and a learned-variance output (2 x channels:
epsilon, then the variance interpolation values). Our ``state_dict`` keys and shapes are those of the
reference ``UNetModel``, so ``load_adm`` reads the released files without any renaming.
The architecture is an :class:`~tta.projection.adm_config.ADMConfig` (re-exported here); the levels
are built by ``tta.projection._adm_levels`` from the blocks of ``tta.projection._adm_blocks``.

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
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from tta.files import atomic_torch_save
from tta.files import read_torch_file
from tta.projection._adm_blocks import GroupNorm32, timestep_embedding, zero_
from tta.projection._adm_levels import BlockFactory, build_input_blocks, build_middle_block, build_output_blocks
from tta.projection.adm_config import ADMConfig, imagenet_256_uncond_config

__all__ = ["ADM_256_UNCOND_FILENAME", "ADM_256_UNCOND_URL", "ADMUNet", "load_adm", "save_adm"]

ADM_256_UNCOND_FILENAME = "256x256_diffusion_uncond.pt"
ADM_256_UNCOND_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt"
"""Where openai/guided-diffusion's README links the unconditional 256x256 ImageNet model (2.2 GB)."""

_MAX_LISTED = 5


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
        base = config.model_channels
        emb_dim = 4 * base
        self.time_embed = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        make = BlockFactory(config, emb_dim)
        self.input_blocks, skip_channels = build_input_blocks(make)
        self.middle_block = build_middle_block(make, skip_channels[-1])
        self.output_blocks = build_output_blocks(make, skip_channels)
        ch = make.width(0)
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
        ValueError: if the file is truncated or not a weights-only torch file, its keys or shapes do not
            match the configuration (the first few are listed), its layout is not one of the two above,
            or its config disagrees with ``config``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ADM diffusion checkpoint not found: {str(path)!r}. For ImageNet, download the official "
            f"{ADM_256_UNCOND_FILENAME} (2.2 GB, linked in the README of openai/guided-diffusion: "
            f"{ADM_256_UNCOND_URL}), put it anywhere (e.g. ./models/{ADM_256_UNCOND_FILENAME}) and pass that path "
            "here or to the command line's diffusion-checkpoint option."
        )
    payload = read_torch_file(path, map_location=map_location, what="ADM diffusion checkpoint")
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
