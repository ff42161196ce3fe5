"""Registry and wrap: names, options, errors."""

from __future__ import annotations

import pytest
import torch

import tta
from tta.registry import register_adapter
from tests.helpers import tiny_classifier


def test_builtin_methods_are_registered() -> None:
    assert {"source", "norm", "tent"} <= set(tta.list_methods())


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_adapter("tent")(tta.Source)


def test_unknown_method_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="available: .*tent"):
        tta.wrap(tiny_classifier(), "tnet")


def test_unknown_option_lists_valid_options() -> None:
    with pytest.raises(TypeError, match="valid options: .*lr"):
        tta.wrap(tiny_classifier(), "tent", learning_rate=1e-3)


def test_wrap_rejects_non_modules_and_double_wrapping() -> None:
    with pytest.raises(TypeError, match="nn.Module"):
        tta.wrap(lambda x: x, "norm")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="already wrapped"):
        tta.wrap(tta.wrap(tiny_classifier(), "norm"), "tent")


def test_softmax_entropy_values() -> None:
    assert torch.allclose(tta.softmax_entropy(torch.zeros(2, 4)), torch.full((2,), torch.log(torch.tensor(4.0))))
    confident = torch.tensor([[100.0, 0.0, 0.0]])
    assert tta.softmax_entropy(confident).item() < 1e-6
