"""CollapseGuard: a collapsing Tent is caught; a healthy method is left alone."""

from __future__ import annotations

import threading

import pytest
import torch

import tta
from eval.datasets import CorruptedView, load_fashion_mnist
from eval.models.source import load_source_model
from tta.guard import CollapseGuard, marginal_entropy
from tests.helpers import tiny_classifier


def test_marginal_entropy_is_zero_for_one_class_and_log_k_for_uniform() -> None:
    assert marginal_entropy(torch.tensor([[10.0, -10.0], [10.0, -10.0]])).item() < 1e-6
    assert abs(marginal_entropy(torch.zeros(4, 8)).item() - torch.log(torch.tensor(8.0)).item()) < 1e-6


def _stream_error(adapter: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[float]:
    errors = []
    for round_ in range(2):
        for corruption in ("gaussian_noise", "contrast", "defocus_blur", "impulse_noise"):
            for x, y in CorruptedView(images, labels, corruption, 5, batch_size=64, seed=round_):
                errors.append((adapter(x).argmax(1) != y).float().mean().item())
    return errors


@pytest.mark.timeout(360)  # seconds when idle, but three real-model streams ran past 120 s on a loaded machine
def test_guard_keeps_a_collapsing_tent_at_or_below_source() -> None:
    try:
        images, labels = load_fashion_mnist("test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    images, labels = images[:512], labels[:512]
    model = load_source_model()
    source = _stream_error(tta.wrap(model, "source"), images, labels)
    plain = _stream_error(tta.wrap(model, "tent", lr=0.05), images, labels)
    guarded_adapter = tta.wrap(model, "tent", lr=0.05, production=True)
    guarded = _stream_error(guarded_adapter, images, labels)
    half = len(source) // 2
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean(plain[half:]) > mean(source[half:]) + 0.05, "setup: plain Tent must collapse on this stream"
    assert mean(guarded) <= mean(source)
    assert mean(guarded[half:]) <= mean(source[half:])
    assert isinstance(guarded_adapter, CollapseGuard) and guarded_adapter.events


def test_guard_stays_quiet_when_adaptation_is_healthy(analytic, shifted) -> None:  # type: ignore[no-untyped-def]
    x, _ = shifted
    guard = tta.wrap(analytic, "norm", production=True)
    for _ in range(5):
        guard(x)
    assert guard.events == []


@pytest.mark.parametrize("policy", ["reset", "fallback", "freeze"])
def test_policies_answer_with_source_and_act(policy: str) -> None:
    source = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10)).eval()
    collapsed = tiny_classifier()
    with torch.no_grad():
        collapsed[-1].bias[0] = 6.0  # nearly every prediction is class 0: low diversity, still trainable
    adapter = tta.wrap(collapsed, "tent")
    guard = CollapseGuard(adapter, source, policy=policy)
    x = torch.rand(16, 3, 16, 16) * 3
    adapter(x)  # move away from the snapshot, so a reset is visible
    moved = {k: v.clone() for k, v in adapter.state_dict().items()}
    out = guard(x)
    assert len(guard.events) == 1 and guard.events[0].action == policy
    assert torch.equal(out, source(x))
    reset = all(torch.equal(v, adapter.reset_point[0][k]) for k, v in adapter.state_dict().items())
    assert reset == (policy != "fallback")
    if policy == "fallback":
        assert any(not torch.equal(v, adapter.state_dict()[k]) for k, v in moved.items())
    assert guard.stopped == (policy == "freeze")


def test_bad_guard_options_raise() -> None:
    model = tiny_classifier()
    with pytest.raises(ValueError, match="policy"):
        CollapseGuard(tta.wrap(model, "tent"), model, policy="panic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_diversity_ratio"):
        CollapseGuard(tta.wrap(model, "tent"), model, min_diversity_ratio=1.5)


def test_guard_frozen_neither_counts_nor_acts() -> None:
    guard = CollapseGuard.around(tta.wrap(tiny_classifier(), "tent", lr=20.0), tiny_classifier(),
                                 min_diversity_ratio=0.99)
    x = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 3
    state = {k: v.clone() for k, v in guard.adapter.state_dict().items()}
    with guard.frozen():
        for _ in range(3):
            guard(x)
    assert guard.events == [] and guard.batches == 0
    assert all(torch.equal(v, state[k]) for k, v in guard.adapter.state_dict().items())


def test_wrap_chooses_the_guard_policy_and_checks_it() -> None:
    guard = tta.wrap(tiny_classifier(), "tent", production=True, guard_policy="fallback")
    assert isinstance(guard, CollapseGuard) and guard.policy == "fallback"
    with pytest.raises(ValueError, match="unknown guard policy 'later'"):
        tta.wrap(tiny_classifier(), "tent", production=True, guard_policy="later")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs production=True"):
        tta.wrap(tiny_classifier(), "tent", guard_policy="freeze")


class _Recording(torch.nn.Module):
    """The guard's source model, logging which batch each call gets (the guard calls it inside its step)."""

    def __init__(self, model: torch.nn.Module, index_of: dict[int, int]) -> None:
        super().__init__()
        self.model, self.index_of, self.order = model, index_of, list[int]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.order.append(self.index_of[id(x)])
        return self.model(x)


def _collapsing_guard(index_of: dict[int, int]) -> tuple[CollapseGuard, _Recording]:
    recording = _Recording(tiny_classifier(), index_of)
    guard = CollapseGuard(tta.wrap(tiny_classifier(), "tent", lr=2.0), recording, min_diversity_ratio=0.95)
    return guard, recording


def test_guard_under_threads_equals_a_serial_replay_in_lock_order() -> None:
    threads_n, calls = 6, 12
    generator = torch.Generator().manual_seed(0)
    batches = [torch.rand(16, 3, 16, 16, generator=generator) * 3 for _ in range(threads_n * calls)]
    index_of = {id(x): i for i, x in enumerate(batches)}
    guard, recording = _collapsing_guard(index_of)
    outputs: dict[int, torch.Tensor] = {}

    def worker(first: int) -> None:
        for i in range(first, first + calls):
            outputs[i] = guard(batches[i])

    workers = [threading.Thread(target=worker, args=(t * calls,)) for t in range(threads_n)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    replay, _ = _collapsing_guard(index_of)
    assert sorted(recording.order) == list(range(len(batches)))
    for i in recording.order:
        assert torch.equal(replay(batches[i]), outputs[i]), f"batch {i} differs from the serial replay"
    assert len(replay.events) == len(guard.events) and 0 < len(guard.events) < len(batches)
