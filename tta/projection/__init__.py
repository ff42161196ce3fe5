"""Input projection toward the source domain: diffusion-driven (DDA)."""

from tta.projection.adm_config import ADMConfig, imagenet_256_uncond_config
from tta.projection.adm import ADMUNet, load_adm, save_adm
from tta.projection.denoisers import (
    ADMDenoiser,
    Denoiser,
    DenoiserOutput,
    DiffusersDenoiser,
    ModuleDenoiser,
    as_denoiser,
    load_denoiser,
)
from tta.projection.guided import DiffusionProjector, guidance_distance, guided_projection
from tta.projection.lowpass import low_pass, low_pass_matrix, resize_matrix
from tta.projection.schedule import NoiseSchedule, linear_betas, space_timesteps

__all__ = [
    "ADMConfig",
    "ADMDenoiser",
    "ADMUNet",
    "Denoiser",
    "DenoiserOutput",
    "DiffusersDenoiser",
    "DiffusionProjector",
    "ModuleDenoiser",
    "NoiseSchedule",
    "as_denoiser",
    "guidance_distance",
    "guided_projection",
    "imagenet_256_uncond_config",
    "linear_betas",
    "load_adm",
    "load_denoiser",
    "low_pass",
    "low_pass_matrix",
    "resize_matrix",
    "save_adm",
    "space_timesteps",
]
