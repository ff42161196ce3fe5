"""LAME: affinities, the Laplacian optimization's fixed point, and an untouched model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tta
from tests.helpers import clone_state, small_resnet, small_vit, state_equal, tiny_classifier
from tta.methods.lame import (
    LAME,
    affinity_matrix,
    knn_affinity,
    laplacian_optimization,
    linear_affinity,
    rbf_affinity,
)


def _probs(n: int = 6, k: int = 4, seed: int = 0) -> torch.Tensor:
    return (torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 2).softmax(1)


def _features(n: int = 6, d: int = 5, seed: int = 1) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_laplacian_optimization_with_zero_affinity_returns_the_input_probabilities() -> None:
    p = _probs()
    y = laplacian_optimization(-torch.log(p + 1e-10), torch.zeros(6, 6))
    torch.testing.assert_close(y, p, rtol=0, atol=1e-7)


@pytest.mark.parametrize("kind", ["knn", "rbf", "linear"])
def test_laplacian_optimization_rows_sum_to_one_at_a_fixed_point(kind: str) -> None:
    unary, kernel = -torch.log(_probs() + 1e-10), affinity_matrix(_features(), kind, knn=2)
    y = laplacian_optimization(unary, kernel, max_steps=1000, tol=1e-12)
    torch.testing.assert_close(y.sum(1), torch.ones(6))
    torch.testing.assert_close(y, (-unary + kernel @ y).softmax(1), rtol=0, atol=1e-5)  # paper, eq. 8


def test_laplacian_optimization_pulls_a_sample_towards_its_neighbours() -> None:
    p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    kernel = torch.ones(4, 4) - torch.eye(4)
    y = laplacian_optimization(-p.log(), kernel)
    assert y[3].argmax() == 0 and p[3].argmax() == 1


def test_laplacian_optimization_max_steps_one_is_a_single_update() -> None:
    unary, kernel = -torch.log(_probs()), knn_affinity(_features(), 2)
    y0 = (-unary).softmax(1)
    torch.testing.assert_close(laplacian_optimization(unary, kernel, max_steps=1), (-unary + kernel @ y0).softmax(1))


def test_knn_affinity_picks_k_nearest_others() -> None:
    w = knn_affinity(_features(), knn=2)
    assert torch.equal(w.sum(1), torch.full((6,), 2.0)) and torch.equal(w.diagonal(), torch.zeros(6))
    dist = torch.cdist(_features(), _features()) + torch.eye(6) * 10
    assert torch.equal(w.bool(), torch.zeros(6, 6).scatter_(1, dist.topk(2, largest=False).indices, 1.0).bool())


def test_affinity_symmetrize_averages_with_the_transpose() -> None:
    w = knn_affinity(_features(), knn=2)
    torch.testing.assert_close(affinity_matrix(_features(), "knn", knn=2, symmetrize=True), (w + w.t()) / 2)


def test_rbf_bandwidth_is_the_mean_distance_to_the_kth_nearest() -> None:
    x = _features()
    dist = torch.cdist(x, x)
    sigma = dist.sort(1).values[:, 2].mean()  # k=3, counting the sample itself
    torch.testing.assert_close(rbf_affinity(x, knn=3), torch.exp(-dist**2 / (2 * sigma**2)), rtol=1e-5, atol=1e-6)


def test_linear_affinity_is_the_gram_matrix() -> None:
    x = _features()
    torch.testing.assert_close(linear_affinity(x), x @ x.t())


def test_affinity_unknown_kind_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="knn"):
        affinity_matrix(_features(), "cosine")  # type: ignore[arg-type]


def _lame(model: torch.nn.Module | None = None, **kwargs: object) -> LAME:
    if model is None:
        model, kwargs = tiny_classifier(), {"head": "8", **kwargs}
    return tta.wrap(model, "lame", **kwargs)  # type: ignore[return-value]


def test_lame_identical_samples_get_identical_outputs() -> None:
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    x[4] = x[1]
    out = _lame()(x)
    assert torch.equal(out[4], out[1])


def test_lame_returns_log_probabilities() -> None:
    out = _lame()(torch.rand(8, 3, 16, 16))
    torch.testing.assert_close(out.exp().sum(1), torch.ones(8))


def test_lame_leaves_the_model_untouched() -> None:
    adapter = _lame()
    state = clone_state(adapter.model)
    for seed in range(2):
        adapter(torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(seed)))
    assert state_equal(clone_state(adapter.model), state)
    assert all(p.grad is None for p in adapter.model.parameters())


def test_lame_unknown_head_names_the_option() -> None:
    from tests.tta.test_heads import _Unconventional

    with pytest.raises(ValueError, match="head="):
        tta.wrap(_Unconventional(), "lame", input_ndim=None)


@pytest.mark.parametrize("build", [lambda: small_resnet("bn"), small_vit, lambda: small_resnet("gn")],
                         ids=["resnet_bn", "vit_ln", "resnet_gn"])
def test_lame_runs_on_any_architecture(build: object) -> None:
    model = build()
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    adapter = _lame(model, affinity="rbf")
    out = adapter(x)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(8))
    with torch.no_grad():
        source = model(x)
    assert not torch.allclose(out, source.log_softmax(1))  # the outputs were corrected
