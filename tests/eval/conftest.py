"""Fixtures shared by the eval tests: a synthetic Fashion-MNIST folder, an untrained source checkpoint, executor grids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eval.datasets.fashion_mnist import write_idx
from eval.bench.executors import LocalExecutor
from eval.models.source import fmnist_resnet, save_checkpoint
from eval.results.store import ResultsStore
from eval.bench.hooks import HOOKS_ENV
from tests.eval.faults import FAULT_DIR_ENV, INSTALLER
from tests.eval.grid import Rows, run_grid, stored_rows


@pytest.fixture
def fmnist_dir(tmp_path: Path) -> Path:
    """Write a synthetic Fashion-MNIST folder in IDX format: 64 training and 48 test images."""
    root = tmp_path / "fmnist"
    root.mkdir()
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("t10k", 48), ("train", 64)):
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8))
    return root


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """Write an untrained width-4 source checkpoint (a fixed seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = fmnist_resnet(width=4)
    record = {"state_dict": model.state_dict(), "arch": "fmnist_resnet", "arch_kwargs": {"width": 4},
              "clean_test_accuracy": 0.0, "train_config": {}, "torch_version": torch.__version__}
    return save_checkpoint(tmp_path / "model.pt", record)


@pytest.fixture
def faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fault folder of tests/eval/faults.py, its hooks installed: processes started later inherit both."""
    folder = tmp_path / "faults"
    monkeypatch.setenv(FAULT_DIR_ENV, str(folder))
    monkeypatch.setenv(HOOKS_ENV, INSTALLER)
    return folder


@pytest.fixture
def local_rows(fmnist_dir: Path, checkpoint: Path, tmp_path: Path) -> Rows:
    """The executor grid (tests/eval/grid.py) run by the local executor with one thread, as each worker runs it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ResultsStore(tmp_path / "local.sqlite") as store:
            run_grid(fmnist_dir, checkpoint, store, LocalExecutor())
    finally:
        torch.set_num_threads(threads)
    return stored_rows(tmp_path / "local.sqlite")
