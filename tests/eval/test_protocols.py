"""Tests for eval.protocols.registry: domain order, reset flags and the name registry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from eval.domains import Domain
from eval.protocols.label_shift import ClassSorted, DirichletLabelShift
from eval.protocols.domain_order import Continual, ResetEachDomain
from eval.protocols.streams import StreamItem
from eval.protocols.registry import get_protocol, list_protocols

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
    assert list_protocols() == ["class-sorted", "continual", "continual-dirichlet", "dirichlet", "episodic",
                                "gradual", "mixed", "mixed-samples"]


def test_get_protocol_unknown_name_lists_valid_names() -> None:
    valid = "class-sorted, continual, continual-dirichlet, dirichlet, episodic"
    with pytest.raises(ValueError, match=f"unknown protocol 'tent'; valid names are: {valid}"):
        get_protocol("tent")


def _labelled(domain_labels: list[int], batch_size: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Return batches whose images carry their sample's global index, so reordering can be traced."""
    y = torch.tensor(domain_labels)
    x = torch.arange(len(y), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)]


LABELS = [3, 1, 0, 2, 1, 0, 3, 2, 0, 1, 2, 3, 1]


def _flat(items: list[StreamItem]) -> tuple[list[int], list[int]]:
    return (torch.cat([i.x[:, 0, 0, 0] for i in items]).long().tolist(), torch.cat([i.y for i in items]).tolist())


def test_class_sorted_keeps_every_sample_in_label_order() -> None:
    items = list(ClassSorted().stream({SHOT: _labelled(LABELS)}))
    index, labels = _flat(items)
    assert labels == sorted(LABELS) and sorted(index) == list(range(len(LABELS)))
    assert [LABELS[i] for i in index] == labels  # images travel with their labels
    assert [len(i.y) for i in items] == [4, 4, 4, 1] and [i.reset for i in items] == [True, False, False, False]


def test_class_sorted_resets_per_domain_or_once() -> None:
    loaders = {SHOT: _labelled(LABELS), FOG: _labelled(LABELS)}
    assert sum(i.reset for i in ClassSorted().stream(loaders)) == 2
    assert sum(i.reset for i in ClassSorted(reset_each_domain=False).stream(loaders)) == 1


def test_dirichlet_keeps_every_sample_and_seeds_control_the_order() -> None:
    labels = [c for c in range(4) for _ in range(25)]
    order = {s: _flat(list(DirichletLabelShift(0.1, seed=s).stream({SHOT: _labelled(labels, 10)}))) for s in (0, 0, 1)}
    index, streamed = order[0]
    assert sorted(index) == list(range(100)) and [labels[i] for i in index] == streamed
    assert order[0] != order[1]
    assert order[0] == _flat(list(DirichletLabelShift(0.1, seed=0).stream({SHOT: _labelled(labels, 10)})))


def test_dirichlet_small_concentration_clusters_labels() -> None:
    labels = [c for _ in range(25) for c in range(4)]  # i.i.d.-like interleaving: a change at every step
    def changes(concentration: float) -> int:
        _, y = _flat(list(DirichletLabelShift(concentration, seed=0).stream({SHOT: _labelled(labels, 10)})))
        return sum(a != b for a, b in zip(y, y[1:]))
    assert changes(0.01) < 10 < changes(1000.0)


def test_dirichlet_rejects_non_positive_concentration() -> None:
    with pytest.raises(ValueError, match="concentration"):
        DirichletLabelShift(0.0)


def test_get_protocol_builds_the_label_shift_protocols() -> None:
    assert isinstance(get_protocol("class-sorted"), ClassSorted)
    assert isinstance(get_protocol("dirichlet"), DirichletLabelShift)


def test_gradual_goes_up_and_down_each_corruption_with_one_reset() -> None:
    from eval.protocols.domain_order import Gradual

    batch = [(torch.zeros(1, 1), torch.zeros(1, dtype=torch.long))]
    loaders = {Domain("fog", s): batch for s in (3, 1, 5)} | {Domain("snow", s): batch for s in (1, 2)}
    items = list(Gradual().stream(loaders))
    assert [str(i.domain) for i in items] == ["fog-1", "fog-3", "fog-5", "fog-3", "fog-1", "snow-1", "snow-2", "snow-1"]
    assert [i.reset for i in items] == [True] + [False] * 7


def test_mixed_domains_shuffle_all_batches_by_seed() -> None:
    from eval.protocols.domain_order import MixedDomains

    summary = _summary(MixedDomains(seed=3).stream(_loaders()))
    assert sorted(summary, key=lambda t: t[1]) != summary or len(summary) < 3
    assert sorted(v for _, v, _ in summary) == sorted(v for _, v, _ in _summary(ResetEachDomain().stream(_loaders())))
    assert [r for _, _, r in summary] == [True] + [False] * (len(summary) - 1)
    assert _summary(MixedDomains(seed=3).stream(_loaders())) == summary
    assert _summary(MixedDomains(seed=4).stream(_loaders())) != summary
    assert get_protocol("mixed", seed=3).seed == 3  # type: ignore[attr-defined]


def test_mixed_samples_shuffle_every_sample_into_mixed_batches() -> None:
    from eval.protocols.domain_order import MixedSamples

    items = list(MixedSamples(seed=0).stream(_loaders()))
    assert [i.x.shape[0] for i in items] == [2] * 6  # re-batched at the loaders' batch size
    assert [i.reset for i in items] == [True] + [False] * 5
    pairs = [(tag, x.flatten()[0].item()) for i in items for tag, x in zip(i.sample_domains or (), i.x)]
    # each image keeps its own domain tag: tens digit 1/2/3 = shot/gaussian/fog
    assert all({1: SHOT, 2: GAUSSIAN, 3: FOG}[int(v) // 10] == tag for tag, v in pairs)
    assert sorted(v for _, v in pairs) == sorted([10.0, 10.0, 11.0, 11.0, 20.0, 20.0, 21.0, 21.0, 30.0, 30.0, 31.0, 31.0])
    assert any(len(set(i.sample_domains or ())) > 1 for i in items)  # batches really mix domains
    again = [i.x.flatten().tolist() for i in MixedSamples(seed=0).stream(_loaders())]
    assert again == [i.x.flatten().tolist() for i in items]
    assert again != [i.x.flatten().tolist() for i in MixedSamples(seed=1).stream(_loaders())]


def test_stream_item_rejects_sample_domains_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="names 1 domains for a batch of 2"):
        StreamItem(SHOT, torch.zeros(2, 1, 1, 1), torch.zeros(2, dtype=torch.long), True, sample_domains=(SHOT,))


@pytest.mark.parametrize("name", list_protocols())
def test_contiguous_and_carries_state_describe_the_stream(name: str) -> None:
    """Each protocol's two flags match what its stream does: one run per domain, and no reset inside the stream."""
    loaders = {Domain("fog", 1): _batches(1, 3), Domain("fog", 3): _batches(2, 3), Domain("snow", 2): _batches(3, 3)}
    protocol = get_protocol(name, seed=0)
    items = list(protocol.stream(loaders))
    visits = [d for item in items for d in (item.sample_domains or (item.domain,) * item.x.shape[0])]
    runs = [d for i, d in enumerate(visits) if i == 0 or visits[i - 1] != d]
    assert protocol.contiguous == (len(runs) == len(set(runs)))
    assert protocol.carries_state == (not any(item.reset for item in items[1:]))


def _tagged_batches(labels: list[int], tag: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One domain's batches of 4: image ``i`` is filled with ``100 * tag + i``, labels as given."""
    y = torch.tensor(labels)
    x = (100 * tag + torch.arange(len(labels), dtype=torch.float32)).view(-1, 1, 1, 1)
    return [(x[i : i + 4], y[i : i + 4]) for i in range(0, len(labels), 4)]


def test_continual_dirichlet_orders_each_domain_by_dirichlet_with_one_reset() -> None:
    from eval.protocols.label_shift import dirichlet_order, domain_seed

    labels = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]
    loaders = {SHOT: _tagged_batches(labels, 1), GAUSSIAN: _tagged_batches(labels, 2), FOG: _tagged_batches(labels, 3)}
    protocol = get_protocol("continual-dirichlet", seed=3, concentration=0.5)
    items = list(protocol.stream(loaders))
    assert [i.domain for i in items] == [SHOT] * 3 + [GAUSSIAN] * 3 + [FOG] * 3  # domains in continual order
    orders = []
    for tag, domain in ((1, SHOT), (2, GAUSSIAN), (3, FOG)):
        order = dirichlet_order(torch.tensor(labels), 0.5, seed=domain_seed(3, domain)).tolist()
        seen = [int(v) for i in items if i.domain == domain for v in i.x.flatten().tolist()]
        assert seen == [100 * tag + k for k in order]  # within the domain: the Dirichlet order
        orders.append(order)
    assert len({tuple(o) for o in orders}) == 3  # each domain draws its own order, as one long stream would
    assert [i.reset for i in items] == [True] + [False] * 8  # no reset between domains
    assert protocol.carries_state and protocol.contiguous
    # a stream resumed at a later domain gets that domain's same order
    resumed = [int(v) for i in protocol.stream({FOG: _tagged_batches(labels, 3)}) for v in i.x.flatten().tolist()]
    assert resumed == [300 + k for k in orders[2]]


def test_get_protocol_passes_the_dirichlet_concentration() -> None:
    assert get_protocol("dirichlet", concentration=0.01).concentration == 0.01  # type: ignore[attr-defined]
    assert get_protocol("continual-dirichlet").concentration == 0.1  # type: ignore[attr-defined]


def test_get_protocol_rejects_a_concentration_for_a_protocol_without_one() -> None:
    with pytest.raises(ValueError, match="'episodic'.*dirichlet"):
        get_protocol("episodic", concentration=0.5)
