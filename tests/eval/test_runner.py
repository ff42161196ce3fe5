"""Tests for eval.bench.runner: resets follow the protocol, cells are reported per domain, grad stays on."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from eval.domains import Domain
from eval.protocols.domain_order import Continual, ResetEachDomain
from eval.protocols.streams import StreamItem
from eval.bench.meters import CellStats
from eval.bench.runner import run_benchmark

GAUSSIAN = Domain("gaussian_noise", 5)
SHOT = Domain("shot_noise", 5)
FOG = Domain("fog", 5)
NUM_CLASSES = 3


class RecordingAdapter(nn.Module):
    """Predict the class stored in each image's first pixel; log resets and forward calls.

    One adaptable parameter gets a gradient step per batch, so the adapter needs autograd.
    """

    def __init__(self, events: list[str] | None = None) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.events = [] if events is None else events
        self.resets = 0
        self.batch_sizes: list[int] = []

    def reset(self) -> None:
        self.resets += 1
        self.events.append("reset")

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            raise RuntimeError("gradients are disabled around the adapter")
        self.events.append("forward")
        self.batch_sizes.append(x.shape[0])
        labels = x.flatten(1)[:, 0].long()
        logits = self.scale * 4.0 * nn.functional.one_hot(labels, NUM_CLASSES).float()
        logits.sum().backward()  # stands in for an adaptation step
        return logits


def _batch(predicted: list[int], y: list[int]) -> tuple[Tensor, Tensor]:
    x = torch.tensor(predicted, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    return x, torch.tensor(y)


def _loaders() -> dict[Domain, list[tuple[Tensor, Tensor]]]:
    return {
        GAUSSIAN: [_batch([0, 1], [0, 1]), _batch([2, 2], [2, 2])],  # no mistakes
        SHOT: [_batch([0, 0], [0, 1]), _batch([1, 1], [0, 1])],  # 2 of 4 wrong
        FOG: [_batch([0, 1, 2], [1, 2, 0])],  # all wrong
    }


def test_reset_each_domain_resets_once_before_each_domain() -> None:
    adapter = RecordingAdapter()
    run_benchmark(adapter, ResetEachDomain().stream(_loaders()))
    assert adapter.resets == 3
    assert adapter.events == ["reset", "forward", "forward"] * 2 + ["reset", "forward"]


def test_continual_resets_once() -> None:
    adapter = RecordingAdapter()
    run_benchmark(adapter, Continual().stream(_loaders()))
    assert adapter.resets == 1
    assert adapter.events[0] == "reset"
    assert adapter.batch_sizes == [2, 2, 2, 2, 3]


def test_on_cell_called_once_per_domain_with_its_error() -> None:
    cells: list[tuple[Domain, CellStats]] = []
    stats = run_benchmark(RecordingAdapter(), ResetEachDomain().stream(_loaders()),
                          on_cell=lambda domain, cell: cells.append((domain, cell)))
    assert [(domain, cell.error, cell.n) for domain, cell in cells] == [
        (GAUSSIAN, 0.0, 4), (SHOT, 0.5, 4), (FOG, 1.0, 3)]
    assert dict(cells) == stats
    assert list(stats) == [GAUSSIAN, SHOT, FOG]


def test_on_cell_called_as_soon_as_domain_ends() -> None:
    events: list[str] = []
    adapter = RecordingAdapter(events)
    run_benchmark(adapter, Continual().stream(_loaders()), on_cell=lambda domain, _: events.append(str(domain)))
    assert events == ["reset", "forward", "forward", "gaussian_noise-5", "forward", "forward", "shot_noise-5",
                      "forward", "fog-5"]


def test_cell_stats_hold_calibration_and_time() -> None:
    stats = run_benchmark(RecordingAdapter(), ResetEachDomain().stream(_loaders()))
    softmax_top = torch.tensor([4.0, 0.0, 0.0], dtype=torch.float64).softmax(0)[0].item()
    assert stats[GAUSSIAN].ece == pytest.approx(1.0 - softmax_top)
    assert stats[FOG].ece == pytest.approx(softmax_top)
    assert all(cell.seconds >= 0.0 for cell in stats.values())
    assert stats[GAUSSIAN].nll == pytest.approx(-torch.tensor([4.0, 0.0, 0.0], dtype=torch.float64).log_softmax(0)[0].item())
    assert all(cell.peak_memory_mb is not None and cell.peak_memory_mb > 0 for cell in stats.values())


def test_on_batch_receives_detached_logits_per_batch() -> None:
    seen: list[tuple[Domain, tuple[int, ...], bool]] = []
    run_benchmark(RecordingAdapter(), ResetEachDomain().stream(_loaders()),
                  on_batch=lambda item, logits: seen.append((item.domain, tuple(logits.shape), logits.requires_grad)))
    assert seen == [(GAUSSIAN, (2, 3), False)] * 2 + [(SHOT, (2, 3), False)] * 2 + [(FOG, (3, 3), False)]


def test_runner_keeps_grad_enabled_inside_adapter() -> None:
    adapter = RecordingAdapter()
    run_benchmark(adapter, Continual().stream(_loaders()))
    assert adapter.scale.grad is not None


def test_plain_model_without_reset_runs() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, NUM_CLASSES))
    stats = run_benchmark(model, ResetEachDomain().stream(_loaders()))
    assert [cell.n for cell in stats.values()] == [4, 4, 3]


def test_recurring_domain_accumulates_and_is_reported_again() -> None:
    stream = [StreamItem(GAUSSIAN, *_batch([0, 0], [0, 0]), reset=True),
              StreamItem(SHOT, *_batch([0, 0], [1, 1]), reset=False),
              StreamItem(GAUSSIAN, *_batch([0, 0], [1, 1]), reset=False)]
    cells: list[tuple[Domain, float]] = []
    stats = run_benchmark(RecordingAdapter(), stream, on_cell=lambda domain, cell: cells.append((domain, cell.error)))
    assert cells == [(GAUSSIAN, 0.0), (SHOT, 1.0), (GAUSSIAN, 0.5)]
    assert stats[GAUSSIAN].n == 4


def test_empty_stream_returns_no_cells() -> None:
    calls: list[Domain] = []
    assert run_benchmark(RecordingAdapter(), [], on_cell=lambda domain, _: calls.append(domain)) == {}
    assert calls == []


class _WrongShape(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape[0] + 1, NUM_CLASSES)


class _NotATensor(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return torch.zeros(x.shape[0], NUM_CLASSES), x


def test_wrong_logits_shape_raises_value_error() -> None:
    with pytest.raises(ValueError, match=r"shape \(B, K\) = \(2, K\).*got a torch.float32 tensor of shape \(3, 3\)"):
        run_benchmark(_WrongShape(), ResetEachDomain().stream(_loaders()))


def test_non_tensor_output_raises_type_error() -> None:
    with pytest.raises(TypeError, match="must return a logits tensor of shape \\(B, K\\), got tuple"):
        run_benchmark(_NotATensor(), ResetEachDomain().stream(_loaders()))


def test_mixed_batches_score_each_sample_for_its_domain_and_report_at_the_end() -> None:
    from eval.protocols.domain_order import MixedSamples

    cells: list[tuple[Domain, CellStats]] = []
    events: list[str] = []
    stats = run_benchmark(RecordingAdapter(events), MixedSamples(seed=1).stream(_loaders()),
                          on_cell=lambda domain, cell: cells.append((domain, cell)))
    assert {d: (c.error, c.n) for d, c in stats.items()} == {GAUSSIAN: (0.0, 4), SHOT: (0.5, 4), FOG: (1.0, 3)}
    assert sorted(d for d, _ in cells) == sorted([GAUSSIAN, SHOT, FOG])  # each reported once, after the stream
    assert events.count("reset") == 1 and events.count("forward") == 6  # 11 samples in batches of 2
