"""Shared fixtures: seeding, thread count, tiny models and synthetic shifted batches."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from tests.helpers import analytic_bn_model, shifted_batch, tiny_classifier


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--runslow") or os.environ.get("TTA_RUN_SLOW") == "1"
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow or TTA_RUN_SLOW=1")
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@pytest.fixture
def tiny() -> torch.nn.Module:
    return tiny_classifier()


@pytest.fixture
def analytic() -> torch.nn.Module:
    return analytic_bn_model()


@pytest.fixture
def shifted() -> tuple[torch.Tensor, torch.Tensor]:
    return shifted_batch()
