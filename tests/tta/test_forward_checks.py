"""The forward template refuses bad batches and models that do not return logits, and changes nothing then."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import tta
from tests.helpers import clone_state, state_equal, tiny_classifier
from tta.guard import CollapseGuard


def _batch(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


class _Returning(nn.Module):
    """The tiny classifier, returning its logits as a tuple, a dict, or one score per image."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.net, self.kind = tiny_classifier(), kind

    def forward(self, x: torch.Tensor) -> object:
        logits = self.net(x)
        return {"tuple": (logits, logits), "dict": {"logits": logits}, "1d": logits[:, 0]}[self.kind]


def test_train_on_the_wrapper_keeps_the_models_dropout_off() -> None:
    model = nn.Sequential(tiny_classifier(), nn.Dropout(0.5)).eval()
    for adapted in (tta.wrap(model, "source"), tta.wrap(model, "tent", production=True)):
        adapted.train()
        with adapted.frozen():
            assert torch.equal(adapted(_batch()), adapted(_batch()))
        inner = [m for m in adapted.modules() if not isinstance(m, (tta.TTAMethod, CollapseGuard))]
        assert adapted.training and inner and not any(m.training for m in inner)
    with pytest.raises(ValueError, match="must be a bool"):
        tta.wrap(model, "source").train("yes")  # type: ignore[arg-type]


def test_episodic_adapter_rejecting_a_batch_does_not_reset() -> None:
    adapter = tta.wrap(tiny_classifier(), "tent", episodic=True)
    adapter(_batch())
    state = clone_state(adapter)
    with pytest.raises(TypeError, match="batch is torch.float64"):
        adapter(_batch().double())
    assert state_equal(clone_state(adapter), state)


@pytest.mark.parametrize("method", ["source", "norm", "tent", "cotta"])
def test_model_not_returning_logits_is_a_clear_error(method: str) -> None:
    for kind, error, message in [("tuple", TypeError, "the model returned tuple; expected a logits tensor"),
                                 ("dict", TypeError, "the model returned dict; expected a logits tensor"),
                                 ("1d", ValueError, r"shape \(4,\) for a batch of 4 images; expected logits")]:
        options = {"num_augmentations": 2} if method == "cotta" else {}
        adapter = tta.wrap(_Returning(kind), method, **options)
        state = clone_state(adapter)
        with pytest.raises(error, match=message):
            adapter(_batch())
        assert state_equal(clone_state(adapter), state)
        with adapter.frozen(), pytest.raises(error, match=message):
            adapter(_batch())


def test_frozen_path_checks_the_batch_against_the_model() -> None:
    adapter = tta.wrap(tiny_classifier(), "tent")
    with adapter.frozen():
        with pytest.raises(TypeError, match="batch is torch.float64 but the model's parameters are torch.float32"):
            adapter(_batch().double())
        with pytest.raises(ValueError, match=r"the model rejected a batch of shape \(4, 1, 16, 16\)"):
            adapter(torch.rand(4, 1, 16, 16))


def test_meta_and_empty_dimension_batches_are_clear_errors() -> None:
    adapter = tta.wrap(tiny_classifier(), "norm")
    with pytest.raises(ValueError, match="on the meta device and holds no values"):
        adapter(torch.empty(4, 3, 16, 16, device="meta"))
    with pytest.raises(ValueError, match=r"shape \(4, 3, 0, 8\) has an empty dimension"):
        adapter(torch.rand(4, 3, 0, 8))
    with pytest.raises(ValueError, match="got a 0-D tensor"):
        tta.wrap(tiny_classifier(), "source", input_ndim=None)(torch.tensor(1.0))


def test_batch_requiring_grad_gives_no_torch_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tta.wrap(tiny_classifier(), "tent")(_batch().requires_grad_(True))


def test_batch_of_one_warning_points_at_the_callers_line() -> None:
    adapter = tta.wrap(tiny_classifier(), "tent")
    with pytest.warns(RuntimeWarning, match="batch of 1 image") as record:
        adapter(_batch(1))
    assert record[0].filename == __file__
