"""DANN: logits-only forward, the losses record, the fit loop (exact resume, what trains) and bad input."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from eval.models.source import fmnist_resnet
from tests.helpers import clone_state, randomize_bn_statistics, seeded, state_equal
from tta.da import DANN, DANNLosses, DomainHead, FitConfig, dann_step, fit_dann, trainable_parameters
from tta.params import norm_affine_parameters


def _model() -> nn.Module:
    # Trained-like BN values: the fresh model zeroes each block's last BN scale, which blocks gradients.
    return randomize_bn_statistics(seeded(lambda: fmnist_resnet(width=4))).eval()


def _dann(**kwargs: object) -> DANN:
    return seeded(lambda: DANN(_model(), hidden=(16,), **kwargs), seed=1)  # type: ignore[arg-type]


def _batches(n: int, seed: int, labeled: bool = True) -> list[tuple[Tensor, Tensor] | Tensor]:
    g = torch.Generator().manual_seed(seed)
    out: list[tuple[Tensor, Tensor] | Tensor] = []
    for _ in range(n):
        x = torch.rand(8, 1, 16, 16, generator=g)  # small images keep the fit tests fast
        out.append((x, torch.randint(0, 10, (8,), generator=g)) if labeled else x)
    return out


def test_dann_forward_returns_the_models_logits_only() -> None:
    dann = _dann().eval()
    x = torch.rand(4, 1, 28, 28)
    logits = dann(x)
    assert isinstance(logits, Tensor) and logits.shape == (4, 10)
    assert torch.equal(logits, dann.model(x))
    assert dann.features(x).shape == (4, 16)


def test_dann_losses_record_adds_task_and_weighted_domain_loss() -> None:
    dann = _dann(domain_weight=0.5).train()
    (x_s, y_s), x_t = _batches(1, 0)[0], _batches(1, 1, labeled=False)[0]
    losses = dann.losses((x_s, y_s), x_t, scale=0.3)  # type: ignore[arg-type]
    assert isinstance(losses, DANNLosses)
    assert torch.equal(losses.total, losses.task + 0.5 * losses.domain)
    assert 0.0 <= float(losses.domain_accuracy) <= 1.0 and not losses.domain_accuracy.requires_grad
    with pytest.raises(FrozenInstanceError):
        losses.task = losses.domain  # type: ignore[misc]


def test_dann_with_zero_scale_gives_the_features_only_the_task_gradient() -> None:
    dann = _dann().eval()  # eval: fixed BN statistics and no dropout, so both passes are comparable
    (x_s, y_s), x_t = _batches(1, 0)[0], _batches(1, 1, labeled=False)[0]
    stem = dann.model.stem[0][0].weight
    with_domain = torch.autograd.grad(dann.losses((x_s, y_s), x_t, scale=0.0).total, stem)[0]  # type: ignore[arg-type]
    task_only = torch.autograd.grad(dann.losses((x_s, y_s), x_t, scale=0.0).task, stem)[0]  # type: ignore[arg-type]
    assert torch.equal(with_domain, task_only)
    reversed_grad = torch.autograd.grad(dann.losses((x_s, y_s), x_t, scale=1.0).total, stem)[0]  # type: ignore[arg-type]
    assert not torch.equal(reversed_grad, task_only)


def test_dann_step_updates_classifier_and_discriminator() -> None:
    dann = _dann().train()
    before = clone_state(dann)
    optimizer = torch.optim.SGD(dann.parameters(), lr=0.1)
    (x_s, y_s), x_t = _batches(1, 0)[0], _batches(1, 1, labeled=False)[0]
    dann_step(dann, optimizer, (x_s, y_s), x_t, scale=1.0)  # type: ignore[arg-type]
    after = dann.state_dict()
    assert not torch.equal(before["model.fc.weight"], after["model.fc.weight"])
    assert not torch.equal(before["domain_head.layers.0.weight"], after["domain_head.layers.0.weight"])


def _fit(dann: DANN, path: Path | None, **config: object) -> list:  # type: ignore[type-arg]
    options = {"epochs": 2, "steps_per_epoch": 2, "lr": 0.05, **config}
    return fit_dann(dann, _batches(3, 0), _batches(2, 1, labeled=False), FitConfig(**options), checkpoint=path)  # type: ignore[arg-type]


def test_fit_resumes_from_a_checkpoint_exactly(tmp_path: Path) -> None:
    reference = _dann()
    reference_history = _fit(reference, None)

    interrupted = _dann()
    path = tmp_path / "fit.pt"

    def stop_in_second_epoch(state: object) -> None:
        if getattr(state, "epoch") == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_dann(interrupted, _batches(3, 0), _batches(2, 1, labeled=False),
                 FitConfig(epochs=2, steps_per_epoch=2, lr=0.05), checkpoint=path, progress=stop_in_second_epoch)
    resumed = _dann()
    history = _fit(resumed, path)
    assert state_equal(resumed.state_dict(), reference.state_dict())
    assert history == reference_history and len(history) == 2
    assert history[-1].scale == pytest.approx(torch.tensor(0.75 * -10.0).exp().add(1).reciprocal().mul(2).sub(1).item())


def test_fit_checkpoint_of_another_configuration_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fit.pt"
    _fit(_dann(), path, epochs=1)
    with pytest.raises(ValueError, match="another configuration.*epochs=1"):
        _fit(_dann(), path, epochs=2)
    with pytest.raises(ValueError, match="another run"):
        fit_dann(_dann(), _batches(3, 0), _batches(2, 1, labeled=False), FitConfig(epochs=1, steps_per_epoch=2,
                 lr=0.05), checkpoint=path, tag="other target")


@pytest.mark.parametrize(("which", "last_blocks", "expected"), [("norm", 1, "norm"), ("last", 2, ("layer3.", "fc."))])
def test_fit_trains_only_the_chosen_parameters(which: str, last_blocks: int, expected: object) -> None:
    dann = _dann()
    before = {n: p.detach().clone() for n, p in dann.model.named_parameters()}
    _fit(dann, None, epochs=1, trainable=which, last_blocks=last_blocks)
    if expected == "norm":
        chosen = {n for n, _ in norm_affine_parameters(dann.model)}
    else:
        chosen = {n for n in before if n.startswith(expected)}  # type: ignore[arg-type]
    assert chosen == set(trainable_parameters(dann.model, which, last_blocks=last_blocks))  # type: ignore[arg-type]
    for name, param in dann.model.named_parameters():
        assert torch.equal(param, before[name]) != (name in chosen), name


def test_fit_leaves_the_callers_random_state_alone() -> None:
    state = torch.get_rng_state()
    _fit(_dann(), None, epochs=1)
    assert torch.equal(torch.get_rng_state(), state)


def test_fit_empty_target_loader_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="target_loader yielded no batches"):
        fit_dann(_dann(), _batches(2, 0), [], FitConfig(epochs=1))


def test_dann_mismatched_feature_dimension_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"takes 16 features but the domain head expects 32.*in_features=16"):
        DANN(_model(), domain_head=DomainHead(32, hidden=(8,)))
    with pytest.raises(ValueError, match="expects 32"):
        DANN(_model(), domain_head=nn.Sequential(nn.Linear(32, 2)))


def test_dann_head_not_found_names_the_head_option() -> None:
    from tests.tta.test_heads import _Unconventional

    body = _Unconventional()
    with pytest.raises(ValueError, match="head="):
        DANN(body)
    dann = DANN(body, head="out", hidden=(8,))
    assert dann.domain_head.in_features == 4  # type: ignore[union-attr]


def test_dann_losses_reject_empty_and_mismatched_batches() -> None:
    dann = _dann().train()
    x_s, y_s = _batches(1, 0)[0]  # type: ignore[misc]
    with pytest.raises(ValueError, match="empty batch"):
        dann.losses((x_s, y_s), x_s[:0])
    with pytest.raises(ValueError, match="share their shape"):
        dann.losses((x_s, y_s), torch.rand(8, 1, 12, 12))


def test_domain_head_rejects_features_of_another_width() -> None:
    with pytest.raises(ValueError, match=r"\(B, 16\).*in_features=8"):
        DomainHead(16, hidden=(4,))(torch.rand(2, 8))
