"""Online evaluation: a slower method adapts on fewer batches and predicts frozen on the rest."""

from __future__ import annotations

import pytest
import torch

import tta
from eval.bench.online import OnlineAdapter, relative_cost
from tests.helpers import clone_state, state_equal, tiny_classifier


def test_cost_three_adapts_on_every_third_batch_only() -> None:
    adapter = tta.wrap(tiny_classifier(), "tent")
    online = OnlineAdapter(adapter, cost=2.5)
    states = []
    for seed in range(6):
        states.append(clone_state(adapter))
        online(torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(seed)))
    states.append(clone_state(adapter))
    changed = [not state_equal(a, b) for a, b in zip(states, states[1:])]
    assert changed == [True, False, False, True, False, False]
    assert online.adapted_batches == 2


def test_cost_one_is_the_offline_protocol() -> None:
    x = torch.rand(4, 3, 16, 16)
    offline, online = tta.wrap(tiny_classifier(), "tent"), OnlineAdapter(tta.wrap(tiny_classifier(), "tent"), cost=1.0)
    assert all(torch.equal(offline(x), online(x)) for _ in range(3))


def test_reset_restarts_schedule_and_method() -> None:
    online = OnlineAdapter(tta.wrap(tiny_classifier(), "tent"), cost=3)
    x = torch.rand(4, 3, 16, 16)
    first = online(x)
    online(x)
    online.reset()
    assert torch.equal(online(x), first)


def test_measured_cost_is_at_least_one_and_leaves_no_trace() -> None:
    model = tiny_classifier()
    adapter = tta.wrap(model, "tent")
    state = clone_state(adapter)
    assert relative_cost(adapter, model, torch.rand(8, 3, 16, 16)) >= 1.0
    assert state_equal(clone_state(adapter), state)
    with pytest.raises(ValueError, match=">= 1"):
        OnlineAdapter(adapter, cost=0.5)
