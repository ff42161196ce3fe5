"""Method options are checked when a method is built: a bad option fails at ``tta.wrap``, not on the first batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import tta
from tests.helpers import build_method, clone_state, state_equal, tiny_classifier
from tta.checks import check_bool, check_int, check_positive, check_probability, check_real

METHODS = tta.list_methods()


def _wrap(method: str, model: nn.Module | None = None, /, **options: object) -> tta.TTAMethod:
    return build_method(method, model, **options)


def _options(kind: type) -> list[tuple[str, str]]:
    """Every (method, option) pair whose default is of exactly ``kind``."""
    return [(m, k) for m in METHODS for k, o in tta.method_options(m).items() if type(o.default) is kind]


# --- the option checks themselves --------------------------------------------------------------


def test_check_bool_rejects_truthy_non_bools() -> None:
    check_bool("episodic", False)
    for value in ("no", 1, None):
        with pytest.raises(TypeError, match=r"episodic must be True or False, got .*\((str|int|NoneType)\)"):
            check_bool("episodic", value)


def test_check_int_rejects_floats_bools_and_values_below_minimum() -> None:
    check_int("knn", np.int64(3), minimum=1)  # numpy ints are ints
    for value in (2.5, 2.0, True, "2"):
        with pytest.raises(TypeError, match="knn must be an int, got"):
            check_int("knn", value)
    with pytest.raises(ValueError, match="max_steps must be an int >= 1, got 0"):
        check_int("max_steps", 0, minimum=1)


def test_check_real_accepts_ints_and_rejects_strings_and_non_finite_values() -> None:
    check_positive("lr", 1)  # an int where a float is expected
    check_real("tol", np.float32(1e-3), minimum=0.0)
    with pytest.raises(TypeError, match=r"lr must be a number, got '0.1' \(str\)"):
        check_positive("lr", "0.1")
    with pytest.raises(ValueError, match="lr must be > 0, got -1$"):
        check_positive("lr", -1)
    for value in (math.nan, math.inf):
        with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
            check_real("guidance_scale", value, minimum=0.0)


def test_check_probability_bounds() -> None:
    check_probability("prior", 0)
    check_probability("prior", 1.0)
    for value in (-0.1, 2, math.nan):
        with pytest.raises(ValueError, match=r"prior must be in \[0, 1\]"):
            check_probability("prior", value)
    with pytest.raises(TypeError, match="prior must be a number in"):
        check_probability("prior", "x")


# --- every option of every method, at wrap time -------------------------------------------------


@pytest.mark.parametrize(("method", "option"), _options(bool))
def test_every_bool_option_rejects_a_truthy_string_and_leaves_the_model_unchanged(method: str, option: str) -> None:
    model = tiny_classifier()
    before = clone_state(model)
    with pytest.raises(TypeError, match=f"{option} must be True or False, got 'no'"):
        _wrap(method, model, inplace=True, **{option: "no"})
    assert state_equal(clone_state(model), before)
    assert any(type(m) is nn.BatchNorm2d for m in model.modules())  # not converted


@pytest.mark.parametrize(("method", "option"), _options(int))
def test_every_int_option_rejects_a_fraction(method: str, option: str) -> None:
    with pytest.raises(TypeError, match=f"{option} must be (None or )?an int.*, got 1.5"):
        _wrap(method, **{option: 1.5})


@pytest.mark.parametrize(("method", "option"), _options(float))
def test_every_float_option_rejects_strings_and_nan(method: str, option: str) -> None:
    with pytest.raises(TypeError, match=f"{option} must be a number"):
        _wrap(method, **{option: "0.1"})
    with pytest.raises(ValueError, match=option):
        _wrap(method, **{option: math.nan})


@pytest.mark.parametrize(("method", "option"), _options(str))
def test_every_choice_option_rejects_an_unknown_name(method: str, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        _wrap(method, **{option: "bogus"})


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("value", "error"), [("4", TypeError), (0, ValueError), (-1, ValueError)])
def test_input_ndim_must_be_none_or_a_positive_int(method: str, value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=rf"input_ndim must be None or an int >= 1 .*, got {value!r}"):
        _wrap(method, input_ndim=value)


# --- the audit's cases --------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "options", "error", "match"), [
    ("tent", {"optimizer": "rmsprop"}, ValueError, r"optimizer must be one of \['adam', 'sgd'\], got 'rmsprop'"),
    ("tent", {"lr": -1}, ValueError, "lr must be > 0, got -1$"),
    ("tent", {"lr": "0.1"}, TypeError, "lr must be a number, got '0.1'"),
    ("tent", {"momentum": -1}, ValueError, r"momentum must be in \[0, 1\], got -1"),
    ("tent", {"optimizer": "sgd", "momentum": 0}, ValueError, "momentum must be > 0 with optimizer='sgd'"),
    ("tent", {"steps": "2"}, TypeError, "steps must be an int, got '2'"),
    ("tent", {"steps": 0}, ValueError, "steps must be an int >= 1, got 0"),
    ("tent", {"weight_decay": -0.1}, ValueError, "weight_decay must be >= 0"),
    ("norm", {"momentum": "0.1"}, TypeError, "momentum must be a number in"),
    ("norm", {"prior": "x"}, TypeError, "prior must be a number in"),
    ("lame", {"bound_lambda": -1}, ValueError, "bound_lambda must be >= 0, got -1"),
    ("lame", {"max_steps": 0}, ValueError, "max_steps must be an int >= 1, got 0"),
    ("lame", {"max_steps": -1}, ValueError, "max_steps must be an int >= 1, got -1"),
    ("lame", {"tol": -1}, ValueError, "tol must be >= 0, got -1"),
    ("lame", {"knn": 2.5}, TypeError, "knn must be an int, got 2.5"),
    ("lame", {"head": 3}, TypeError, "head must be a string or None, got 3"),
    ("cotta", {"max_images": 0}, ValueError, "max_images must be an int >= 1, got 0"),
    ("cotta", {"max_images": -1}, ValueError, "max_images must be an int >= 1, got -1"),
    ("cotta", {"seed": "a"}, TypeError, "seed must be an int, got 'a'"),
    ("cotta", {"confidence_threshold": -0.5}, ValueError, r"confidence_threshold must be >= 0, got -0.5"),
    ("cotta", {"optimizer": "rmsprop"}, ValueError, r"optimizer must be one of \['adam', 'sgd'\], got 'rmsprop'"),
    ("cotta", {"ema_momentum": 1.5}, ValueError, r"ema_momentum must be in \[0, 1\], got 1.5"),
    ("cotta", {"restore_prob": "x"}, TypeError, "restore_prob must be a number in"),
    ("cotta", {"lr": 0}, ValueError, "lr must be > 0, got 0"),
    ("cotta", {"symmetric_loss": "yes"}, TypeError, "symmetric_loss must be True or False"),
    ("dda", {"guidance_scale": math.nan}, ValueError, "guidance_scale must be a finite number, got nan"),
    ("dda", {"start_step": 10}, ValueError, r"start_step must be in \[1, 9\] for respacing=10, got 10"),
    ("dda", {"respacing": 2000}, ValueError, r"respacing must be <= num_train_steps \(1000\), got 2000"),
    ("dda", {"chunk_size": 0}, ValueError, "chunk_size must be an int >= 1, got 0"),
])
def test_bad_option_fails_at_wrap_with_a_one_line_message(
    method: str, options: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match) as info:
        _wrap(method, **options)
    assert "\n" not in str(info.value)


def test_cotta_on_a_model_without_parameters_says_there_is_nothing_to_adapt() -> None:
    with pytest.raises(ValueError, match="CoTTA has no parameters to adapt: Sequential"):
        tta.wrap(nn.Sequential(nn.Flatten()), "cotta")


def test_valid_values_as_the_command_line_parses_them_still_build() -> None:
    """``--option`` values arrive as JSON numbers, bools, null or plain strings (eval/commands/options.py)."""
    x = torch.rand(4, 3, 16, 16)
    for method, options in [
        ("tent", {"lr": 1, "optimizer": "sgd", "momentum": 1, "episodic": True, "steps": 2}),
        ("tent", {"momentum": 0, "weight_decay": 0}),
        ("tent", {"lr": 0.001, "stats": "ema", "bn_momentum": 1}),
        ("norm", {"stats": "mix", "prior": 0, "momentum": 0.5}),
        ("cotta", {"preset": "imagenet", "lr": None, "max_images": 8, "seed": -3, "confidence_threshold": 0}),
        ("lame", {"affinity": "rbf", "knn": np.int64(3), "bound_lambda": 0, "max_steps": 1, "tol": 0}),
        ("dda", {"guidance_scale": 0, "chunk_size": 2, "seed": 7, "input_ndim": None}),
        ("source", {"input_ndim": 4}),
    ]:
        out = _wrap(method, **options)(x)
        assert out.shape == (4, 10) and torch.isfinite(out).all()


def test_options_are_checked_when_the_builder_is_called_directly() -> None:
    from tta.methods.lame import LAME

    with pytest.raises(TypeError, match="knn must be an int"):
        LAME.from_model(tiny_classifier(), knn=2.5, head="8")  # type: ignore[arg-type]


def test_direct_construction_checks_the_shared_options() -> None:
    from tta.methods.tent import Tent

    model = tiny_classifier()
    with pytest.raises(TypeError, match="steps must be"):
        Tent(model, torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), steps=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="input_ndim must be None or an int"):
        Tent(model, torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), input_ndim="4")  # type: ignore[arg-type]
