"""Tests for eval.protocols: domain order, reset flags and the name registry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from eval.domains import Domain
from eval.protocols import Continual, ResetEachDomain, StreamItem, get_protocol, list_protocols

GAUSSIAN = Domain("gaussian_noise", 5)
SHOT = Domain("shot_noise", 5)
FOG = Domain("fog", 3)


def _batches(tag: int, count: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Return ``count`` batches whose images are filled with ``tag`` and batch index."""
    return [(torch.full((2, 1, 4, 4), float(10 * tag + i)), torch.tensor([tag, i])) for i in range(count)]


def _loaders() -> dict[Domain, list[tuple[torch.Tensor, torch.Tensor]]]:
    # Deliberately not in sorted order: the stream must follow the mapping's order.
    return {SHOT: _batches(1), GAUSSIAN: _batches(2), FOG: _batches(3)}


def _summary(items: Iterator[StreamItem]) -> list[tuple[Domain, float, bool]]:
    return [(item.domain, item.x.flatten()[0].item(), item.reset) for item in items]


def test_reset_each_domain_resets_on_first_batch_of_each_domain() -> None:
    assert _summary(ResetEachDomain().stream(_loaders())) == [
        (SHOT, 10.0, True), (SHOT, 11.0, False),
        (GAUSSIAN, 20.0, True), (GAUSSIAN, 21.0, False),
        (FOG, 30.0, True), (FOG, 31.0, False),
    ]


def test_continual_resets_only_on_first_batch() -> None:
    assert _summary(Continual().stream(_loaders())) == [
        (SHOT, 10.0, True), (SHOT, 11.0, False),
        (GAUSSIAN, 20.0, False), (GAUSSIAN, 21.0, False),
        (FOG, 30.0, False), (FOG, 31.0, False),
    ]


def test_stream_items_carry_the_loader_tensors() -> None:
    loaders = _loaders()
    first = next(ResetEachDomain().stream(loaders))
    assert first.x is loaders[SHOT][0][0]
    assert first.y is loaders[SHOT][0][1]


def test_stream_item_is_frozen() -> None:
    item = StreamItem(GAUSSIAN, torch.zeros(1), torch.zeros(1), reset=True)
    with pytest.raises(AttributeError):
        item.reset = False  # type: ignore[misc]


def test_reset_each_domain_skips_empty_domain() -> None:
    loaders = {SHOT: [], GAUSSIAN: _batches(2, count=1)}
    assert _summary(ResetEachDomain().stream(loaders)) == [(GAUSSIAN, 20.0, True)]


def test_continual_resets_first_batch_after_empty_first_domain() -> None:
    loaders = {SHOT: [], GAUSSIAN: _batches(2, count=1), FOG: _batches(3, count=1)}
    assert [item.reset for item in Continual().stream(loaders)] == [True, False]


def test_stream_accepts_one_shot_iterators() -> None:
    loaders = {SHOT: iter(_batches(1)), GAUSSIAN: (batch for batch in _batches(2))}
    assert len(list(ResetEachDomain().stream(loaders))) == 4


def test_stream_rejects_batches_that_are_not_pairs() -> None:
    loaders = {SHOT: [(torch.zeros(1), torch.zeros(1), torch.zeros(1))]}
    with pytest.raises(TypeError, match="must yield \\(x, y\\) pairs.*got tuple of length 3"):
        list(Continual().stream(loaders))


def test_stream_rejects_non_tensor_batches() -> None:
    loaders = {SHOT: [([0.0], [1])]}
    with pytest.raises(TypeError, match=r"must yield tensors, got \(list, list\)"):
        list(ResetEachDomain().stream(loaders))


def test_get_protocol_returns_instances_by_name() -> None:
    assert isinstance(get_protocol("episodic"), ResetEachDomain)
    assert isinstance(get_protocol("continual"), Continual)
    assert get_protocol("episodic").name == "episodic"
    assert get_protocol("continual").name == "continual"


def test_list_protocols_names_every_protocol() -> None:
    assert list_protocols() == ["continual", "episodic"]


def test_get_protocol_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown protocol 'tent'; valid names are: continual, episodic"):
        get_protocol("tent")
