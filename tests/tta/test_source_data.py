"""``source_data=``: every accepted shape, every rejected one, and a method that declares it needs it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

import tta
from tta.source_data import SourceData, require_source_data, source_batches, uses_source_data
from tests.helpers import tiny_classifier
from tests.source_data_method import source_method_registered


@pytest.fixture
def counter_method() -> Iterator[str]:
    """The test-only method that needs source data, registered for one test."""
    with source_method_registered() as name:
        yield name


def _images(n: int, seed: int = 0) -> Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _labels(n: int) -> Tensor:
    return torch.arange(n) % 10


def _pairs(source_data: SourceData, **kwargs: object) -> list[tuple[Tensor, Tensor | None]]:
    return list(source_batches(source_data, method="m", **kwargs))  # type: ignore[arg-type]


# --- accepted shapes ----------------------------------------------------------------------------------


def test_a_tensor_is_one_unlabeled_batch() -> None:
    x = _images(5)
    ((got, y),) = _pairs(x)
    assert got is x and y is None


def test_a_pair_is_one_labeled_batch() -> None:
    x, y = _images(5), _labels(5)
    ((got_x, got_y),) = _pairs((x, y))
    assert got_x is x and got_y is y


def test_a_dataloader_is_read_again_on_every_pass() -> None:
    x, y = _images(10), _labels(10)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    for _ in range(2):
        batches = _pairs(loader)
        assert [len(b) for b, _ in batches] == [4, 4, 2]
        assert torch.equal(torch.cat([b for b, _ in batches]), x)
        assert torch.equal(torch.cat([t for _, t in batches]), y)  # type: ignore[misc]


def test_a_list_mixes_images_only_and_labeled_batches() -> None:
    x = _images(6)
    batches = _pairs([x[:2], (x[2:4], _labels(2)), [x[4:]]])
    assert [y is None for _, y in batches] == [True, False, True]


def test_a_function_is_called_for_every_pass() -> None:
    x = _images(6)

    def factory() -> Iterator[Tensor]:
        yield x[:4]
        yield x[4:]

    assert [len(b) for b, _ in _pairs(factory)] == [4, 2]
    assert [len(b) for b, _ in _pairs(factory)] == [4, 2]


def test_limit_cuts_the_batch_that_reaches_it_and_stops_reading() -> None:
    x, y = _images(10), _labels(10)
    read: list[int] = []

    def factory() -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, 10, 4):
            read.append(start)
            yield x[start:start + 4], y[start:start + 4]

    batches = _pairs(factory, limit=6)
    assert [len(b) for b, _ in batches] == [4, 2] and [len(t) for _, t in batches] == [4, 2]  # type: ignore[arg-type]
    assert read == [0, 4]
    assert [len(b) for b, _ in _pairs(factory, limit=8)] == [4, 4]


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_below_one_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match="limit must be an int >= 1"):
        _pairs(_images(2), limit=limit)


def test_limit_must_be_an_int() -> None:
    with pytest.raises(TypeError, match="limit must be an int"):
        _pairs(_images(2), limit=2.0)


# --- rejected input -------------------------------------------------------------------------------------


def test_missing_source_data_names_the_method_and_how_to_pass_it() -> None:
    with pytest.raises(ValueError, match=r"method 'eata' needs source data.*tta.wrap\(model, 'eata', "
                                         r"source_data=loader\).*--source-data PATH"):
        require_source_data("eata", None)
    with pytest.raises(ValueError, match="'eata' needs source data"):
        list(source_batches(None, method="eata"))  # type: ignore[arg-type]


@pytest.mark.parametrize("source_data", [3, "images/", object()])
def test_other_types_are_refused(source_data: object) -> None:
    with pytest.raises(TypeError, match=f"source_data for method 'm' must be a tensor x.*{type(source_data).__name__}"):
        _pairs(source_data)  # type: ignore[arg-type]


@pytest.mark.parametrize("source_data", [[], iter([]), lambda: []])
def test_empty_input_is_refused(source_data: SourceData) -> None:
    with pytest.raises(ValueError, match="holds no batches"):
        _pairs(source_data)


def test_a_second_pass_over_a_one_shot_iterator_says_why_it_is_empty() -> None:
    batches = iter([_images(2)])
    assert len(_pairs(batches)) == 1
    with pytest.raises(ValueError, match="one-shot iterator, read once"):
        _pairs(batches)


@pytest.mark.parametrize("batch, found", [((_images(2), _labels(2), _labels(2)), "tuple of 3"),
                                          ([_images(2), [0, 1]], "list of 2"), ({"x": _images(2)}, "dict")])
def test_batches_of_other_shapes_are_refused(batch: object, found: str) -> None:
    with pytest.raises(TypeError, match=f"batch 1: a batch must be a tensor x or a pair.*{found}"):
        _pairs([_images(2), batch])  # type: ignore[list-item]


def test_integer_images_are_refused_with_the_conversion() -> None:
    with pytest.raises(TypeError, match=r"batch 0: expected a floating-point batch.*x.float\(\) / 255"):
        _pairs(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))


def test_rank_one_images_are_refused() -> None:
    with pytest.raises(ValueError, match=r"batch 0: images must have a batch dimension.*\(4,\)"):
        _pairs(torch.zeros(4))


def test_an_empty_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="batch 1: empty batch"):
        _pairs([_images(2), _images(0)])


def test_the_first_non_finite_batch_is_named() -> None:
    bad = _images(2)
    bad[1, 0, 0, 0] = float("nan")
    infinite = _images(2)
    infinite[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="batch 2: batch contains NaN or Inf"):
        _pairs([_images(2), _images(2), bad, infinite])


@pytest.mark.parametrize("y", [torch.zeros(2), torch.zeros(2, dtype=torch.bool)])
def test_labels_must_be_integers(y: Tensor) -> None:
    with pytest.raises(TypeError, match=rf"batch 0: labels must be integer class indices, got dtype {y.dtype}"):
        _pairs((_images(2), y))


@pytest.mark.parametrize("y", [torch.zeros(3, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long)])
def test_labels_must_match_the_images(y: Tensor) -> None:
    with pytest.raises(ValueError, match=r"batch 0: labels must have shape \(2,\) to match the 2 images"):
        _pairs((_images(2), y))


def test_labels_can_be_required() -> None:
    with pytest.raises(ValueError, match="batch 1: method 'm' needs labeled"):
        _pairs([(_images(2), _labels(2)), _images(2)], labels=True)


# --- a method that declares it needs source data ----------------------------------------------------------


def test_a_method_needing_source_data_says_so_when_built_without_it(counter_method: str) -> None:
    assert uses_source_data(counter_method) and not uses_source_data("tent")
    with pytest.raises(ValueError, match=rf"method '{counter_method}' needs source data.*source_data=loader"):
        tta.wrap(tiny_classifier(), counter_method)


def test_a_method_reads_source_data_given_to_wrap(counter_method: str) -> None:
    loader = DataLoader(TensorDataset(_images(7), _labels(7)), batch_size=3)
    adapter = tta.wrap(tiny_classifier(), counter_method, source_data=loader)
    assert int(adapter.get_buffer("images_seen")) == 7
    assert adapter(_images(4)).shape == (4, 10)
    with pytest.raises(ValueError, match="batch 0: method .* needs labeled"):
        tta.wrap(tiny_classifier(), counter_method, source_data=_images(3))
