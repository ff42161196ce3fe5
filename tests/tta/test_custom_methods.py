"""Methods defined outside the package: ``module:Class`` names, ``tta.methods`` entry points, ``hparams``."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import tta
from tests.helpers import tiny_classifier
from tta import registry
from tta.methods import Tent

MODULE = "tta_custom_method_example"
SOURCE = '''
from torch import Tensor, nn

from tta.base import TTAMethod


class Scaled(TTAMethod):
    """Predicts the model's logits times ``scale``; adapts nothing."""

    changes = "nothing"
    exports = "none"

    def __init__(self, model: nn.Module, *, scale: float, input_ndim: int | None) -> None:
        super().__init__(model, input_ndim=input_ndim)
        self.scale = scale
        self.snapshot()

    def adapt_step(self, x: Tensor) -> Tensor:
        return self.model(x) * self.scale

    @classmethod
    def from_model(cls, model: nn.Module, *, scale: float = 2.0, input_ndim: int | None = 4) -> "Scaled":
        return cls(model, scale=scale, input_ndim=input_ndim)


NOT_A_METHOD = 3
'''


def write_method_module(folder: Path, name: str = MODULE) -> Path:
    """Write the example method's module ``name`` into ``folder``; return its path."""
    path = folder / f"{name}.py"
    path.write_text(SOURCE)
    return path


@contextmanager
def importable_method_module(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The example module written into ``folder`` and importable; its registrations and import undone afterwards."""
    write_method_module(folder)
    # not syspath_prepend: it calls pkg_resources, which another test may have replaced by a stub
    monkeypatch.setattr(sys, "path", [str(folder), *sys.path])
    importlib.invalidate_caches()
    before = dict(registry._REGISTRY)
    try:
        yield
    finally:
        registry._REGISTRY.clear()
        registry._REGISTRY.update(before)
        sys.modules.pop(MODULE, None)


@pytest.fixture
def outside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The example module on ``sys.path``, for the block."""
    with importable_method_module(tmp_path, monkeypatch):
        yield MODULE


def _fake_entry_points(monkeypatch: pytest.MonkeyPatch, **entries: str) -> None:
    """Make ``importlib.metadata.entry_points`` report ``entries`` (name: value) in group ``tta.methods``."""
    points = [importlib.metadata.EntryPoint(name, value, "tta.methods") for name, value in entries.items()]
    real = importlib.metadata.entry_points

    def fake(**params: object) -> object:
        if params.get("group") == "tta.methods":
            return importlib.metadata.EntryPoints(points)
        return real(**params)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)


def test_wrap_takes_a_module_class_name(outside: str) -> None:
    name = f"{outside}:Scaled"
    adapted = tta.wrap(tiny_classifier(), name, scale=3.0)
    x = torch.rand(4, 3, 8, 8)
    assert torch.allclose(adapted(x), 3.0 * adapted.model(x))
    assert name in tta.list_methods()
    assert set(tta.method_options(name)) == {"scale", "input_ndim"}


def test_entry_point_methods_are_listed_and_wrapped(outside: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_entry_points(monkeypatch, scaled=f"{outside}:Scaled")
    assert "scaled" in tta.list_methods()
    adapted = tta.wrap(tiny_classifier(), "scaled")
    assert type(adapted).__name__ == "Scaled"


def test_entry_point_is_loaded_when_first_named(outside: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_entry_points(monkeypatch, scaled_lazily=f"{outside}:Scaled")
    assert tta.method_options("scaled_lazily")["scale"].default == 2.0


def test_unimportable_module_names_the_module_and_what_to_do() -> None:
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'.*PYTHONPATH"):
        tta.wrap(tiny_classifier(), "no_such_module_xyz:Method")


def test_a_name_that_is_not_a_method_class_is_refused(outside: str) -> None:
    with pytest.raises(ValueError, match="not a tta.TTAMethod subclass"):
        tta.wrap(tiny_classifier(), f"{outside}:NOT_A_METHOD")
    with pytest.raises(ValueError, match="has no 'Missing'"):
        tta.wrap(tiny_classifier(), f"{outside}:Missing")
    assert f"{outside}:NOT_A_METHOD" not in tta.list_methods()


def test_broken_entry_point_is_left_out_of_the_list_and_named_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_entry_points(monkeypatch, broken="no_such_module_xyz:Method")
    with pytest.warns(RuntimeWarning, match="broken"):
        assert "broken" not in tta.list_methods()
    with pytest.raises(ValueError, match="method 'broken' .*cannot be imported"):
        tta.wrap(tiny_classifier(), "broken")


@pytest.mark.parametrize("production", [False, True], ids=["adapter", "guarded"])
def test_hparams_are_the_full_options_with_defaults(production: bool) -> None:
    adapted = tta.wrap(tiny_classifier(), "tent", production=production, lr=1e-3)
    declared = tta.method_options("tent")
    assert adapted.hparams == {key: 1e-3 if key == "lr" else option.default for key, option in declared.items()}


def test_from_model_records_hparams_too() -> None:
    adapter = Tent.from_model(tiny_classifier(), steps=2)
    assert adapter.hparams["steps"] == 2
    assert set(adapter.hparams) == set(tta.method_options("tent"))


def test_custom_method_hparams(outside: str) -> None:
    assert tta.wrap(tiny_classifier(), f"{outside}:Scaled").hparams == {"scale": 2.0, "input_ndim": 4}


def test_vector_input_error_names_the_input_ndim_option() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3)).eval()
    adapted = tta.wrap(model, "norm")
    with pytest.raises(ValueError, match=r"got shape \(4, 6\).*input_ndim=2"):
        adapted(torch.rand(4, 6))
    assert tta.wrap(model, "norm", input_ndim=2)(torch.rand(4, 6)).shape == (4, 3)
