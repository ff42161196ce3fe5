"""DDA: diffusion-driven adaptation of the *inputs*, then self-ensembling of the predictions.

Instead of updating the model, DDA projects every test image back toward the source domain with a
diffusion model trained on source data (:class:`tta.projection.DiffusionProjector`: noise the image
half-way, denoise it with structure guidance that keeps its low frequencies), classifies both the
original and the projected image, and combines the two predictions (self-ensembling). The model is
never changed, so it is safe on tiny batches and non-i.i.d. streams, but each image costs ``N``
guided denoiser steps (forward and backward).

Ensemble rules (``ensemble``), over the softmax probabilities ``p`` (original) and ``q`` (projected):

- ``sum`` (official default): ``p + q``.
- ``entropy``: per image, the prediction of lower entropy (ties: the projected one).
- ``confidence``: per image, the prediction of higher maximum probability (ties: the projected one).
- ``entropy_sum``: ``p * H(q) + q * H(p)``; ``confidence_sum``: ``p * max(p) + q * max(q)``.
- ``original`` / ``projected``: one side only (the official ``first`` / ``second``).

Returned logits: ``log`` of the combined probabilities normalized to sum to one (``softmax`` of them
gives the ensemble back, ``argmax`` is DDA's prediction).

State: DDA adapts nothing. Its only state is a counter of projected batches (a buffer), from which
each batch's noise is seeded, so ``reset()`` replays the same noise; with ``base="norm"`` the
classifier also normalizes with test-batch statistics (``adapters_bn``, ``stats="batch"``, which
keeps no state). The denoiser is frozen and is not part of the state dict.

Reference: Gao et al., "Back to the Source: Diffusion-Driven Test-Time Adaptation", CVPR 2023
(arXiv:2207.03442).
Adapted from: shiyegao/DDA (no licence: read, not copied): ``image_adapt`` (projection) and
``model_adapt/evaluation.py`` (ensembles).

Differences from the reference implementation:
- The official pipeline writes projected images to disk and classifies them in a second program; here
  projection and classification run in one ``forward``.
- The official ensembles work on mmcls' softmax scores and the selection rules take ``softmax`` of
  those scores again before measuring entropy/confidence; here entropy and confidence are measured on
  the probabilities themselves.
- The ``var`` and ``*_fuse`` rules of the official code (variance selection, mixing images) are not
  offered.
- Noise comes from a generator seeded per batch (``seed`` and the batch counter), not the global RNG.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

from adapters_bn import adapt_batchnorm, iter_adaptive
from tta.base import TTAMethod
from tta.checks import check_base_options, check_bool, check_choice, check_int, check_non_negative, checked_builder
from tta.projection.denoisers import as_denoiser
from tta.projection.guided import DiffusionProjector, GuidanceNorm
from tta.projection.schedule import NoiseSchedule
from tta.registry import register_adapter

__all__ = ["DDA", "Ensemble", "ENSEMBLES", "ensemble_probabilities"]

Ensemble = Literal["sum", "entropy", "confidence", "entropy_sum", "confidence_sum", "original", "projected"]
ENSEMBLES: tuple[str, ...] = get_args(Ensemble)
_SEED_STRIDE = 1_000_003  # decorrelates the seeds of consecutive batches and of different base seeds


def _entropy(p: Tensor) -> Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(1, keepdim=True)


def ensemble_probabilities(original: Tensor, projected: Tensor, rule: Ensemble = "sum") -> Tensor:
    """Combine the class probabilities of the original and projected images, normalized to sum to one.

    Args:
        original: ``(B, K)`` probabilities on the original images.
        projected: ``(B, K)`` probabilities on the projected images.
        rule: One of :data:`ENSEMBLES` (see the module docstring).

    Returns:
        ``(B, K)`` probabilities.

    Raises:
        ValueError: for an unknown rule or mismatched shapes.
    """
    if original.shape != projected.shape:
        raise ValueError(f"shapes differ: original {tuple(original.shape)}, projected {tuple(projected.shape)}")
    if rule == "sum":
        combined = original + projected
    elif rule == "entropy":
        combined = torch.where(_entropy(original) >= _entropy(projected), projected, original)
    elif rule == "confidence":
        combined = torch.where(original.amax(1, keepdim=True) <= projected.amax(1, keepdim=True), projected, original)
    elif rule == "entropy_sum":
        combined = original * _entropy(projected) + projected * _entropy(original)
    elif rule == "confidence_sum":
        combined = original * original.amax(1, keepdim=True) + projected * projected.amax(1, keepdim=True)
    elif rule == "original":
        combined = original
    elif rule == "projected":
        combined = projected
    else:
        raise ValueError(f"unknown ensemble rule {rule!r}; choose one of {list(ENSEMBLES)}")
    return combined / combined.sum(1, keepdim=True).clamp_min(1e-12)


def _check_projection_options(
    num_train_steps: int, respacing: int, start_step: int, low_pass_factor: int,
    guidance_scale: float, guidance_norm: str, chunk_size: int | None,
) -> None:
    """Raise a clear ``TypeError``/``ValueError`` for a projection option out of its type or range."""
    check_int("num_train_steps", num_train_steps, minimum=1)
    check_int("respacing", respacing, minimum=1)
    if respacing > num_train_steps:
        raise ValueError(f"respacing must be <= num_train_steps ({num_train_steps}), got {respacing}")
    check_int("start_step", start_step, minimum=1)
    if start_step >= respacing:  # the projector's range, checked here before any model conversion
        raise ValueError(f"start_step must be in [1, {respacing - 1}] for respacing={respacing}, got {start_step}")
    check_int("low_pass_factor", low_pass_factor, minimum=1)
    check_non_negative("guidance_scale", guidance_scale)  # NaN or Inf would poison every projected image
    check_choice("guidance_norm", guidance_norm, get_args(GuidanceNorm))
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, minimum=1)


def _check_options(options: Mapping[str, Any]) -> None:
    """Raise a clear ``TypeError``/``ValueError`` for a DDA option out of its type or range (the one check)."""
    check_choice("ensemble", options["ensemble"], ENSEMBLES)
    check_choice("base", options["base"], ("source", "norm"))
    _check_projection_options(options["num_train_steps"], options["respacing"], options["start_step"],
                              options["low_pass_factor"], options["guidance_scale"], options["guidance_norm"],
                              options["chunk_size"])
    check_bool("resize", options["resize"])
    check_bool("fp16", options["fp16"])
    check_int("seed", options["seed"])
    check_base_options(episodic=options["episodic"], input_ndim=options["input_ndim"])
    if options["denoiser"] is None:
        raise ValueError(
            "DDA needs a diffusion model trained on the source data: pass denoiser=<module or checkpoint path> "
            "(for the embedded Fashion-MNIST model, eval/assets/fmnist_ddpm.pt, made by `tta train-diffusion`)"
        )


@register_adapter("dda")
class DDA(TTAMethod):
    """Classify the original and the diffusion-projected images and combine the predictions.

    Args:
        model: The classifier (``[0, 1]`` images in, logits out), possibly BN-converted for ``base="norm"``.
        projector: Maps ``[0, 1]`` images to projected ``[0, 1]`` images.
        ensemble: How the two predictions combine (see :data:`ENSEMBLES`); official default ``sum``.
        seed: Base seed of the projection noise.
        episodic: Reset before every batch (replays the same noise for the same batch).
        input_ndim: Expected input rank.

    Returns (forward): logits ``log p_ensemble`` (see the module docstring).
    """

    changes = "statistics"  # the noise counter (a buffer); with base="norm" also BatchNorm statistics
    exports = "none"  # the inputs are projected by a diffusion model
    needs = frozenset({"denoiser"})
    quick_options: ClassVar[Mapping[str, object]] = {"respacing": 10, "start_step": 2}
    batches_seen: Tensor

    def __init__(
        self,
        model: nn.Module,
        projector: DiffusionProjector,
        *,
        ensemble: Ensemble = "sum",
        seed: int = 0,
        episodic: bool = False,
        input_ndim: int | None = 4,
    ) -> None:
        super().__init__(model, episodic=episodic, input_ndim=input_ndim)
        self.projector = projector
        self.ensemble = ensemble
        self.seed = int(seed)
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))
        self.snapshot()

    def _generator(self, device: torch.device) -> torch.Generator:
        seed = (self.seed * _SEED_STRIDE + int(self.batches_seen)) % (2**63 - 1)
        return torch.Generator(device=device).manual_seed(seed)

    def _predict(self, x: Tensor) -> Tensor:
        original = self.model(x).softmax(1)  # first: a model that rejects x fails before any projection
        projected_images = self.projector(x, generator=self._generator(x.device))
        projected = self.model(projected_images).softmax(1)
        return torch.log(ensemble_probabilities(original, projected, self.ensemble).clamp_min(1e-12))

    def predict(self, x: Tensor) -> Tensor:
        """Return the ensemble logits with the current noise seed, changing nothing."""
        return self._predict(x)

    def adapt_step(self, x: Tensor) -> Tensor:
        """Project ``x``, classify both versions, combine; then advance the noise counter."""
        logits = self._predict(x)
        self.batches_seen += 1
        return logits

    @classmethod
    @checked_builder(_check_options)
    def from_model(
        cls,
        model: nn.Module,
        *,
        denoiser: object = None,
        ensemble: Ensemble = "sum",
        base: Literal["source", "norm"] = "source",
        num_train_steps: int = 1000,
        respacing: int = 100,
        start_step: int = 50,
        low_pass_factor: int = 4,
        guidance_scale: float = 6.0,
        guidance_norm: GuidanceNorm = "batch",
        chunk_size: int | None = None,
        resize: bool = False,
        fp16: bool = False,
        seed: int = 0,
        episodic: bool = False,
        input_ndim: int | None = 4,
    ) -> DDA:
        """Build DDA with a diffusion denoiser; defaults are the official ImageNet script's.

        Args:
            model: The classifier, taking ``[0, 1]`` images (converted in place when ``base="norm"``).
            denoiser: A trained diffusion model (an ``ADMUNet``, a diffusers ``UNet2DModel``, an adapter
                from :mod:`tta.projection.denoisers`, any ``(x_t, t) -> eps`` module) or a checkpoint path.
                Required: the command line fills in the shipped Fashion-MNIST model for the default
                source model.
            ensemble: Rule combining the two predictions (official default ``sum``).
            base: ``source`` keeps the classifier as is; ``norm`` makes its BatchNorm layers use test-batch
                statistics (DDA + norm), on the original and on the projected batch alike.
            num_train_steps: Length of the linear schedule the denoiser was trained with.
            respacing: Steps the schedule is respaced to (official: 100).
            start_step: ``N``, the respaced step the images are noised to (official: 50).
            low_pass_factor: ``D`` of the low-pass filter (official ImageNet: 4).
            guidance_scale: Structure-guidance step size (official ImageNet: 6).
            guidance_norm: ``batch`` (official, one norm over the chunk) or ``image``.
            chunk_size: Images projected at once (``None``: the whole batch).
            resize: Resize test images to the denoiser's size for the projection and back (e.g. 224-px
                ImageNet-C crops with the 256-px ADM model); ``False`` raises on a size mismatch.
            fp16: Load an ADM checkpoint path with half-precision blocks (the official ImageNet script's
                ``use_fp16``; for CUDA); ignored for a denoiser passed as a module.
            seed: Base seed of the projection noise.
            episodic: Reset before every batch.
            input_ndim: Expected input rank.

        Raises:
            TypeError: an option of the wrong type (e.g. ``start_step=2.5``, ``episodic="no"``).
            ValueError: an option out of range (e.g. ``guidance_scale=nan``), no denoiser, or ``base="norm"``
                on a model without BatchNorm.
        """
        # the options were checked (checked_builder) before the model is touched: a rejected call changes nothing
        denoiser = as_denoiser(denoiser, use_fp16=fp16)
        if base == "norm":
            model = adapt_batchnorm(model, stats="batch")
            if not any(iter_adaptive(model)):
                raise ValueError(f"base='norm' needs BatchNorm layers, and {type(model).__name__} has none")
        schedule = NoiseSchedule.linear(num_train_steps, respacing=respacing)
        projector = DiffusionProjector(
            denoiser, schedule, start_step=start_step, low_pass_factor=low_pass_factor,
            guidance_scale=guidance_scale, guidance_norm=guidance_norm, chunk_size=chunk_size, resize=resize,
        )  # fmt: skip
        return cls(model, projector, ensemble=ensemble, seed=seed, episodic=episodic, input_ndim=input_ndim)
