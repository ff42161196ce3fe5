"""ONNX export: onnxruntime parity of frozen and adaptive graphs, EMA state convention, clear errors."""

from __future__ import annotations

import copy
import io
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import tta
from adapters_bn import AdaptiveBatchNorm, adapt_batchnorm, set_statistics
from tests.helpers import randomize_bn_statistics, seeded, small_vit, tiny_classifier
from tta.onnx.layers import BatchStatisticsNorm, NormConfig
from tta.onnx.trace import Exporter
from tta.onnx.export import OnnxMismatchError, export_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.onnx

ATOL = 1e-4


def _fmnist() -> nn.Module:
    from eval.models.source import load_source_model

    return load_source_model()


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return randomize_bn_statistics(seeded(lambda: getattr(torchvision.models, name)(num_classes=10))).eval()

    return build


# name -> (builder, input shape without the batch axis). 64x64 keeps every feature map above 1x1, so the
# PyTorch reference (which refuses one value per channel) can run at batch 1.
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "fmnist_resnet": (_fmnist, (1, 28, 28)),
    "resnet18": (_torchvision("resnet18"), (3, 64, 64)),
    "mobilenet_v3_small": (_torchvision("mobilenet_v3_small"), (3, 64, 64)),
    "vit": (small_vit, (3, 16, 16)),
}


# (model, exporter): every model with the default exporter; the torch.export-based exporter takes 5-20 s
# on the torchvision CNNs with 2 cores, so the default suite covers them through the TorchScript one.
CASES = [
    ("fmnist_resnet", "dynamo"),
    ("vit", "dynamo"),
    ("resnet18", "torchscript"),
    ("mobilenet_v3_small", "torchscript"),
    pytest.param("resnet18", "dynamo", marks=pytest.mark.slow),
    pytest.param("mobilenet_v3_small", "dynamo", marks=pytest.mark.slow),
]


def _session(data: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, x: Tensor) -> Tensor:
    return torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])


def _batches(shape: tuple[int, ...]) -> list[Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.rand(1, *shape, generator=g), 1.5 * torch.rand(6, *shape, generator=g) + 0.2]


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_frozen_export_matches_adapted_state_at_any_batch(name: str, exporter: Exporter) -> None:
    build, shape = MODELS[name]
    adapter = tta.wrap(build(), "tent", lr=1e-2)
    adapter(torch.rand(4, *shape) * 2)  # adapt once: new affine parameters and statistics to bake in
    buffer = io.BytesIO()
    result = export_onnx(adapter, buffer, torch.rand(3, *shape), mode="frozen", exporter=exporter)
    assert result.max_abs_diff is not None and result.max_abs_diff <= ATOL
    reference = copy.deepcopy(adapter.model)
    set_statistics(reference, "ema", momentum=0.0)  # normalize with the stored (adapted) statistics
    session = _session(buffer.getvalue())
    with torch.no_grad():
        for x in _batches(shape):
            assert (_run(session, x) - reference(x)).abs().max() <= ATOL


@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_adaptive_export_matches_norm_method_at_any_batch(
    name: str, exporter: Exporter, caplog: pytest.LogCaptureFixture
) -> None:
    build, shape = MODELS[name]
    model = build()
    buffer = io.BytesIO()
    with caplog.at_level(logging.WARNING, logger="tta.onnx.export"):
        result = export_onnx(model, buffer, torch.rand(4, *shape), mode="adaptive", prior=0.0, exporter=exporter)
    # A LayerNorm model (ViT) has no statistics to adapt: the adaptive graph is the plain model, and we say so.
    reference = tta.wrap(model, "norm") if _has_batchnorm(model) else model
    assert ("no statistics to adapt" in caplog.text) == (not _has_batchnorm(model))
    assert result.batchnorm_layers == sum(isinstance(m, AdaptiveBatchNorm) for m in reference.modules())
    session = _session(buffer.getvalue())
    with torch.no_grad():
        for x in _batches(shape):
            assert (_run(session, x) - reference(x)).abs().max() <= ATOL


def test_adaptive_prior_mixes_like_alpha_bn() -> None:
    model = tiny_classifier()
    buffer = io.BytesIO()
    export_onnx(model, buffer, torch.rand(4, 3, 16, 16), mode="adaptive", prior=0.3, exporter="torchscript")
    reference = tta.wrap(model, "norm", stats="mix", prior=0.3)
    x = torch.rand(5, 3, 16, 16) + 1.0
    assert (_run(_session(buffer.getvalue()), x) - reference(x)).abs().max() <= ATOL


def test_adaptive_export_uses_batch_statistics_of_a_train_mode_model() -> None:
    # The exporters' trap: a train-mode BatchNorm with running statistics becomes an inference one.
    model = tiny_classifier().train()
    buffer = io.BytesIO()
    export_onnx(model, buffer, torch.rand(4, 3, 16, 16), mode="adaptive", exporter="torchscript")
    x = torch.rand(6, 3, 16, 16) + 2.0
    out = _run(_session(buffer.getvalue()), x)
    with torch.no_grad():
        assert (out - tta.wrap(model, "norm")(x)).abs().max() <= ATOL
        assert (out - model.eval()(x)).abs().max() > 1e-2


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_torchscript_exporter_cannot_export_torchvision_vit() -> None:
    # Why the torch.export-based exporter is the default: the deprecated one fails on fused attention.
    with pytest.raises(torch.onnx.errors.UnsupportedOperatorError):
        export_onnx(small_vit(), io.BytesIO(), torch.rand(2, 3, 16, 16), exporter="torchscript")


def test_ema_graph_carries_state_like_the_norm_method(tmp_path: Path) -> None:
    from tta.onnx.edge import EdgeSession

    model = tiny_classifier()
    result = export_onnx(model, tmp_path / "ema.onnx", torch.rand(4, 3, 16, 16), mode="adaptive",
                         ema_momentum=0.2)
    assert result.input_names == ("input", "ema_in.1.mean", "ema_in.1.var", "ema_in.4.mean", "ema_in.4.var")
    assert result.output_names == ("logits", *(n.replace("ema_in.", "ema_out.") for n in result.state_names))
    session, reference = EdgeSession(tmp_path / "ema.onnx"), tta.wrap(model, "norm", stats="ema", momentum=0.2)
    g = torch.Generator().manual_seed(1)
    batches = [torch.rand(b, 3, 16, 16, generator=g) * 2 for b in (3, 1, 8)]
    outputs = [torch.from_numpy(session(x.numpy())) for x in batches]
    for out, x in zip(outputs, batches):
        assert (out - reference(x)).abs().max() <= ATOL
    state = session.state
    assert state is not None and torch.allclose(torch.from_numpy(state["ema_in.4.var"]),
                                                reference.model[4].running_var, atol=ATOL)
    session.reset()
    assert session.state is None and torch.equal(torch.from_numpy(session(batches[0].numpy())), outputs[0])
    assert session.metadata["tta.state_inputs"] == ",".join(result.state_names)


def test_ema_graph_keeps_its_state_through_a_nan_batch_like_adapters_bn(tmp_path: Path) -> None:
    from tta.onnx.edge import EdgeSession

    model = tiny_classifier()
    export_onnx(model, tmp_path / "ema.onnx", torch.rand(4, 3, 16, 16), mode="adaptive", ema_momentum=0.2)
    session, reference = EdgeSession(tmp_path / "ema.onnx"), adapt_batchnorm(copy.deepcopy(model), stats="ema",
                                                                            momentum=0.2)
    g = torch.Generator().manual_seed(2)
    clean = [torch.rand(4, 3, 16, 16, generator=g) for _ in range(2)]
    poisoned = clean[0].clone()
    poisoned[1, 0, 3, 3] = float("nan")
    for x in (clean[0], poisoned, clean[1]):
        out = torch.from_numpy(session(x.numpy()))
        with torch.no_grad():
            expected = reference(x)
    assert torch.isfinite(out).all() and (out - expected).abs().max() <= ATOL  # the NaN batch left no trace
    assert all(np.isfinite(value).all() for value in (session.state or {}).values())


def test_batch_statistics_norm_handles_batchnorm1d() -> None:
    bn = randomize_bn_statistics(nn.BatchNorm1d(5)).eval()
    x = torch.randn(7, 5) * 3 + 1
    reference = AdaptiveBatchNorm(bn, stats="mix", prior=0.25)
    assert torch.allclose(BatchStatisticsNorm(bn, NormConfig(prior=0.25))(x), reference(x), atol=1e-6)


def test_gradient_method_in_adaptive_mode_suggests_frozen() -> None:
    adapter = tta.wrap(tiny_classifier(), "tent")
    with pytest.raises(ValueError, match="mode='frozen'"):
        export_onnx(adapter, io.BytesIO(), torch.rand(2, 3, 16, 16), mode="adaptive")


def test_frozen_cotta_exports_the_teacher_it_predicts_with() -> None:
    adapter = tta.wrap(tiny_classifier(), "cotta")
    with torch.no_grad():
        adapter.teacher[-1].bias.add_(1.0)  # a teacher that differs from the student
    buffer = io.BytesIO()
    export_onnx(adapter, buffer, torch.rand(4, 3, 16, 16), mode="frozen", exporter="torchscript")
    teacher = set_statistics(copy.deepcopy(adapter.teacher), "ema", momentum=0.0)
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        assert (_run(_session(buffer.getvalue()), x) - teacher(x)).abs().max() <= ATOL


class _OutputCorrection(tta.TTAMethod):
    """A forward-only method that changes outputs: export cannot know how, so it must refuse."""

    def adapt_step(self, x: Tensor) -> Tensor:
        return self.model(x).softmax(-1).log()


def test_unknown_forward_only_adapter_is_refused() -> None:
    with pytest.raises(ValueError, match="Export adapter.model instead"):
        export_onnx(_OutputCorrection(tiny_classifier()), io.BytesIO(), torch.rand(2, 3, 16, 16))


@pytest.mark.parametrize("where", ["missing_folder", "folder"])
def test_unwritable_path_is_refused_before_exporting(tmp_path: Path, where: str) -> None:
    path = tmp_path / "nope" / "m.onnx" if where == "missing_folder" else tmp_path
    with pytest.raises(ValueError, match="cannot write the ONNX file"):
        export_onnx(tiny_classifier(), path, torch.rand(2, 3, 16, 16))


@pytest.mark.parametrize("package", ["onnx", "onnxruntime"])
def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` raise ImportError
    with pytest.raises(ImportError, match=r"pip install '\.\[onnx\]'"):
        export_onnx(tiny_classifier(), io.BytesIO(), torch.rand(2, 3, 16, 16))


def test_bad_options_are_refused() -> None:
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="adaptive' only"):
        export_onnx(tiny_classifier(), io.BytesIO(), x, mode="frozen", prior=0.5)
    with pytest.raises(ValueError, match="not both"):
        export_onnx(tiny_classifier(), io.BytesIO(), x, mode="adaptive", prior=0.5, ema_momentum=0.1)
    with pytest.raises(ValueError, match="mode must be"):
        export_onnx(tiny_classifier(), io.BytesIO(), x, mode="dynamic")  # type: ignore[arg-type]


class _TracedDifferently(nn.Module):
    """Computes something else while exported than in eager mode: the check must catch it."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) + (1.0 if torch.compiler.is_exporting() else 0.0)


def test_mismatch_raises_with_the_maximum_difference(tmp_path: Path) -> None:
    with pytest.raises(OnnxMismatchError, match=r"differs from PyTorch by up to 1\b"):
        export_onnx(_TracedDifferently(), tmp_path / "m.onnx", torch.rand(2, 3, 4, 4))
