"""Checks around every adaptation step: method options, input batches, output logits, and the roll-back of rejected batches."""

from __future__ import annotations

import contextvars
import copy
import functools
import inspect
import math
import numbers
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor, nn

from adapters_bn import iter_adaptive

__all__ = ["OptionCheck", "checked_builder", "builder_parts", "check_base_options", "check_bool", "check_choice", "check_input_ndim", "check_int", "check_non_negative", "check_optional_str", "check_positive", "check_probability", "check_real", "batch_statistics_advice", "check_against_model", "check_batch", "check_grad_allowed", "check_finite_logits", "check_logits", "logits_checked", "finite_step_", "options_checked", "building", "in_builder", "check_base_options_once", "model_errors_explained", "rolled_back_on_error", "Snapshot", "Stateful", "take_snapshot", "restore_snapshot"]


def _received(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_bool(name: str, value: object) -> None:
    """Raise ``TypeError`` unless ``value`` is ``True`` or ``False`` (a truthy string such as ``"no"`` is not)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {_received(value)}")


def check_int(name: str, value: object, *, minimum: int | None = None) -> None:
    """Raise unless ``value`` is an int (not a bool, not ``2.0``), at least ``minimum`` when given.

    Raises:
        TypeError: not an int.
        ValueError: below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_received(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")


def check_real(
    name: str, value: object, *, minimum: float | None = None, maximum: float | None = None,
    strict_minimum: bool = False,
) -> None:
    """Raise unless ``value`` is a finite int or float within the given bounds (inclusive unless ``strict_minimum``).

    Raises:
        TypeError: not a number (a string, a bool, None, a tensor).
        ValueError: NaN, infinite, or out of bounds.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {_received(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if minimum is not None and (number <= minimum if strict_minimum else number < minimum):
        bound = f"> {minimum:g}" if strict_minimum else f">= {minimum:g}"
        if maximum is not None:
            bound += f" and <= {maximum:g}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {value}")


def check_positive(name: str, value: object) -> None:
    """Raise unless ``value`` is a finite number ``> 0`` (a learning rate, a step size)."""
    check_real(name, value, minimum=0.0, strict_minimum=True)


def check_non_negative(name: str, value: object) -> None:
    """Raise unless ``value`` is a finite number ``>= 0`` (a weight decay, a tolerance, a noise level)."""
    check_real(name, value, minimum=0.0)


def check_probability(name: str, value: object) -> None:
    """Raise unless ``value`` is a number in ``[0, 1]`` (a probability, a momentum, a mixing weight)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {_received(value)}")
    if not 0.0 <= float(value) <= 1.0:  # NaN fails this too
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def check_choice(name: str, value: object, choices: Collection[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of the strings ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_optional_str(name: str, value: object) -> None:
    """Raise ``TypeError`` unless ``value`` is a string or ``None``."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a string or None, got {_received(value)}")


def check_input_ndim(value: object) -> None:
    """Raise unless ``value`` is ``None`` (no check of the batch's rank) or an int ``>= 1``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"input_ndim must be None or an int >= 1 (4 for (B, C, H, W) images), got {_received(value)}")
    if value < 1:
        raise ValueError(f"input_ndim must be None or an int >= 1 (4 for (B, C, H, W) images), got {value}")


def check_base_options(*, steps: object = 1, episodic: object = False, input_ndim: object = 4) -> None:
    """Check the options every method shares: ``steps`` (int >= 1), ``episodic`` (bool), ``input_ndim``."""
    check_int("steps", steps, minimum=1)
    check_bool("episodic", episodic)
    check_input_ndim(input_ndim)


OptionCheck = Callable[[Mapping[str, Any]], None]
"""A method's option check: raises for a value it cannot use; gets every option of ``from_model``, defaults filled."""
_Builder = TypeVar("_Builder", bound=Callable[..., Any])


_OPTIONS_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar("tta_options_checked", default=False)


_BUILDING: contextvars.ContextVar[bool] = contextvars.ContextVar("tta_building", default=False)


@contextmanager
def options_checked() -> Iterator[None]:
    """Within the block, a method being built has had all its options checked (by its builder's check)."""
    token = _OPTIONS_CHECKED.set(True)
    try:
        with building():
            yield
    finally:
        _OPTIONS_CHECKED.reset(token)


@contextmanager
def building() -> Iterator[None]:
    """Within the block a builder runs: calling a method class constructs it (see ``tta.base.MethodType``)."""
    token = _BUILDING.set(True)
    try:
        yield
    finally:
        _BUILDING.reset(token)


def in_builder() -> bool:
    """Whether a method's builder (``from_model``) is running in this context."""
    return _BUILDING.get()


def check_base_options_once(*, steps: object = 1, episodic: object = False, input_ndim: object = 4) -> None:
    """:func:`check_base_options`, unless the method's builder already checked them (a direct construction)."""
    if not _OPTIONS_CHECKED.get():
        check_base_options(steps=steps, episodic=episodic, input_ndim=input_ndim)


def checked_builder(check: OptionCheck) -> Callable[[_Builder], _Builder]:
    """Decorate a method's ``from_model`` (under ``@classmethod``) so that every call checks its options first.

    The call's keyword-only options, defaults filled, go to ``check`` before the builder touches the
    model, so a rejected call changes nothing. The declaration stays the builder's signature; the
    registry reads both parts (:func:`builder_parts`) to check once and build without checking again.
    """

    def decorate(builder: _Builder) -> _Builder:
        signature = inspect.signature(builder)
        names = [p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]

        @functools.wraps(builder)
        def checked(cls: type, model: nn.Module, /, **options: Any) -> Any:
            bound = signature.bind(cls, model, **options)
            bound.apply_defaults()
            hparams = {name: bound.arguments[name] for name in names}
            check(hparams)
            with options_checked():
                adapter = builder(cls, model, **options)
            adapter.hparams = hparams  # the options that built it, for experiment trackers
            return adapter

        checked.check_options = check  # type: ignore[attr-defined]
        return checked  # type: ignore[return-value]

    return decorate


def builder_parts(builder: Callable[..., Any]) -> tuple[OptionCheck | None, Callable[..., Any]]:
    """Return ``(option check, unchecked builder)`` of a class's bound ``from_model`` (no check: ``None``)."""
    function, owner = getattr(builder, "__func__", None), getattr(builder, "__self__", None)
    if function is None:
        return None, builder
    check, unchecked = getattr(function, "check_options", None), functools.partial(inspect.unwrap(function), owner)

    def build(*args: Any, **kwargs: Any) -> Any:
        if check is None:  # a builder without a declared check checks what it checks itself
            with building():
                return unchecked(*args, **kwargs)
        with options_checked():  # the registry ran ``check`` once before calling this
            return unchecked(*args, **kwargs)

    return check, build


def check_batch(x: Tensor, ndim: int | None = 4) -> None:
    """Raise a clear ``TypeError``/``ValueError`` for input that no method can adapt on.

    Args:
        x: The input batch.
        ndim: Expected number of dimensions (4 for ``(B, C, H, W)`` images); ``None`` skips the check.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor batch, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point batch, got dtype {x.dtype}; convert images with x.float() / 255")
    if ndim is not None and x.dim() != ndim:
        layout = " (B, C, H, W)" if ndim == 4 else ""
        raise ValueError(f"expected a {ndim}-D batch{layout}, got shape {tuple(x.shape)}; for a model that "
                         f"takes {x.dim()}-D input, build the method with input_ndim={x.dim()} (e.g. "
                         f"tta.wrap(model, method, input_ndim={x.dim()})), or input_ndim=None to skip this check")
    if x.dim() == 0:
        raise ValueError("expected a batch with a leading batch dimension, got a 0-D tensor (a single number)")
    if x.is_meta:
        raise ValueError(f"batch of shape {tuple(x.shape)} is on the meta device and holds no values; "
                         "pass a batch with data (on the model's device)")
    if x.shape[0] == 0:
        raise ValueError("empty batch: nothing to predict or adapt on")
    if x.numel() == 0:
        raise ValueError(f"batch of shape {tuple(x.shape)} has an empty dimension; every dimension must be >= 1")
    # detach: a batch that requires grad would make float() warn; one pass, no temporaries; NaN propagates
    low, high = torch.aminmax(x.detach())
    if not (math.isfinite(float(low)) and math.isfinite(float(high))):
        raise ValueError("batch contains NaN or Inf values; refusing to adapt on it")


def check_against_model(model: nn.Module, x: Tensor) -> None:
    """Raise unless ``x`` is on the device of ``model``'s parameters and of their dtype (or under autocast)."""
    param = next(model.parameters(), None)
    if param is None:
        return
    if param.device != x.device:
        raise ValueError(f"batch is on {x.device} but the model is on {param.device}; move one with .to()")
    if x.dtype != param.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(
            f"batch is {x.dtype} but the model's parameters are {param.dtype}; convert with "
            f"x.to({param.dtype}) or call inside torch.autocast"
        )


def batch_statistics_advice(method: str, model: nn.Module) -> str | None:
    """The warning for a batch of one image when ``model`` normalizes with batch statistics, else ``None``."""
    if not any(layer.stats == "batch" for _, layer in iter_adaptive(model)):
        return None
    return (f"{method} normalizes with the statistics of a batch of 1 image, which are too noisy "
            "to adapt well (a batch-1 stream can end far worse than the source model); build it with "
            "stats='ema' for batch-size-1 streams (docs/production.md)")


def check_grad_allowed(method: str) -> None:
    """Raise for a gradient-based method called under ``torch.inference_mode()``, which forbids its update."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{method} adapts by gradient steps, which torch.inference_mode() forbids; "
            "call it under torch.no_grad() or no context instead, or use adapter.frozen() to predict only"
        )


def check_logits(output: object, batch_size: int | None) -> Tensor:
    """Return ``output`` if it is a logits tensor ``(batch_size, num_classes)``, else raise a clear error.

    Args:
        output: What the model returned.
        batch_size: The number of images it was given; ``None`` skips the comparison.

    Raises:
        TypeError: ``output`` is not a tensor (a tuple, a dict, ...).
        ValueError: ``output`` is not 2-D or does not have one row per image.
    """
    if not isinstance(output, Tensor):
        raise TypeError(f"the model returned {type(output).__name__}; expected a logits tensor of shape "
                        "(B, num_classes) (wrap a model with several outputs in a module that returns the logits)")
    if output.dim() != 2 or (batch_size is not None and output.shape[0] != batch_size):
        raise ValueError(f"the model returned a tensor of shape {tuple(output.shape)} for a batch of {batch_size} "
                         "images; expected logits of shape (B, num_classes)")
    return output


def _check_hook(module: nn.Module, args: tuple[Any, ...], output: object) -> None:
    batch = args[0] if args and isinstance(args[0], Tensor) and args[0].dim() > 0 else None
    check_logits(output, None if batch is None else batch.shape[0])


@contextmanager
def logits_checked(model: nn.Module) -> Iterator[None]:
    """Within the block, every call of ``model`` checks that it returned logits, before a method uses them.

    A method's own code (Tent's entropy, CoTTA's targets) would otherwise fail on a tuple or a 1-D
    output with an error about its internals. The hook is removed on exit, so the user's model carries
    nothing outside an adapter's forward (exports and direct calls are unaffected).
    """
    handle = model.register_forward_hook(_check_hook)
    try:
        yield
    finally:
        handle.remove()


def check_finite_logits(method: str, logits: Tensor, x: Tensor) -> None:
    """Raise ``ValueError`` when ``logits`` hold NaN or Inf (values too large for the batch's dtype?)."""
    if not torch.isfinite(logits).all():
        raise ValueError(
            f"{method}: the model's logits are not finite on this batch (values too large for {x.dtype}?); "
            "the batch was rejected and nothing was adapted"
        )


_PLAIN = (bool, int, float, str, type(None))


@contextmanager
def model_errors_explained(method: nn.Module, x: Tensor) -> Iterator[None]:
    """Within the block, torch's ``RuntimeError`` from inside the model becomes a ``ValueError`` naming the batch."""
    try:
        yield
    except RuntimeError as error:
        if type(error) is not RuntimeError:
            raise
        raise ValueError(
            f"{type(method).__name__}: the model rejected a batch of shape {tuple(x.shape)} and dtype "
            f"{x.dtype}; nothing was adapted. The model said: {error}"
        ) from error


@contextmanager
def rolled_back_on_error(
    method: nn.Module, x: Tensor, optimizers: Sequence[torch.optim.Optimizer] = (), *, everything: bool = False
) -> Iterator[None]:
    """Within the block, an exception restores ``method``'s buffers and plain attributes (``everything``: all state).

    Buffers move in the forward itself, before any check; parameters, optimizer states and the
    modules updated after the step (a teacher) change only in :func:`finite_step_`, after its
    checks. ``everything=True`` (several steps per batch, where a later step can be refused after
    an earlier one updated) also restores parameters and ``optimizers``' states, bit for bit. Errors
    are explained as by :func:`model_errors_explained`.
    """
    attributes = {k: v for k, v in vars(method).items() if isinstance(v, _PLAIN)}
    full: Snapshot | None = take_snapshot(method, list(optimizers)) if everything else None
    buffers = [buffer.clone() for buffer in method.buffers()]  # also the non-persistent ones a snapshot skips
    try:
        with model_errors_explained(method, x):
            yield
    except Exception:
        if full is not None:
            restore_snapshot(method, list(optimizers), full)
        with torch.no_grad():
            for buffer, value in zip(method.buffers(), buffers):
                buffer.copy_(value)
        for name, attribute in attributes.items():
            setattr(method, name, attribute)
        raise


def finite_step_(method: str, loss: Tensor, optimizer: torch.optim.Optimizer, *, logits: Tensor) -> None:
    """Update: one ``optimizer`` step on ``loss``, taken only when it is safe; else raise ``ValueError``.

    Refuses the batch before anything changes when the loss or the ``logits`` the step will return
    (shape ``(B, K)``) hold NaN or Inf, or when the gradients do: one step on a non-finite value
    would poison the parameters for good, and every later batch would be refused until ``reset``.
    Gradients are cleared either way, so nothing of a refused batch leaks into the next step.

    Args:
        method: The method's name, for the message.
        loss: The scalar objective.
        optimizer: The optimizer over the parameters being adapted.
        logits: What the adaptation step returns (checked here, before the parameters move).
    """
    check_logits(logits, None)
    if not bool(torch.isfinite(loss).all() & torch.isfinite(logits).all()):
        raise ValueError(f"{method}: the loss or the logits are not finite on this batch (values too large for "
                         f"{logits.dtype}?); the batch was rejected and nothing was adapted")
    try:
        loss.backward()
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads and not math.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=math.inf)):
            raise ValueError(f"{method}: the gradients are not finite on this batch; the batch was rejected and "
                             "nothing was adapted")
        optimizer.step()
    finally:
        optimizer.zero_grad()


class Stateful(Protocol):
    """What a snapshot reads and writes: a module's state dict (every ``nn.Module`` has it)."""

    def state_dict(self, *, keep_vars: bool = ...) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = ..., assign: bool = ...) -> Any: ...


#: ``(state dict with every parameter and buffer, optimizer state dicts)``, all detached copies.
Snapshot = tuple[dict[str, Tensor], list[dict[str, Any]]]


def take_snapshot(module: Stateful, optimizers: list[torch.optim.Optimizer]) -> Snapshot:
    """Return detached copies of ``module``'s parameters and buffers and of the optimizers' states."""
    state = {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items()}
    return state, [copy.deepcopy(opt.state_dict()) for opt in optimizers]


def restore_snapshot(module: Stateful, optimizers: list[torch.optim.Optimizer], snapshot: Snapshot) -> None:
    """Load ``snapshot`` back, bit for bit; the snapshot stays reusable (optimizer states are copied again)."""
    state, optimizer_states = snapshot
    module.load_state_dict(state)
    for opt, opt_state in zip(optimizers, optimizer_states, strict=True):
        opt.load_state_dict(copy.deepcopy(opt_state))  # deep copy: the optimizer would alias it
