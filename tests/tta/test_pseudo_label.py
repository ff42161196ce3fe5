"""Pseudo-label: each mechanism (confidence mask, loss, parameters adapted), and error below source on a shifted set.

The contract every method keeps (reset, episodic, bad input, states, threads, ...) runs on it from
``tests/tta/test_contract.py`` and the other registry-parametrized tests, from its declarations.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import tta
from eval.datasets.fashion_mnist import load_fashion_mnist
from eval.datasets.on_the_fly import CorruptedView
from eval.models.source import load_source_model
from tests.helpers import tiny_classifier
from tta.methods.pseudo_label import pseudo_label_loss


def test_loss_is_the_cross_entropy_of_the_confident_predictions_only() -> None:
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.1, 0.0, 0.2], [0.0, 5.0, 0.0]])  # rows 0 and 2 are confident
    expected = F.cross_entropy(logits[[0, 2]], torch.tensor([0, 1]))
    assert torch.allclose(pseudo_label_loss(logits, 0.9), expected)
    assert torch.allclose(pseudo_label_loss(logits, 0.0), F.cross_entropy(logits, logits.argmax(1)))


def test_no_confident_prediction_gives_zero_loss_and_no_update() -> None:
    logits = torch.zeros(4, 10, requires_grad=True)  # confidence 0.1 everywhere
    loss = pseudo_label_loss(logits, 0.5)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None and not logits.grad.any()


def test_only_the_normalization_affines_change() -> None:
    adapter = tta.wrap(tiny_classifier(), "pseudo_label", threshold=0.0, lr=0.1)
    before = {k: v.clone() for k, v in adapter.model.named_parameters()}
    adapter(torch.rand(16, 3, 16, 16))
    changed = {k for k, v in adapter.model.named_parameters() if not torch.equal(v, before[k])}
    affine = {k for k, _ in tta.norm_affine_parameters(adapter.model)}
    assert changed and changed <= affine


def test_threshold_out_of_range_is_refused_before_the_model_is_touched() -> None:
    model = tiny_classifier()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="threshold must be in"):
        tta.wrap(model, "pseudo_label", threshold=1.5, inplace=True)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_error_falls_below_source_on_gaussian_noise() -> None:
    try:
        images, labels = load_fashion_mnist("test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    stream = list(CorruptedView(images[:1024], labels[:1024], "gaussian_noise", 5, batch_size=128))
    model = load_source_model()

    def error(adapter: torch.nn.Module) -> float:
        return sum(int((adapter(x).argmax(1) != y).sum()) for x, y in stream) / 1024

    assert error(tta.wrap(model, "pseudo_label")) < error(tta.wrap(model, "source")) - 0.1
