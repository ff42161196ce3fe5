"""TTAMethod: the template every method fills in (adapt_step), with its lock, exact snapshot/reset and warnings."""

from __future__ import annotations

import copy
import functools
import os
import sys
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar, Literal, Self, get_args

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from adapters_bn import freeze_statistics
from tta import state
from tta.checks import (
    Snapshot,
    batch_statistics_advice,
    building,
    check_against_model,
    check_base_options_once,
    check_batch,
    check_finite_logits,
    check_grad_allowed,
    check_logits,
    in_builder,
    logits_checked,
    model_errors_explained,
    restore_snapshot,
    rolled_back_on_error,
    take_snapshot,
)

__all__ = ["warn_at_caller", "LockedModule", "MethodType", "TTAMethod", "Changes", "Exports", "Need", "CHANGES", "EXPORTS", "NEEDS"]

Changes = Literal["nothing", "statistics", "norm_affine", "all"]
Exports = Literal["adaptive", "frozen", "none"]
Need = Literal["source_data", "denoiser"]
CHANGES: tuple[str, ...] = get_args(Changes)
EXPORTS: tuple[str, ...] = get_args(Exports)
NEEDS: tuple[str, ...] = get_args(Need)


_INTERNAL = tuple(os.path.dirname(path) + os.sep for path in (__file__, str(torch.__file__)))


def warn_at_caller(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """Issue ``message`` as if from the first calling frame outside ``tta`` and ``torch`` (the user's call)."""
    frame = sys._getframe(1)
    level = 2  # stacklevel 2 names the frame that called this function
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)


class LockedModule(nn.Module):
    """``nn.Module`` holding ``self._lock``: a ``deepcopy`` or unpickled copy gets its own lock, not a shared one."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.RLock()

    def __getstate__(self) -> dict[str, Any]:
        attributes = dict(super().__getstate__())
        attributes.pop("_lock", None)  # locks cannot be copied or pickled
        return attributes

    def __setstate__(self, attributes: dict[str, Any]) -> None:
        super().__setstate__(attributes)
        self._lock = threading.RLock()


class MethodType(type):
    """The metaclass of methods: ``Tent(model, lr=1e-3)`` builds like ``tta.wrap(model, "tent", lr=1e-3)``.

    Called with the model and options only, a method class runs its ``from_model`` recipe on a copy of
    the model (``inplace=True``: on the model itself). Called with a configured model and optimizer
    (``Tent(model, optimizer)``), or from inside any ``from_model`` (every class's builder runs within
    :func:`tta.checks.building`), it constructs as usual.
    """

    def __init__(cls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(name, bases, namespace, **kwargs)
        builder = namespace.get("from_model")
        if isinstance(builder, classmethod):
            cls.from_model = classmethod(_while_building(builder.__func__))

    def __call__(cls, model: Any = None, /, *args: Any, **kwargs: Any) -> Any:
        builder = getattr(cls, "from_model", None)
        own_builder = getattr(builder, "__func__", None) is not vars(TTAMethod)["from_model"].__func__
        if args or in_builder() or not own_builder or not isinstance(model, nn.Module):
            return super().__call__(model, *args, **kwargs)
        inplace = kwargs.pop("inplace", False)
        if not isinstance(inplace, bool):
            raise TypeError(f"inplace must be True or False, got {inplace!r}")
        return builder(model if inplace else copy.deepcopy(model), **kwargs)  # type: ignore[misc]


def _while_building(function: Callable[..., Any]) -> Callable[..., Any]:
    """Return ``function`` (a ``from_model``) run within :func:`tta.checks.building`: its calls of the class construct."""

    @functools.wraps(function)
    def build(cls: type, *args: Any, **kwargs: Any) -> Any:
        with building():
            return function(cls, *args, **kwargs)

    return build


class TTAMethod(LockedModule, metaclass=MethodType):
    """Base of all methods: ``forward`` predicts and adapts, ``reset`` restores the source state exactly.

    Subclasses implement :meth:`adapt_step` (one update on ``x``, returning logits), register their
    optimizers in ``self.optimizers`` and call :meth:`snapshot` at the end of ``__init__``. ``self._lock``
    (:class:`~tta.base.LockedModule`) serializes adaptation across threads. All state
    lives in parameters, buffers and optimizer state, so the snapshot is complete. The wrapped model
    is put in ``eval()`` (dropout off) and stays there: ``train()`` on the wrapper does not recurse into
    it. Normalization modes are set explicitly by each method.

    Each method declares what callers would otherwise hard-code about it (class variables;
    :func:`tta.registry.register_adapter` refuses a class that does not set ``changes`` and ``exports``):

    - ``changes``: what adapting changes. ``nothing`` (no parameter, buffer or optimizer state),
      ``statistics`` (buffers only: normalization statistics, counters), ``norm_affine`` (the
      normalization layers' affine parameters, and statistics), ``all`` (any parameter).
    - ``exports``: what :func:`tta.export_onnx` can write. ``adaptive``: forward-only adaptation the graph
      computes itself; ``frozen``: the current state as a fixed graph; ``none``: outputs or inputs changed
      in ways the exporter cannot infer.
    - ``needs``: what a caller must supply, as the option of the same name: ``source_data`` (batches of
      the source training data) or ``denoiser`` (a diffusion model of the source data). A benchmark suite
      supplies what it has.
    - ``quick_options``: options for a quick build on a tiny model (tests, smoke runs), never a need.

    The values here are the cautious ones an unregistered subclass gets: it may change anything, and
    export refuses it.

    ``hparams`` holds the options that built the adapter, every option of ``from_model`` with its
    default filled in (as :func:`tta.method_options` declares them), for experiment trackers. Its
    builder sets it (``tta.wrap``, ``tta bench``, a ``from_model`` under ``checked_builder``).
    """

    uses_grad: ClassVar[bool] = False
    changes: ClassVar[Changes] = "all"
    exports: ClassVar[Exports] = "none"
    needs: ClassVar[frozenset[Need]] = frozenset()
    quick_options: ClassVar[Mapping[str, object]] = {}

    def __init__(
        self, model: nn.Module, *, steps: int = 1, episodic: bool = False, input_ndim: int | None = 4
    ) -> None:
        super().__init__()
        check_base_options_once(steps=steps, episodic=episodic, input_ndim=input_ndim)
        self.model = model.eval()
        self.steps = steps
        self.episodic = episodic
        self.input_ndim = input_ndim
        self.optimizers: list[torch.optim.Optimizer] = []
        self._frozen = False
        self.reset_point: Snapshot | None = None  # what reset() restores; set by snapshot()
        self._warned_batch_of_one = False
        self._reset_hooks: OrderedDict[int, Callable[[TTAMethod], None]] = OrderedDict()  # weak-referenceable
        # the options that built it, defaults filled (for experiment trackers); set by the builder
        self.hparams: dict[str, Any] = {}

    def adapt_step(self, x: Tensor) -> Tensor:
        """Run one adaptation step on ``x`` and return logits (each method documents which forward)."""
        raise NotImplementedError(f"{type(self).__name__} must implement adapt_step")

    def predict(self, x: Tensor) -> Tensor:
        """Return logits of the current state without adapting (used inside :meth:`frozen`)."""
        return self.model(x)

    def forward(self, x: Tensor) -> Tensor:
        """Predict on ``x`` and adapt on it: episodic reset, then ``steps`` adaptation steps.

        Thread-safe: concurrent calls are serialized, so each sees the state left by a whole previous
        call. A rejected batch (bad shape, dtype, device, NaN/Inf, empty) or a model that does not return
        logits ``(B, num_classes)`` raises before any state changes (episodic reset included). A batch
        refused during adaptation (the model fails, or its logits, loss or gradients are not finite)
        raises ``ValueError`` and leaves parameters, buffers, optimizer states and attributes as they were.

        The returned logits are detached: they carry no gradient. Adaptation runs on ``x.detach()``, so an
        ``x`` that requires grad (``x = preprocess(raw)`` with trainable modules) is never backpropagated
        into: the caller's modules get no ``.grad`` and the caller's graph stays usable for its own
        ``backward()``.
        """
        check_batch(x, self.input_ndim)
        with self._lock:
            check_against_model(self.model, x)
            if self._frozen:
                with torch.no_grad(), model_errors_explained(self, x), logits_checked(self.model):
                    return check_logits(self.predict(x), x.shape[0])
            return self._forward_locked(x)

    def _forward_locked(self, x: Tensor) -> Tensor:
        x = x.detach()  # adapt on the values only: the caller's graph is neither extended nor freed
        if self.uses_grad:
            check_grad_allowed(type(self).__name__)
        if self.episodic:
            self._restore()  # part of the step: reset hooks (checkpoint writes) are for resets of the stream
        if x.shape[0] == 1:
            self._warn_batch_of_one()
        # one step updates only after its checks (finite_step_); with more, a later step can be refused after
        # an earlier one updated, so the whole state is kept for the roll-back
        with rolled_back_on_error(self, x, self.optimizers, everything=self.steps > 1), logits_checked(self.model):
            with torch.enable_grad() if self.uses_grad else torch.no_grad():
                for _ in range(self.steps):
                    logits = self.adapt_step(x)
            check_finite_logits(type(self).__name__, check_logits(logits, x.shape[0]), x)
        return logits.detach()

    def batch_of_one_advice(self) -> str | None:
        """What to tell the user, once, when a batch of one image arrives; ``None`` when it is fine."""
        return batch_statistics_advice(type(self).__name__, self.model)

    def _warn_batch_of_one(self) -> None:
        advice = None if self._warned_batch_of_one else self.batch_of_one_advice()
        if advice is not None:
            self._warned_batch_of_one = True
            warn_at_caller(advice)

    def train(self, mode: bool = True) -> Self:
        """Set only this wrapper's flag: the model stays in ``eval()`` (dropout off), each method sets its modes."""
        if not isinstance(mode, bool):
            raise ValueError(f"training mode must be a bool, got {mode!r}")
        self.training = mode
        return self

    def snapshot(self) -> None:
        """Capture the current state (parameters, buffers, optimizer states) as the reset point."""
        self.reset_point = take_snapshot(self, self.optimizers)

    def reset(self) -> None:
        """Restore the state captured by :meth:`snapshot`, bit for bit, then run the reset hooks."""
        with self._lock:
            self._restore()
            for hook in list(self._reset_hooks.values()):
                hook(self)

    def _restore(self) -> None:
        if self.reset_point is None:
            raise RuntimeError(f"{type(self).__name__} has no snapshot: call self.snapshot() in __init__")
        restore_snapshot(self, self.optimizers, self.reset_point)

    def register_reset_hook(self, hook: Callable[[TTAMethod], None]) -> RemovableHandle:
        """Call ``hook(self)`` after every :meth:`reset` (not the per-batch reset of ``episodic=True``).

        A periodic checkpoint uses it to rewrite its file, so that it never keeps a state just discarded
        (e.g. by the collapse guard). Returns a handle whose ``remove()`` unregisters the hook.
        """
        handle = RemovableHandle(self._reset_hooks)
        self._reset_hooks[handle.id] = hook
        return handle

    def save_state(self, path: state.StateFile, *, relative_to_source: bool = False) -> None:
        """Write the full adaptation state to ``path`` atomically, or to a binary file object (see
        :func:`tta.state.save_state`)."""
        with self._lock:
            state.save_state(self, path, relative_to_source=relative_to_source)

    def load_state(self, path: state.StateFile) -> None:
        """Restore a state written by :meth:`save_state` from a path or a binary file object, bit for bit
        (see :func:`tta.state.load_state`)."""
        with self._lock:
            state.load_state(self, path)

    @property
    def is_adapting(self) -> bool:
        """Whether ``forward`` adapts now (``False`` inside :meth:`frozen`)."""
        return not self._frozen

    @contextmanager
    def frozen(self) -> Iterator[TTAMethod]:
        """Within the block, ``forward`` predicts and changes nothing; the block holds the lock (others wait)."""
        with self._lock:
            previous, self._frozen = self._frozen, True
            try:
                with freeze_statistics(self.model):
                    yield self
            finally:
                self._frozen = previous

    @classmethod
    def from_model(cls, model: nn.Module, *args: Any, **kwargs: Any) -> TTAMethod:
        """Build the method on ``model`` with its standard recipe and options (subclasses narrow the signature)."""
        raise NotImplementedError(f"{cls.__name__} must implement from_model")
