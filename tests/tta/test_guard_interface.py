"""A guarded adapter (``production=True``) keeps the adapter's interface, and exports as its method."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tta
from tta.base import TTAMethod
from tta.guard import CollapseGuard
from tests.helpers import clone_state, state_equal, tiny_classifier


def _guarded(method: str = "tent") -> CollapseGuard:
    guarded = tta.wrap(tiny_classifier(), method, production=True)
    assert isinstance(guarded, CollapseGuard)
    return guarded


def test_guard_exposes_the_model_and_the_method_api() -> None:
    guarded = _guarded()
    adapter = guarded.adapter
    assert guarded.model is adapter.model
    assert guarded.optimizers is adapter.optimizers and len(guarded.optimizers) == 1
    assert (guarded.changes, guarded.exports, guarded.needs, guarded.uses_grad) == (
        adapter.changes, adapter.exports, adapter.needs, adapter.uses_grad)
    assert guarded.quick_options == adapter.quick_options
    assert guarded.hparams == adapter.hparams and guarded.hparams["lr"] == tta.method_options("tent")["lr"].default
    assert guarded.optimizer is adapter.optimizer  # a method's own attribute, read through the guard
    assert guarded.steps == 1 and guarded.is_adapting
    with pytest.raises(AttributeError):
        guarded.no_such_attribute  # noqa: B018


def test_guarded_model_compiles_in_place() -> None:
    guarded = _guarded("norm")
    guarded.model.compile()  # as the docs say: compiles the adapted model, the guard around it unchanged
    assert guarded.model._compiled_call_impl is not None


def test_guard_reset_frozen_hooks_and_states(tmp_path: Path) -> None:
    guarded = _guarded()
    source = clone_state(guarded.model)
    resets: list[TTAMethod] = []
    handle = guarded.register_reset_hook(resets.append)
    x = torch.rand(8, 3, 8, 8)
    guarded(x)
    assert not state_equal(clone_state(guarded.model), source)
    guarded.save_state(tmp_path / "state.pt")
    adapted = clone_state(guarded.model)
    with guarded.frozen():
        assert not guarded.is_adapting
        guarded(x)
    assert state_equal(clone_state(guarded.model), adapted)
    guarded.reset()
    assert state_equal(clone_state(guarded.model), source) and resets == [guarded.adapter]
    handle.remove()
    guarded.load_state(tmp_path / "state.pt")
    assert state_equal(clone_state(guarded.model), adapted)


def test_guard_still_pickles_and_copies() -> None:
    import copy
    import pickle

    guarded = _guarded()
    for twin in (copy.deepcopy(guarded), pickle.loads(pickle.dumps(guarded))):
        assert isinstance(twin, CollapseGuard) and twin.model is twin.adapter.model


def test_export_onnx_exports_the_guarded_method(tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    guarded = _guarded("norm")
    x = torch.rand(4, 3, 8, 8)
    guarded(x)
    before = clone_state(guarded)
    result = tta.export_onnx(guarded, tmp_path / "guarded.onnx", x, exporter="torchscript")
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    assert state_equal(clone_state(guarded), before) and guarded.batches == 1
    session = onnxruntime.InferenceSession(str(tmp_path / "guarded.onnx"))
    (onnx_logits,) = session.run(None, {result.input_names[0]: x.numpy()})
    with guarded.adapter.frozen():
        expected = guarded.adapter(x)
    assert torch.allclose(torch.from_numpy(onnx_logits), expected, atol=1e-4)
    tta.export_onnx(guarded.adapter, tmp_path / "adapter.onnx", x, exporter="torchscript")
    # the method's graph alone: not the guard's source copy nor its collapse test
    assert (tmp_path / "guarded.onnx").read_bytes() == (tmp_path / "adapter.onnx").read_bytes()
