"""LAME as graph code: kNN affinity against the reference top-k kernel, Laplacian steps, onnxruntime parity."""

from __future__ import annotations

import io
from typing import Literal

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import tiny_classifier
from tta.onnx.lame import LameGraph, knn_affinity, laplacian_steps, log_plus_epsilon
from tta.onnx.export import export_onnx


def _reference_knn_affinity(features: torch.Tensor, knn: int) -> torch.Tensor:
    """fiveai/LAME's ``kNN_affinity``: top-k smallest distances, self excluded."""
    n = features.size(0)
    dist = torch.norm(features.unsqueeze(0) - features.unsqueeze(1), dim=-1, p=2)
    index = dist.topk(min(knn + 1, n), -1, largest=False).indices[:, 1:]
    return torch.zeros(n, n).scatter_(dim=-1, index=index, value=1.0)


@pytest.mark.parametrize("n", [1, 4, 12])
def test_knn_affinity_matches_reference_topk(n: int) -> None:
    features = F.normalize(torch.randn(n, 6), dim=-1)
    assert torch.equal(knn_affinity(features, 3), _reference_knn_affinity(features, 3))


def test_laplacian_steps_with_zero_kernel_returns_probabilities() -> None:
    log_probs = torch.randn(5, 4).log_softmax(-1)
    y = laplacian_steps(log_probs, torch.zeros(5, 5), steps=7)
    assert torch.allclose(y, log_probs.exp(), atol=1e-6)


def test_laplacian_steps_rows_sum_to_one_and_duplicates_agree() -> None:
    log_probs = torch.randn(6, 3).log_softmax(-1)
    log_probs[5] = log_probs[4]
    features = F.normalize(torch.randn(6, 5), dim=-1)
    features[5] = features[4]
    y = laplacian_steps(log_probs, knn_affinity(features, 2), steps=10)
    assert torch.allclose(y.sum(-1), torch.ones(6), atol=1e-6)
    assert torch.allclose(y[4], y[5], atol=1e-6)


def test_laplacian_steps_pull_neighbours_together() -> None:
    # Two confident samples of class 0 and an uncertain neighbour: LAME moves it toward class 0.
    log_probs = torch.tensor([[4.0, 0.0], [4.0, 0.0], [0.0, 0.2]]).log_softmax(-1)
    kernel = torch.ones(3, 3) - torch.eye(3)
    y = laplacian_steps(log_probs, kernel, steps=5)
    assert y[2, 0] > 0.5 > log_probs[2, 0].exp()


@pytest.mark.onnx
@pytest.mark.parametrize(("mode", "exporter"), [("frozen", "torchscript"), ("adaptive", "torchscript"),
                                                ("frozen", "dynamo")])
def test_lame_graph_matches_eager_lame_at_any_batch(mode: Literal["frozen", "adaptive"],
                                                    exporter: Literal["torchscript", "dynamo"]) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model, config = tiny_classifier(), LameGraph(head="8", knn=3, steps=5)
    with torch.no_grad():
        model[8].weight.mul_(40.0)  # confident logits: assignments near 1e-7, where log(Y) loses precision
    buffer = io.BytesIO()
    export_onnx(model, buffer, torch.rand(8, 3, 16, 16), mode=mode, lame=config, exporter=exporter)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    if mode == "adaptive":
        import tta

        model = tta.wrap(model, "norm").model
    for n in (1, 12):
        x = torch.rand(n, 3, 16, 16)
        with torch.no_grad():
            features, logits = model[:-1](x), model(x)
        kernel = knn_affinity(F.normalize(features, dim=-1), config.knn)
        log_probs = torch.log(logits.double().softmax(-1) + 1e-10).float()  # LAME's unary term, in float64
        assert torch.allclose(log_plus_epsilon(logits.log_softmax(-1), 1e-10), log_probs, atol=1e-5)
        y = laplacian_steps(log_probs, kernel, steps=5)
        expected = laplacian_steps(log_probs, kernel, steps=5, log=True)
        assert torch.allclose(expected.exp(), y, atol=1e-6)  # the same assignments, as log-probabilities
        actual = torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])
        assert (actual - expected).abs().max() <= 1e-4


@pytest.mark.onnx
def test_lame_head_must_exist() -> None:
    pytest.importorskip("onnx")
    with pytest.raises(ValueError, match="LAME head 'fc'"):
        export_onnx(tiny_classifier(), io.BytesIO(), torch.rand(2, 3, 16, 16), lame=LameGraph(head="fc"))
