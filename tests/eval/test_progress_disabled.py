"""A disabled progress bar (``TQDM_DISABLE=1``, tqdm's own switch for logs and CI) turns the bar off, not the benchmark."""

from __future__ import annotations

import torch
from tqdm import tqdm

from eval.commands.progress import BenchProgress
from eval.domains import Domain
from eval.protocols.streams import StreamItem


def test_a_disabled_bar_counts_batches_without_drawing() -> None:
    progress = BenchProgress(tqdm(total=0, disable=True))  # what tqdm builds when TQDM_DISABLE=1 is set
    progress.start(total=2, stored=0)
    item = StreamItem(Domain("gaussian_noise", 5), torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3]), reset=False)
    progress.batch(item, torch.eye(4, 10))
    progress.batch(item, torch.eye(4, 10))
    assert progress._batches == 2 and progress._images == 8
