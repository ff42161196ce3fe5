"""Batch-size-1 streams: EMA statistics make norm, Tent and CoTTA work one image at a time; LAME says it cannot."""

from __future__ import annotations

import warnings

import pytest
import torch

import tta
from eval.datasets import CorruptedView, load_fashion_mnist
from eval.models.source import load_source_model
from tests.helpers import tiny_classifier


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    # One image per call is too little work to share: with two threads every op ends in a thread
    # barrier, which on a busy machine made these streams 10-100x slower. One thread is also faster idle.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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


def test_cotta_batch_size_one_with_ema_statistics_beats_source(noisy_stream) -> None:  # type: ignore[no-untyped-def]
    # Batch-1 recipe: EMA statistics, and the learning rate scaled by batch size (1e-3 x 1/200, the
    # official CIFAR batch). `OMP_NUM_THREADS=1 python benchmarks/batch_one.py` on these images: source
    # 39.5 %, this 29.0 %; EMA statistics at lr 1e-3: 55.0 %; the defaults (batch statistics): 87.5 %.
    model = load_source_model()
    adapter = tta.wrap(model, "cotta", stats="ema", bn_momentum=0.05, lr=5e-6)
    outputs = [adapter(x) for x, _ in noisy_stream]
    assert all(torch.isfinite(o).all() for o in outputs)
    error = sum(float(o.argmax(1).item() != y.item()) for o, (_, y) in zip(outputs, noisy_stream)) / len(noisy_stream)
    assert error < _error(tta.wrap(model, "source"), noisy_stream) - 0.05


def test_cotta_teacher_and_anchor_normalize_with_the_students_ema_statistics() -> None:
    adapter = tta.wrap(tiny_classifier(), "cotta", stats="ema", num_augmentations=2)
    adapter(torch.rand(1, 3, 16, 16))
    student = dict(adapter.model.named_buffers())
    for copy in (adapter.teacher, adapter.anchor):
        for name, value in copy.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                assert torch.equal(value, student[name])
    assert not torch.equal(student["1.running_mean"], student["1.source_mean"])


def test_lame_batch_size_one_returns_the_source_prediction_and_warns(noisy_stream) -> None:  # type: ignore[no-untyped-def]
    model = load_source_model()
    lame, source = tta.wrap(model, "lame"), tta.wrap(model, "source")
    x = noisy_stream[0][0]
    with pytest.warns(RuntimeWarning, match="batch of 1 image"):
        out = lame(x)
    torch.testing.assert_close(out, source(x).log_softmax(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per adapter, not per batch
        assert _error(lame, noisy_stream) == _error(source, noisy_stream)


def test_lame_rbf_affinity_on_identical_samples_is_finite() -> None:
    adapter = tta.wrap(tiny_classifier(), "lame", affinity="rbf")
    out = adapter(torch.rand(1, 3, 16, 16).expand(4, 3, 16, 16).contiguous())
    assert torch.isfinite(out).all() and torch.allclose(out, out[:1].expand_as(out))


def test_batch_statistics_of_one_image_warn_once() -> None:
    adapter = tta.wrap(tiny_classifier(), "norm")
    with pytest.warns(RuntimeWarning, match="stats='ema'"):
        adapter(torch.rand(1, 3, 16, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adapter(torch.rand(1, 3, 16, 16))
        tta.wrap(tiny_classifier(), "norm", stats="ema")(torch.rand(1, 3, 16, 16))
