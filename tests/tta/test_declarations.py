"""What methods declare (``changes``, ``exports``, ``needs``, ``quick_options``): checked at registration, read by
the exporter and the edge runtime instead of lists of classes."""

from __future__ import annotations

import io
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor, nn

import tta
from eval.bench.edge_runtime import check_runtime_methods, runtime_mode
from tests.helpers import build_method, registered, tiny_classifier
from tta.base import Changes, Exports, TTAMethod
from tta.registry import get_adapter_class, register_adapter


class _Declared(TTAMethod):
    """A forward-only method that predicts with the model; subclasses vary one declaration at a time."""

    changes: ClassVar[Changes] = "nothing"
    exports: ClassVar[Exports] = "frozen"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.snapshot()

    def adapt_step(self, x: Tensor) -> Tensor:
        logits: Tensor = self.model(x)
        return logits

    @classmethod
    def from_model(cls, model: nn.Module, *, denoiser: object = None, knn: int = 5) -> _Declared:
        return cls(model)


def _class(base: type[TTAMethod] = _Declared, **declarations: Any) -> type[TTAMethod]:
    return type("Custom", (base,), dict(declarations))


class _Undeclared(TTAMethod):
    """States nothing: TTAMethod's cautious values apply, which a registered method may not rely on."""

    @classmethod
    def from_model(cls, model: nn.Module) -> _Undeclared:
        return cls(model)


# --- registration -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "error", "match"), [
    (_Undeclared, TypeError, r"_Undeclared \(method 'test_declared'\) must declare the class variable changes"),
    (_class(_Undeclared, changes="nothing"), TypeError, "must declare the class variable exports = one of"),
    (_class(changes="some"), ValueError, r"declares changes='some'; choose one of \['nothing', 'statistics'"),
    (_class(exports="onnx"), ValueError, r"declares exports='onnx'; choose one of \['adaptive', 'frozen', 'none'\]"),
    (_class(exports="adaptive", uses_grad=True), ValueError, "adapts by gradients.*declare exports='frozen'"),
    (_class(needs={"denoiser"}), TypeError, "needs={'denoiser'}; declare a frozenset"),
    (_class(needs=frozenset({"teacher"})), ValueError, r"unknown need\(s\) \['teacher'\]"),
    (_class(needs=frozenset({"source_data"})), ValueError, r"needs \['source_data'\], but its from_model takes no"),
    (_class(quick_options=[("knn", 2)]), TypeError, "declare a dict of from_model options"),
    (_class(quick_options={"neighbours": 2}), ValueError, r"quick_options \['neighbours'\] that are not options"),
    (_class(needs=frozenset({"denoiser"}), quick_options={"denoiser": None}), ValueError, "are needs"),
])
def test_registration_refuses_missing_or_invalid_declarations(cls: type[TTAMethod], error: type, match: str) -> None:
    with pytest.raises(error, match=match) as info:
        register_adapter("test_declared")(cls)
    assert "\n" not in str(info.value)
    assert "test_declared" not in tta.list_methods()  # a refused class is not left registered


def test_registration_accepts_inherited_and_valid_declarations() -> None:
    declared = _class(needs=frozenset({"denoiser"}), quick_options={"knn": 2})
    with registered("test_declared", declared) as name:
        assert get_adapter_class(name) is declared


# --- the exporter reads `exports` (and `changes`) --------------------------------------------------------


def test_export_refuses_a_norm_subclass_that_declares_it_cannot_be_exported() -> None:
    rewritten = _class(tta.Norm, exports="none")  # e.g. a subclass that post-processes the outputs
    adapter = rewritten(build_method("norm").model)
    with pytest.raises(ValueError, match="Custom changes its outputs.*Export adapter.model instead"):
        tta.export_onnx(adapter, io.BytesIO(), torch.rand(2, 3, 16, 16), check=False, exporter="torchscript")


def test_export_writes_any_method_that_declares_a_frozen_export() -> None:
    adapter = _Declared(tiny_classifier())
    result = tta.export_onnx(adapter, io.BytesIO(), torch.rand(2, 3, 16, 16), exporter="torchscript")
    assert result.mode == "frozen" and result.max_abs_diff is not None and result.max_abs_diff <= 1e-4


def test_adaptive_export_of_a_frozen_only_method_that_changes_state_says_why() -> None:
    adapter = _class(changes="statistics")(tiny_classifier())
    with pytest.raises(ValueError, match=r"Custom adapts its state \(changes='statistics'\).*mode='frozen'.*'norm'"):
        tta.export_onnx(adapter, io.BytesIO(), torch.rand(2, 3, 16, 16), mode="adaptive", exporter="torchscript")


# --- the edge runtime reads them too --------------------------------------------------------------------


def test_runtime_mode_of_the_built_in_methods() -> None:
    expected = {"source": "frozen", "norm": "adaptive", "tent": None, "cotta": None, "lame": None, "dda": None}
    assert {name: runtime_mode(get_adapter_class(name)) for name in expected} == expected


def test_runtime_accepts_a_new_method_that_adapts_inside_the_graph() -> None:
    with registered("test_in_graph", _class(changes="statistics", exports="adaptive")) as name:
        check_runtime_methods(["source", name])


def test_runtime_refuses_a_norm_subclass_whose_state_a_graph_cannot_carry() -> None:
    drifting = _class(tta.Norm, exports="frozen")
    refused = r"scores norm \(adaptive graph\), source \(frozen graph\); method\(s\) \['test_drifting'\] cannot adapt"
    with registered("test_drifting", drifting) as name, pytest.raises(ValueError, match=refused):
        check_runtime_methods(["norm", name])
