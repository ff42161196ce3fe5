"""Denoisers for DDA: one interface over our ADM UNet, diffusers ``UNet2DModel`` and any ``(x_t, t) -> eps`` module.

A :class:`Denoiser` maps noisy images ``x_t`` in [-1, 1] and the model timesteps ``t`` (``(B,)``,
indices of the training schedule, 0..999) to a :class:`DenoiserOutput`: the predicted noise ``eps``
(``C`` channels) and, for a model that learns its variance (``learn_sigma``), the ``C`` extra
output channels ``var_values`` in [-1, 1] that interpolate the log-variance (guided-diffusion's
"learned range"). Each adapter knows its image size and channels and refuses other inputs with a
clear message.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = [
    "ADMDenoiser",
    "Denoiser",
    "DenoiserOutput",
    "DiffusersDenoiser",
    "ModuleDenoiser",
    "as_denoiser",
    "load_denoiser",
    "split_output",
    "CPU_SECONDS_PER_IMAGE_STEP_ADM256",
]

CPU_SECONDS_PER_IMAGE_STEP_ADM256 = 10.0
"""Rough CPU cost of one guided step (forward + backward) of the 256x256 ADM for one image, in seconds.

About 1.1 TFLOP per forward (the ADM-256 row of Peebles & Xie, DiT, Table 4) times three for the
guidance gradient's backward pass, at a few hundred GFLOP/s of a many-core CPU; slower machines take
longer. Used only for the warning below.
"""


@dataclass(frozen=True)
class DenoiserOutput:
    """What a denoiser predicts: noise ``eps`` and, when the model learns sigma, ``var_values`` in [-1, 1]."""

    eps: Tensor
    var_values: Tensor | None = None


@runtime_checkable
class Denoiser(Protocol):
    """Any callable ``(x_t, t) -> DenoiserOutput`` with the image geometry it accepts."""

    image_size: int | None
    channels: int | None

    def __call__(self, x_t: Tensor, t: Tensor) -> DenoiserOutput: ...


def split_output(output: Tensor, channels: int) -> DenoiserOutput:
    """Split a raw model output: ``C`` channels are ``eps``; ``2C`` are ``eps`` then ``var_values`` (learned sigma).

    Raises:
        ValueError: if the output has neither ``C`` nor ``2C`` channels.
    """
    if output.shape[1] == channels:
        return DenoiserOutput(output)
    if output.shape[1] == 2 * channels:
        eps, var_values = output.split(channels, dim=1)
        return DenoiserOutput(eps, var_values)
    raise ValueError(
        f"the denoiser returned {output.shape[1]} channels for {channels}-channel images; expected {channels} "
        f"(noise) or {2 * channels} (noise and learned variance)"
    )


def _check_geometry(x_t: Tensor, image_size: int | None, channels: int | None, name: str) -> None:
    if x_t.dim() != 4:
        raise ValueError(f"{name} expects (B, C, H, W) images, got shape {tuple(x_t.shape)}")
    if channels is not None and x_t.shape[1] != channels:
        raise ValueError(f"{name} was trained on {channels}-channel images, got {x_t.shape[1]} channels")
    if image_size is not None and tuple(x_t.shape[-2:]) != (image_size, image_size):
        raise ValueError(
            f"{name} was trained on {image_size}x{image_size} images, got {x_t.shape[-2]}x{x_t.shape[-1]}; "
            f"resize the test images to {image_size}x{image_size} or use a denoiser trained at this size"
        )


class ModuleDenoiser(nn.Module):
    """Wrap any module ``(x_t, t) -> Tensor`` whose output has ``C`` (eps) or ``2C`` (eps, var_values) channels.

    Args:
        module: The network.
        image_size: Square size it accepts; ``None`` accepts any.
        channels: Image channels it accepts; ``None`` accepts any.
    """

    def __init__(self, module: nn.Module, *, image_size: int | None = None, channels: int | None = None) -> None:
        super().__init__()
        self.module = module
        self.image_size = image_size
        self.channels = channels

    def forward(self, x_t: Tensor, t: Tensor) -> DenoiserOutput:
        """Return the module's noise (and learned-variance) prediction for ``x_t`` at timesteps ``t``."""
        _check_geometry(x_t, self.image_size, self.channels, type(self.module).__name__)
        return split_output(self.module(x_t, t).to(x_t.dtype), x_t.shape[1])


def _unet_config(unet: nn.Module, kind: str) -> Any:
    """Return ``unet.config`` (an ``ADMConfig`` or a diffusers config; read by attribute)."""
    config = getattr(unet, "config", None)
    if config is None:
        raise TypeError(f"expected {kind} with a .config attribute, got {type(unet).__name__} without one")
    return config


class ADMDenoiser(nn.Module):
    """Our guided-diffusion ADM UNet (:class:`tta.projection.adm.ADMUNet`) as a denoiser.

    Warns once, with an expected time, when a 256x256 (or larger) configuration runs on CPU.
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        config = _unet_config(unet, "an ADMUNet")
        self.image_size: int | None = int(config.image_size)
        self.channels: int | None = int(config.in_channels)
        self._warned_cpu = False

    def forward(self, x_t: Tensor, t: Tensor) -> DenoiserOutput:
        """Return eps and, when the UNet learns sigma, its variance channels, for ``x_t`` at timesteps ``t``."""
        _check_geometry(x_t, self.image_size, self.channels, f"the ADM UNet ({self.image_size}px)")
        if x_t.device.type == "cpu" and (self.image_size or 0) >= 256 and not self._warned_cpu:
            self._warned_cpu = True
            warnings.warn(
                f"running the {self.image_size}x{self.image_size} ADM diffusion model on CPU: each guided step "
                f"costs roughly {CPU_SECONDS_PER_IMAGE_STEP_ADM256:.0f} s per image or more, so DDA's 50 steps take "
                f"about {50 * CPU_SECONDS_PER_IMAGE_STEP_ADM256 / 60:.0f} minutes per image; use a GPU "
                "(move the images and the denoiser with .to('cuda'))",
                RuntimeWarning,
                stacklevel=2,
            )
        return split_output(self.unet(x_t, t).to(x_t.dtype), x_t.shape[1])


class DiffusersDenoiser(nn.Module):
    """A diffusers ``UNet2DModel`` (epsilon prediction; ``2C`` outputs read as learned-range variance)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        config = _unet_config(unet, "a diffusers UNet2DModel")
        if getattr(config, "prediction_type", "epsilon") not in (None, "epsilon"):
            raise ValueError(f"DDA needs an epsilon-prediction model, got prediction_type={config.prediction_type!r}")
        self.unet = unet
        size = config.sample_size
        self.image_size: int | None = int(size if isinstance(size, int) else size[0])
        self.channels: int | None = int(config.in_channels)

    def forward(self, x_t: Tensor, t: Tensor) -> DenoiserOutput:
        """Return the UNet's noise (and learned-variance) prediction for ``x_t`` at timesteps ``t``."""
        _check_geometry(x_t, self.image_size, self.channels, f"the diffusers UNet ({self.image_size}px)")
        return split_output(self.unet(x_t, t).sample.to(x_t.dtype), x_t.shape[1])


def _load_diffusers(folder: Path, map_location: str | torch.device) -> DiffusersDenoiser:
    try:
        from diffusers import UNet2DModel
    except ImportError as error:
        raise ImportError(
            f"loading the diffusers model in {folder} needs the 'diffusion' extra: "
            "pip install '.[diffusion]' in a checkout of this project"
        ) from error
    unet = UNet2DModel.from_pretrained(folder, subfolder="unet" if (folder / "unet").is_dir() else None)
    return DiffusersDenoiser(unet.to(map_location).eval())


def load_denoiser(
    path: str | os.PathLike[str], *, use_fp16: bool = False, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """Load a denoiser from disk: a folder is a diffusers ``UNet2DModel``, a file is an ADM checkpoint.

    ADM checkpoints are those written by :func:`tta.projection.adm.save_adm` (``{"model", "config"}``)
    or the released guided-diffusion state dicts (e.g. ``256x256_diffusion_uncond.pt``, read with the
    256x256 unconditional configuration).

    Raises:
        FileNotFoundError: if ``path`` does not exist (the message says where to put the file).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no diffusion checkpoint at {path}. Put the model there: for ImageNet, the guided-diffusion "
            "256x256_diffusion_uncond.pt (openai/guided-diffusion's README links it); for Fashion-MNIST, "
            "train one with `tta train-diffusion --out PATH`; for diffusers, a folder saved by save_pretrained"
        )
    if path.is_dir():
        return _load_diffusers(path, map_location)
    from tta.projection.adm import load_adm

    return ADMDenoiser(load_adm(path, use_fp16=use_fp16, map_location=map_location).eval())


def as_denoiser(obj: Any, *, image_size: int | None = None, channels: int | None = None,
                use_fp16: bool = False) -> nn.Module:
    """Return ``obj`` as a denoiser: a path is loaded, an ``ADMUNet`` or diffusers UNet is adapted, a module wrapped.

    Args:
        obj: A :class:`Denoiser`-like adapter (returned as is), an ``ADMUNet``, a diffusers
            ``UNet2DModel``, a checkpoint path (see :func:`load_denoiser`), or any ``nn.Module``
            ``(x_t, t) -> Tensor``.
        image_size: Size a plain module accepts (``None``: any).
        channels: Channels a plain module accepts (``None``: any).
        use_fp16: Load an ADM checkpoint path with half-precision blocks (ignored for modules).

    Raises:
        TypeError: if ``obj`` is none of those.
    """
    if isinstance(obj, (ModuleDenoiser, ADMDenoiser, DiffusersDenoiser)):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return load_denoiser(obj, use_fp16=use_fp16)
    if not isinstance(obj, nn.Module):
        raise TypeError(f"expected a denoiser module or a checkpoint path, got {type(obj).__name__}")
    if type(obj).__name__ == "ADMUNet":
        return ADMDenoiser(obj)
    if type(obj).__name__ == "UNet2DModel" and type(obj).__module__.startswith("diffusers"):
        return DiffusersDenoiser(obj)
    return ModuleDenoiser(obj, image_size=image_size, channels=channels)
