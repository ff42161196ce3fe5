"""Files the library reads back (training states, checkpoints) are read without running code, refused in one line.

Each file below holds a pickled call of :func:`_ran`; reading it must neither call it nor repeat torch's
advice to load the file with ``weights_only=False``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eval.datasets.fashion_mnist import write_idx
from eval.training.da_experiment import run_arm
from eval.training.diffusion import resume_path, train_diffusion
from tests.tta.test_dann import _batches, _dann
from tta.da import FitConfig, fit_dann


def _ran(marker: str) -> None:
    """What the hostile file would run: leave a marker file."""
    Path(marker).touch()


class _Payload:
    """Unpickles by calling :func:`_ran` (a file that runs code when loaded without ``weights_only``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return _ran, (str(self.marker),)


def _hostile(path: Path) -> Path:
    """Write at ``path`` a torch file whose unpickling would run code; return the marker it would create."""
    marker = path.parent / f"{path.name}.ran"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Payload(marker)}, path)
    return marker


def _check_refusal(error: BaseException, path: Path, marker: Path) -> None:
    message = str(error)
    assert str(path) in message and "\n" not in message
    assert "holds code or objects other than tensors" in message and "_ran" in message
    assert "weights_only" not in message and "trust" not in message.lower()
    assert not marker.exists()


def test_dann_fit_refuses_a_checkpoint_that_runs_code(tmp_path: Path) -> None:
    path = tmp_path / "fit.pt"
    marker = _hostile(path)
    with pytest.raises(ValueError, match="remove it to start afresh") as info:
        fit_dann(_dann(), _batches(3, 0), _batches(2, 1, labeled=False), FitConfig(epochs=1, steps_per_epoch=1),
                 checkpoint=path)
    _check_refusal(info.value, path, marker)


def test_diffusion_training_refuses_a_resume_state_that_runs_code(tmp_path: Path) -> None:
    data = tmp_path / "fmnist"
    data.mkdir()
    write_idx(data / "train-images-idx3-ubyte.gz", torch.zeros(8, 28, 28, dtype=torch.uint8))
    write_idx(data / "train-labels-idx1-ubyte.gz", torch.zeros(8, dtype=torch.uint8))
    out = tmp_path / "ddpm.pt"
    marker = _hostile(resume_path(out))
    with pytest.raises(ValueError) as info:
        train_diffusion(out, data_root=data, steps=2, batch_size=2, resume=True)
    _check_refusal(info.value, resume_path(out), marker)
    assert not out.exists()


def test_da_experiment_refuses_a_source_checkpoint_that_runs_code(tmp_path: Path) -> None:
    source = tmp_path / "source.pt"
    marker = _hostile(source)
    with pytest.raises(ValueError) as info:
        run_arm("source_only", source_checkpoint=source, target_images=torch.zeros(2, 1, 28, 28),
                out=tmp_path / "adapted.pt", config=FitConfig(epochs=1, steps_per_epoch=1))
    _check_refusal(info.value, source, marker)
    assert not (tmp_path / "adapted.pt").exists()
