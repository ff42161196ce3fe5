"""DDA's guided projection: noise a test image half-way, then denoise it back while keeping its low frequencies.

For a reference image ``x_ref`` in [-1, 1] (the corrupted test image):

1. ``x_N = q_sample(x_ref, N)``: diffuse it to step ``N`` of the respaced schedule (official: step 50
   of 100, i.e. model timestep 505 of 1000).
2. For ``t = N - 1, ..., 0`` (the official loop starts one step below the noise level it sampled at):
   predict ``x0`` from the denoiser's ``eps`` (clipped to [-1, 1]); take the posterior sample
   ``x_{t-1} = mu(x0, x_t) + sigma_t z`` (no noise at ``t = 0``); then subtract
   ``scale * grad_{x_t} ||phi_D(x_ref) - phi_D(x0)||`` (structure guidance, paper eq. 5-6).
3. Return ``x_0``.

Only the guidance gradient needs autograd (through the denoiser, as the official code does);
everything else runs under ``torch.no_grad``. The official code takes **one** norm over the whole
batch, which couples the images of a batch: each image's step is scaled by ``1 / ||d||`` of the
batch, so a larger batch guides every image less (by about ``1 / sqrt(B)`` for alike images) and one
image's content changes the others' guidance. ``guidance_norm="image"`` takes one norm per image
(the gradient of their sum), which makes every image's projection independent of its batch.

Reference: Gao et al., "Back to the Source: Diffusion-Driven Test-Time Adaptation", CVPR 2023
(arXiv:2207.03442), Sec. 3.2 and Algorithm 1.
Adapted from: the behaviour of ``p_sample_loop_progressive`` in shiyegao/DDA
``image_adapt/guided_diffusion/gaussian_diffusion.py`` (no licence: read, not copied) and
openai/guided-diffusion (MIT); defaults from shiyegao/DDA ``image_adapt.sh``
(``--timestep_respacing 100 --D 4 --N 50 --scale 6``).

Differences from the reference implementation:
- Every random draw comes from a ``torch.Generator``; the official code uses the global RNG.
- Images are projected in chunks of ``chunk_size``; with the batch-wide norm the coupling is
  within a chunk (the official script's chunk is its per-GPU batch of 4).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from tta.projection.denoisers import DenoiserOutput, as_denoiser
from tta.projection.lowpass import low_pass
from tta.projection.schedule import FixedVariance, NoiseSchedule

__all__ = ["DiffusionProjector", "GuidanceNorm", "guidance_distance", "guided_projection"]

GuidanceNorm = Literal["batch", "image"]


def guidance_distance(reference_low: Tensor, x0: Tensor, factor: int, norm: GuidanceNorm = "batch") -> Tensor:
    """Return the guided distance ``||phi_D(ref) - phi_D(x0)||`` as a scalar to differentiate.

    Args:
        reference_low: ``phi_D(x_ref)``, precomputed.
        x0: The predicted clean images (same shape).
        factor: ``D`` of the low-pass filter.
        norm: ``batch``: one Frobenius norm over the whole batch (official); ``image``: the sum of
            per-image norms (images independent).
    """
    difference = reference_low - low_pass(x0, factor)
    if norm == "batch":
        return torch.linalg.vector_norm(difference)
    if norm == "image":
        return torch.linalg.vector_norm(difference.flatten(1), dim=1).sum()
    raise ValueError(f"unknown guidance norm {norm!r}; choose 'batch' (official) or 'image'")


def _resize(images: Tensor, size: tuple[int, ...]) -> Tensor:
    """Resize ``[0, 1]`` images bicubically (antialiased when shrinking), clamped back to ``[0, 1]``."""
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)


def _randn(like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def _denoise(denoiser: nn.Module, x_t: Tensor, t: Tensor, schedule: NoiseSchedule) -> DenoiserOutput:
    out = denoiser(x_t, schedule.timesteps.to(x_t.device)[t])
    return out if isinstance(out, DenoiserOutput) else DenoiserOutput(out)


def guided_projection(
    denoiser: nn.Module,
    reference: Tensor,
    schedule: NoiseSchedule,
    *,
    start_step: int = 50,
    low_pass_factor: int = 4,
    guidance_scale: float = 6.0,
    guidance_norm: GuidanceNorm = "batch",
    fixed_variance: FixedVariance = "small",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Project ``reference`` (images in [-1, 1]) toward the denoiser's training distribution.

    Args:
        denoiser: ``(x_t, model_t) -> DenoiserOutput`` (see :mod:`tta.projection.denoisers`).
        reference: ``(B, C, H, W)`` images in [-1, 1].
        schedule: The (respaced) schedule the loop walks; its ``timesteps`` are passed to the denoiser.
        start_step: ``N``: index of the respaced schedule the images are noised to (official: 50 of 100).
        low_pass_factor: ``D`` of ``phi_D`` (official ImageNet: 4).
        guidance_scale: Step size of the structure guidance (official ImageNet: 6).
        guidance_norm: ``batch`` (official, couples images) or ``image``; see :func:`guidance_distance`.
        fixed_variance: Reverse-step variance for a denoiser without learned sigma: ``small`` (the
            posterior variance) or ``large`` (``beta_t``). A learned-sigma denoiser uses its own.
        generator: Source of all noise (on ``reference``'s device); ``None`` uses the global RNG.

    Returns:
        The projected images ``x_0``, ``(B, C, H, W)``, not clipped (the denoiser's own range).

    Raises:
        ValueError: if ``start_step`` is not in ``[1, len(schedule) - 1]``.
    """
    if not 1 <= start_step < len(schedule):
        raise ValueError(f"start_step must be in [1, {len(schedule) - 1}] for a {len(schedule)}-step schedule, "
                         f"got {start_step}")  # fmt: skip
    with torch.inference_mode(False):  # the guidance needs autograd, also under a caller's inference_mode
        return _guided_loop(denoiser, reference.clone(), schedule, start_step, low_pass_factor, guidance_scale,
                            guidance_norm, fixed_variance, generator)


def _guided_loop(
    denoiser: nn.Module,
    reference: Tensor,
    schedule: NoiseSchedule,
    start_step: int,
    low_pass_factor: int,
    guidance_scale: float,
    guidance_norm: GuidanceNorm,
    fixed_variance: FixedVariance,
    generator: torch.Generator | None,
) -> Tensor:
    batch = reference.shape[0]
    with torch.no_grad():
        reference = reference.detach()
        reference_low = low_pass(reference, low_pass_factor)
        start = torch.full((batch,), start_step, device=reference.device, dtype=torch.long)
        x = schedule.q_sample(reference, start, _randn(reference, generator))
    for step in reversed(range(start_step)):
        t = torch.full((batch,), step, device=reference.device, dtype=torch.long)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            out = _denoise(denoiser, x_in, t, schedule)
            x0 = schedule.predict_x0(x_in, t, out.eps, clip=True)
            distance = guidance_distance(reference_low, x0, low_pass_factor, guidance_norm)
            (grad,) = torch.autograd.grad(distance, x_in)
        with torch.no_grad():
            var_values = None if out.var_values is None else out.var_values.detach()
            mean = schedule.posterior_mean(x0.detach(), x, t)
            x = mean - guidance_scale * grad
            if step > 0:
                log_var = schedule.model_log_variance(t, x, var_values, fixed=fixed_variance)
                x = x + torch.exp(0.5 * log_var) * _randn(x, generator)
    return x.detach()


class DiffusionProjector(nn.Module):
    """Map ``[0, 1]`` images to ``[0, 1]`` images projected by :func:`guided_projection`, in chunks.

    Defaults are the official ImageNet script's (100-step respacing of the 1000-step linear schedule,
    ``N = 50``, ``D = 4``, ``scale = 6``, batch-wide norm). The denoiser is frozen and held without
    registering it as a submodule, so the projector's (and a DDA adapter's) state dict stays small;
    :meth:`_apply` still moves it with ``.to()``.

    Args:
        denoiser: Anything :func:`tta.projection.denoisers.as_denoiser` accepts.
        schedule: Respaced schedule; default ``NoiseSchedule.linear(1000, respacing=100)``.
        start_step: ``N``.
        low_pass_factor: ``D``.
        guidance_scale: Guidance step size.
        guidance_norm: ``batch`` (official) or ``image``.
        fixed_variance: For denoisers without learned sigma (see :func:`guided_projection`).
        chunk_size: Images projected together (memory, and the batch-wide norm's coupling); ``None``
            projects the whole batch at once.
        resize: When the images' size differs from the denoiser's, resize them to it (bicubic,
            antialiased), project, and resize the result back; ``False`` raises instead. The official
            pipeline resizes ImageNet-C's 224-px images to the 256-px model in its data loader and
            classifies crops of the saved projections; resizing back to the input size is ours.
    """

    def __init__(
        self,
        denoiser: object,
        schedule: NoiseSchedule | None = None,
        *,
        start_step: int = 50,
        low_pass_factor: int = 4,
        guidance_scale: float = 6.0,
        guidance_norm: GuidanceNorm = "batch",
        fixed_variance: FixedVariance = "small",
        chunk_size: int | None = None,
        resize: bool = False,
    ) -> None:
        super().__init__()
        if guidance_norm not in ("batch", "image"):
            raise ValueError(f"unknown guidance norm {guidance_norm!r}; choose 'batch' (official) or 'image'")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        self.schedule = schedule if schedule is not None else NoiseSchedule.linear(1000, respacing=100)
        if not 1 <= start_step < len(self.schedule):
            raise ValueError(f"start_step must be in [1, {len(self.schedule) - 1}], got {start_step}")
        self._denoiser = (as_denoiser(denoiser).eval().requires_grad_(False),)  # a tuple: not a submodule
        self.start_step, self.low_pass_factor, self.guidance_scale = start_step, low_pass_factor, guidance_scale
        self.guidance_norm, self.fixed_variance, self.chunk_size = guidance_norm, fixed_variance, chunk_size
        self.resize = resize

    @property
    def denoiser(self) -> nn.Module:
        """The frozen denoiser."""
        return self._denoiser[0]

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self.denoiser._apply(fn)  # .to()/.cuda()/.half() move the unregistered denoiser too
        return super()._apply(fn, recurse)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Return ``images`` (``[0, 1]``) projected toward the source domain, in ``[0, 1]``.

        Raises:
            ValueError: if the images' size or channels do not match the denoiser.
        """
        image_size = getattr(self.denoiser, "image_size", None)
        size = tuple(images.shape[-2:])
        if image_size is not None and size != (image_size, image_size):
            if not self.resize:
                raise ValueError(
                    f"the diffusion model was trained on {image_size}x{image_size} images, got "
                    f"{images.shape[-2]}x{images.shape[-1]}; resize the test images, pass resize=True, or use a "
                    "denoiser of that size"
                )
            resized = _resize(images, (image_size, image_size))
            return _resize(self._project(resized, generator), size)
        return self._project(images, generator)

    def _project(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        """Project images of the denoiser's size, chunk by chunk."""
        chunk = self.chunk_size or images.shape[0]
        outputs = []
        for start in range(0, images.shape[0], chunk):
            reference = images[start : start + chunk] * 2.0 - 1.0
            projected = guided_projection(
                self.denoiser, reference, self.schedule, start_step=self.start_step,
                low_pass_factor=self.low_pass_factor, guidance_scale=self.guidance_scale,
                guidance_norm=self.guidance_norm, fixed_variance=self.fixed_variance, generator=generator,
            )  # fmt: skip
            outputs.append(((projected + 1.0) / 2.0).clamp(0.0, 1.0))
        return torch.cat(outputs)
