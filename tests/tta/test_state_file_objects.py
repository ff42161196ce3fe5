"""save_state / load_state with binary file objects, as torch.save / torch.load take them; the checks still apply."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

import tta
from tests.helpers import clone_state, state_equal, tiny_classifier


def _adapted() -> tta.TTAMethod:
    adapter = tta.wrap(tiny_classifier(), "tent")
    adapter(torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    return adapter


def test_state_round_trips_through_an_in_memory_buffer() -> None:
    adapter = _adapted()
    buffer = io.BytesIO()
    adapter.save_state(buffer)
    buffer.seek(0)
    fresh = tta.wrap(tiny_classifier(), "tent")
    fresh.load_state(buffer)
    assert state_equal(clone_state(fresh), clone_state(adapter))


def test_state_round_trips_through_open_files(tmp_path: Path) -> None:
    adapter = _adapted()
    with open(tmp_path / "state.pt", "wb") as handle:
        adapter.save_state(handle)
    fresh = tta.wrap(tiny_classifier(), "tent")
    with open(tmp_path / "state.pt", "rb") as handle:
        fresh.load_state(handle)
    assert state_equal(clone_state(fresh), clone_state(adapter))


def test_a_damaged_buffer_is_refused_and_nothing_changes() -> None:
    buffer = io.BytesIO()
    _adapted().save_state(buffer)
    data = bytearray(buffer.getvalue())
    data[len(data) // 2] ^= 0xFF
    fresh = tta.wrap(tiny_classifier(), "tent")
    before = clone_state(fresh)
    with pytest.raises(ValueError, match="file object"):
        fresh.load_state(io.BytesIO(bytes(data)))
    assert state_equal(clone_state(fresh), before)


def test_a_state_of_another_method_is_refused_from_a_buffer() -> None:
    buffer = io.BytesIO()
    tta.wrap(tiny_classifier(), "norm").save_state(buffer)
    buffer.seek(0)
    with pytest.raises(ValueError, match="Norm|norm"):
        tta.wrap(tiny_classifier(), "tent").load_state(buffer)
