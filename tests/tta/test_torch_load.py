"""Reading torch files safely: every unreadable file is one ValueError naming it, and DDA's denoiser loader uses it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tta
from tests.helpers import tiny_classifier
from tta.files import read_torch_file


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "state.pt"
    torch.save({"w": torch.arange(4000.0)}, path)
    return path


def test_read_torch_file_returns_the_saved_tensors(saved: Path) -> None:
    assert torch.equal(read_torch_file(saved)["w"], torch.arange(4000.0))  # type: ignore[index]


@pytest.mark.parametrize(("content", "message"), [
    (lambda path: path.write_bytes(path.read_bytes()[:2000]), "truncated or not a file written by torch.save"),
    (lambda path: path.write_text("hello\n"), "corrupt or not a file written by torch.save"),
    (lambda path: torch.save({"a": slice(2)}, path), "not a checkpoint readable without executing code"),
])
def test_read_torch_file_names_the_file_in_one_line(saved: Path, content, message: str) -> None:  # type: ignore[no-untyped-def]
    content(saved)
    with pytest.raises(ValueError, match="without executing code|torch.save") as info:
        read_torch_file(saved, what="weights file")
    assert message in str(info.value) and f"weights file {saved}" in str(info.value) and "\n" not in str(info.value)


def test_read_torch_file_says_a_folder_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is a folder"):
        read_torch_file(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_torch_file(tmp_path / "absent.pt")


def test_dda_with_a_truncated_denoiser_is_a_clear_error(saved: Path) -> None:
    saved.write_bytes(saved.read_bytes()[:2000])
    with pytest.raises(ValueError, match="ADM diffusion checkpoint .* is not readable: truncated"):
        tta.wrap(tiny_classifier(), "dda", denoiser=str(saved))
