"""Tests for tta.projection.guided: guidance direction, determinism, batch vs per-image norm, the projector."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.tta.projection.tiny_denoiser import TinyDenoiser
from tta.projection.denoisers import ModuleDenoiser
from tta.projection.guided import DiffusionProjector, guidance_distance, guided_projection
from tta.projection.lowpass import low_pass
from tta.projection.schedule import NoiseSchedule

SCHEDULE = NoiseSchedule.linear(1000, respacing=10)


def _reference(n: int = 3, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _project(reference: torch.Tensor, seed: int, **kwargs: object) -> torch.Tensor:
    options = {"start_step": 5, "low_pass_factor": 4, "generator": torch.Generator().manual_seed(seed), **kwargs}
    return guided_projection(ModuleDenoiser(TinyDenoiser()), reference, SCHEDULE, **options)  # type: ignore[arg-type]


def test_guidance_gradient_step_reduces_the_guided_distance() -> None:
    denoiser, reference = ModuleDenoiser(TinyDenoiser()), _reference()
    reference_low = low_pass(reference, 4)
    t = torch.full((3,), 4)
    x_t = SCHEDULE.q_sample(reference, t, torch.randn(reference.shape, generator=torch.Generator().manual_seed(2)))

    def distance(x: torch.Tensor) -> torch.Tensor:
        x0 = SCHEDULE.predict_x0(x, t, denoiser(x, SCHEDULE.timesteps[t]).eps)
        return guidance_distance(reference_low, x0, 4)

    x = x_t.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(distance(x), x)
    with torch.no_grad():
        assert distance(x_t - 0.05 * grad) < distance(x_t)


def test_guided_loop_ends_closer_to_the_reference_low_frequencies() -> None:
    reference = _reference()
    free, guided = _project(reference, 0, guidance_scale=0.0), _project(reference, 0, guidance_scale=3.0)
    low = low_pass(reference, 4)
    assert torch.linalg.vector_norm(low_pass(guided, 4) - low) < 0.8 * torch.linalg.vector_norm(low_pass(free, 4) - low)


def test_full_loop_is_deterministic_under_a_seed() -> None:
    reference = _reference()
    first, again, other = _project(reference, 3), _project(reference, 3), _project(reference, 4)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == reference.shape and torch.isfinite(first).all()


def test_learned_sigma_denoiser_runs_the_loop() -> None:
    out = guided_projection(ModuleDenoiser(TinyDenoiser(learn_sigma=True)), _reference(), SCHEDULE, start_step=3,
                            generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()


def test_batch_norm_couples_images_and_per_image_norm_does_not() -> None:
    x0 = _reference(2).requires_grad_(True)
    reference_low = low_pass(_reference(2, seed=5), 4)
    changed_low = reference_low.clone()
    changed_low[1] += 1.0  # change only image 1's reference

    def grad_of_first(low: torch.Tensor, norm: str) -> torch.Tensor:
        (grad,) = torch.autograd.grad(guidance_distance(low, x0, 4, norm), x0)  # type: ignore[arg-type]
        return grad[0]

    assert torch.allclose(grad_of_first(reference_low, "image"), grad_of_first(changed_low, "image"))
    assert not torch.allclose(grad_of_first(reference_low, "batch"), grad_of_first(changed_low, "batch"))


def test_batch_norm_shrinks_each_images_guidance_by_one_over_root_batch() -> None:
    one = _reference(1).requires_grad_(True)
    low = low_pass(_reference(1, seed=5), 4)
    four = one.detach().expand(4, -1, -1, -1).clone().requires_grad_(True)
    (single,) = torch.autograd.grad(guidance_distance(low, one, 4, "batch"), one)
    (batched,) = torch.autograd.grad(guidance_distance(low.expand(4, -1, -1, -1), four, 4, "batch"), four)
    (per_image,) = torch.autograd.grad(guidance_distance(low.expand(4, -1, -1, -1), four, 4, "image"), four)
    assert torch.allclose(batched[0], single[0] / 2, atol=1e-6)  # 1 / sqrt(4)
    assert torch.allclose(per_image[0], single[0], atol=1e-6)


def test_projector_maps_unit_images_in_chunks_and_checks_size() -> None:
    projector = DiffusionProjector(ModuleDenoiser(TinyDenoiser(), image_size=16), SCHEDULE, start_step=3,
                                   guidance_norm="image", chunk_size=2)
    images = torch.rand(5, 3, 16, 16)
    out = projector(images, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert dict(projector.state_dict()) == {}  # the frozen denoiser is not state
    with pytest.raises(ValueError, match="trained on 16x16 images, got 28x28"):
        projector(torch.rand(1, 3, 28, 28))


class _SizeRecorder(nn.Module):
    """A denoiser stand-in that records the sizes it is called on and predicts zero noise."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.sizes.append((x_t.shape[-2], x_t.shape[-1]))
        return torch.zeros_like(x_t)


def test_resize_projects_at_the_denoisers_size_and_returns_the_input_size() -> None:
    recorder = _SizeRecorder()
    projector = DiffusionProjector(ModuleDenoiser(recorder, image_size=16), SCHEDULE, start_step=2, resize=True)
    out = projector(torch.rand(2, 3, 12, 12), generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 12, 12) and out.min() >= 0 and out.max() <= 1
    assert recorder.sizes and set(recorder.sizes) == {(16, 16)}
    recorder.sizes.clear()
    projector(torch.rand(2, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    assert set(recorder.sizes) == {(16, 16)}  # a matching size is projected as is


def test_projector_works_under_inference_mode() -> None:
    projector = DiffusionProjector(TinyDenoiser(), SCHEDULE, start_step=2)
    with torch.inference_mode():
        out = projector(torch.rand(2, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()


def test_invalid_settings_raise() -> None:
    with pytest.raises(ValueError, match="start_step"):
        DiffusionProjector(TinyDenoiser(), SCHEDULE, start_step=10)
    with pytest.raises(ValueError, match="guidance norm"):
        DiffusionProjector(TinyDenoiser(), SCHEDULE, guidance_norm="pixel")  # type: ignore[arg-type]
