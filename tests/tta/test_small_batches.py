"""Batch-size-1 streams: EMA statistics make norm and Tent work one image at a time."""

from __future__ import annotations

import pytest
import torch

import tta
from eval.datasets import CorruptedView, load_fashion_mnist
from eval.models import load_source_model


@pytest.fixture(scope="module")
def noisy_stream() -> list[tuple[torch.Tensor, torch.Tensor]]:
    try:
        images, labels = load_fashion_mnist("test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return list(CorruptedView(images[:200], labels[:200], "gaussian_noise", 5, batch_size=1))


def _error(adapter: torch.nn.Module, stream: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    return sum(float(adapter(x).argmax(1).item() != y.item()) for x, y in stream) / len(stream)


@pytest.mark.parametrize(("method", "options"), [("norm", {"stats": "ema", "momentum": 0.05}),
                                                 ("tent", {"stats": "ema", "bn_momentum": 0.05})])
def test_batch_size_one_stream_beats_source(method: str, options: dict, noisy_stream) -> None:  # type: ignore[no-untyped-def]
    model = load_source_model()
    source_error = _error(tta.wrap(model, "source"), noisy_stream)
    assert _error(tta.wrap(model, method, **options), noisy_stream) < source_error - 0.05
