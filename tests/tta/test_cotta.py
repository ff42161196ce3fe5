"""CoTTA: mean teacher, stochastic restore, confidence-gated augmentation averaging, batched augmentations."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tta
from tests.helpers import small_resnet, small_vit, tiny_classifier
from tta.augment import augment, augment_copies, sample_augment_params
from tta.losses import soft_cross_entropy, symmetric_cross_entropy
from tta.methods.cotta import PRESETS, CoTTA, collect_params, configure_model


def _batch(n: int = 8, channels: int = 3, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _cotta(model: nn.Module | None = None, **kwargs: object) -> CoTTA:
    options: dict[str, object] = {"num_augmentations": 2, **kwargs}
    return tta.wrap(tiny_classifier() if model is None else model, "cotta", **options)  # type: ignore[return-value]


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in collect_params(model)}


def test_cotta_teacher_equals_ema_formula_after_one_step() -> None:
    adapter = _cotta(ema_momentum=0.9, restore_prob=0.0)
    teacher_before = [p.detach().clone() for p in adapter.teacher.parameters()]
    adapter(_batch())
    student = [p.detach() for p in adapter.model.parameters()]
    for t_before, t_after, s in zip(teacher_before, adapter.teacher.parameters(), student):
        assert torch.equal(t_after, 0.9 * t_before + (1 - 0.9) * s)  # the official update_ema_variables
    assert any(not torch.equal(a, b) for a, b in zip(teacher_before, adapter.teacher.parameters()))


def test_cotta_restore_prob_one_brings_back_source_weights() -> None:
    adapter = _cotta(restore_prob=1.0)
    source = _params(adapter.model)
    adapter(_batch())
    after = _params(adapter.model)
    assert all(torch.equal(after[name], value) for name, value in source.items())


def test_cotta_restore_prob_zero_leaves_the_optimizer_step() -> None:
    adapter = _cotta(restore_prob=0.0)
    oracle = copy.deepcopy(adapter.model)
    optimizer = torch.optim.Adam([p for _, p in collect_params(oracle)], lr=1e-3, betas=(0.9, 0.999))
    x = _batch()
    target = adapter(x)  # the teacher target it trained towards
    soft_cross_entropy(oracle(x), target).mean(0).backward()
    optimizer.step()
    after, expected = _params(adapter.model), _params(oracle)
    assert all(torch.equal(after[name], expected[name]) for name in expected)


def test_cotta_restore_is_per_element() -> None:
    adapter = _cotta(restore_prob=0.5, optimizer="sgd", lr=1.0)
    source = _params(adapter.model)
    adapter(_batch())
    restored = torch.cat([(p == source[n]).flatten() for n, p in _params(adapter.model).items()]).float().mean()
    assert 0.35 < restored.item() < 0.65


def _anchor_confidence(adapter: CoTTA, x: torch.Tensor) -> float:
    with torch.no_grad():
        return adapter.anchor(x).softmax(1).max(1).values.mean().item()


@pytest.mark.parametrize("offset", [-1e-3, 1e-3])
def test_cotta_averages_augmentations_exactly_when_anchor_is_unsure(offset: float) -> None:
    x = _batch()
    confidence = _anchor_confidence(_cotta(), x)
    adapter = _cotta(confidence_threshold=confidence + offset)
    with torch.no_grad():
        plain = adapter.teacher(x)
        averaged = adapter.augmented_teacher_logits(x, *adapter.step_generators(x.device))
    out = adapter(x)
    if offset > 0:  # threshold above the anchor's confidence: unsure, augmentation-averaged target
        assert torch.equal(out, averaged) and not torch.allclose(out, plain)
    else:
        assert torch.equal(out, plain)


@pytest.mark.parametrize("norm", ["bn", "gn"])  # per-copy batch statistics under vmap / one concatenated batch
def test_cotta_batched_copies_equal_one_forward_per_copy(norm: str) -> None:
    adapter = _cotta(tiny_classifier(norm), num_augmentations=3, max_images=16)  # 2 copies of 8 per forward, then 1
    x = _batch()
    cpu_gen, device_gen = adapter.step_generators(x.device)
    with torch.no_grad():
        batched = adapter.augmented_teacher_logits(x, cpu_gen, device_gen)
        cpu_gen, device_gen = adapter.step_generators(x.device)
        params = sample_augment_params(3, 16, 16, cpu_gen)
        looped = torch.stack([adapter.teacher(augment(x, p, device_gen)) for p in params]).mean(0)
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-5)


def test_cotta_presets_follow_the_official_configs() -> None:
    imagenet = _cotta(preset="imagenet")
    assert isinstance(imagenet.optimizer, torch.optim.SGD)
    group = imagenet.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.01, 0.9, True)
    assert (imagenet.restore_prob, imagenet.confidence_threshold, imagenet.symmetric_loss) == (0.001, 0.1, True)
    cifar = _cotta()
    assert isinstance(cifar.optimizer, torch.optim.Adam) and cifar.optimizer.param_groups[0]["lr"] == 1e-3
    assert (cifar.ema_momentum, cifar.restore_prob, cifar.confidence_threshold) == (0.999, 0.01, 0.92)
    assert set(PRESETS) == {"cifar10", "imagenet"}
    with pytest.raises(ValueError, match="preset"):
        _cotta(preset="cifar100")


def test_cotta_updates_every_weight_and_bias() -> None:
    model = configure_model(tiny_classifier())
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [n for n, _ in collect_params(model)]
    assert len(collect_params(model)) == len(list(model.parameters()))


def test_cotta_losses_match_the_official_formulas() -> None:
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    torch.testing.assert_close(soft_cross_entropy(s, t), -(t.softmax(1) * s.log_softmax(1)).sum(1))
    expected = -0.5 * (t.softmax(1) * s.log_softmax(1)).sum(1) - 0.5 * (s.softmax(1) * t.log_softmax(1)).sum(1)
    torch.testing.assert_close(symmetric_cross_entropy(s, t), expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_augment_shares_draws_across_the_batch_and_stays_in_range(channels: int) -> None:
    image = _batch(1, channels, 12)
    x = image.expand(4, -1, -1, -1).contiguous()
    params = sample_augment_params(3, 12, 12, torch.Generator().manual_seed(0))
    copies = augment_copies(x, params, torch.Generator().manual_seed(0), noise_std=0.0)
    assert copies.shape == (3, 4, channels, 12, 12)
    assert 0.0 <= copies.min().item() and copies.max().item() <= 1.0
    assert torch.equal(copies[:, 0], copies[:, 3])  # one draw per copy, shared by the batch
    assert not torch.equal(copies[0], copies[1])


def test_augment_is_replayable_from_generators() -> None:
    x = _batch(2)
    runs = [augment_copies(x, sample_augment_params(2, 16, 16, torch.Generator().manual_seed(5)),
                           torch.Generator().manual_seed(6)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("build", [lambda: small_resnet("bn"), small_vit, lambda: small_resnet("gn")],
                         ids=["resnet_bn", "vit_ln", "resnet_gn"])
def test_cotta_runs_on_any_architecture(build: object) -> None:
    adapter = _cotta(build(), confidence_threshold=2.0)  # always augmentation-averaged
    x = _batch(4)
    before = _params(adapter.model)
    out = adapter(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    assert any(not torch.equal(p, before[n]) for n, p in _params(adapter.model).items())


def _identity(x: torch.Tensor, cpu_gen: torch.Generator, device_gen: torch.Generator) -> torch.Tensor:
    return x


def test_cotta_supplied_augment_is_used_for_every_copy() -> None:
    calls: list[tuple[torch.Tensor, torch.Generator, torch.Generator]] = []

    def record(x: torch.Tensor, cpu_gen: torch.Generator, device_gen: torch.Generator) -> torch.Tensor:
        calls.append((x, cpu_gen, device_gen))
        return x

    adapter = _cotta(tiny_classifier("bn"), num_augmentations=3, max_images=16, confidence_threshold=2.0,
                     augment=record)  # always augmentation-averaged, 2 copies then 1 per forward
    x = _batch()
    with torch.no_grad():
        plain = adapter.teacher(x)
    out = adapter(x)
    assert len(calls) == 3 and all(torch.equal(c[0], x) for c in calls)
    assert all(isinstance(c[1], torch.Generator) and isinstance(c[2], torch.Generator) for c in calls)
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-5)  # identical copies: the plain teacher's target


def test_cotta_identity_augment_adapts_like_the_unaugmented_teacher() -> None:
    augmented = _cotta(confidence_threshold=2.0, augment=_identity)  # every target augmentation-averaged
    plain = _cotta(confidence_threshold=0.0)  # every target on the batch itself
    for seed in (1, 2):
        torch.testing.assert_close(augmented(_batch(seed=seed)), plain(_batch(seed=seed)), rtol=1e-5, atol=1e-5)


def test_cotta_supplied_augment_replays_its_draws_after_reset() -> None:
    def noisy(x: torch.Tensor, cpu_gen: torch.Generator, device_gen: torch.Generator) -> torch.Tensor:
        return x + 0.1 * torch.randn(x.shape, generator=device_gen, device=x.device) * torch.rand(1, generator=cpu_gen)

    adapter = _cotta(confidence_threshold=2.0, augment=noisy)
    first = adapter(_batch())
    adapter.reset()
    assert torch.equal(adapter(_batch()), first)


def test_cotta_default_augment_keeps_the_official_chain() -> None:
    x = _batch()
    default, explicit = _cotta(confidence_threshold=2.0), _cotta(confidence_threshold=2.0, augment=None)
    assert torch.equal(default(x), explicit(x))


@pytest.mark.parametrize("value", ["flip", 3, torch.zeros(1)])
def test_cotta_refuses_an_augment_that_is_not_callable(value: object) -> None:
    with pytest.raises(TypeError, match=r"augment must be a callable augment\(x, cpu_generator, device_generator\)"):
        _cotta(augment=value)


@pytest.mark.parametrize(("augment_fn", "error", "message"), [
    (lambda x, c, d: x[:1], ValueError, r"augment returned shape \(1, 3, 16, 16\), .* for a batch of shape \(8, 3, 16, 16\)"),
    (lambda x, c, d: x.double(), ValueError, "augment returned .* torch.float64 .* torch.float32"),
    (lambda x, c, d: x.numpy(), TypeError, "augment returned a ndarray, not a tensor"),
])
def test_cotta_refuses_an_augment_that_returns_no_copy_of_the_batch(augment_fn: object, error: type[Exception],
                                                                     message: str) -> None:
    adapter = _cotta(confidence_threshold=2.0, augment=augment_fn)
    with pytest.raises(error, match=message):
        adapter(_batch())
