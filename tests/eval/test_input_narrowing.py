"""Inputs of an unexpected kind are rejected with errors that name what was received."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eval.models.architectures import ModelSpec, build_model
from eval.datasets.npy import open_npy_array


def test_npz_archive_is_rejected_naming_what_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "images.npy"
    with open(path, "wb") as handle:  # an .npz archive under an .npy name
        np.savez(handle, images=np.zeros((2, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"images\.npy holds a NpzFile, expected a single \.npy array"):
        open_npy_array(path)


def test_npy_array_still_opens_memory_mapped(tmp_path: Path) -> None:
    path = tmp_path / "labels.npy"
    np.save(path, np.arange(5, dtype=np.int64))
    array = open_npy_array(path)
    assert isinstance(array, np.memmap)
    assert array.tolist() == [0, 1, 2, 3, 4]


def test_builder_returning_a_non_module_is_rejected(tmp_path: Path) -> None:
    spec = ModelSpec(arch="builtins:dict", weights=tmp_path / "unused.pt", num_classes=3)
    with pytest.raises(TypeError, match=r"'builtins:dict' built a dict, expected a torch.nn.Module"):
        build_model(spec)
