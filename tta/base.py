"""TTAMethod: the template every adaptation method fills in (adapt_step), with exact snapshot/reset."""

from __future__ import annotations

import copy
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from adapters_bn import freeze_statistics, iter_adaptive

__all__ = ["TTAMethod", "check_batch"]


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
        raise ValueError(f"expected a {ndim}-D batch (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("empty batch: nothing to predict or adapt on")
    if not torch.isfinite(x).all():
        raise ValueError("batch contains NaN or Inf values; refusing to adapt on it")


class TTAMethod(nn.Module):
    """Base of all methods: ``forward`` predicts and adapts, ``reset`` restores the source state exactly.

    Subclasses implement :meth:`adapt_step` (one update on ``x``, returning logits), register their
    optimizers in ``self.optimizers`` and call :meth:`snapshot` at the end of ``__init__``. All state
    lives in parameters, buffers and optimizer state, so the snapshot is complete. The wrapped model
    is put in ``eval()`` (dropout off); normalization modes are set explicitly by each method.
    """

    uses_grad: ClassVar[bool] = False

    def __init__(
        self, model: nn.Module, *, steps: int = 1, episodic: bool = False, input_ndim: int | None = 4
    ) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.model = model.eval()
        self.steps = steps
        self.episodic = episodic
        self.input_ndim = input_ndim
        self.optimizers: list[torch.optim.Optimizer] = []
        self._frozen = False
        self._snapshot: tuple[dict[str, Tensor], list[dict[str, Any]]] | None = None
        self._lock = threading.RLock()  # serializes adaptation across threads
        self._warned_batch_of_one = False

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state.pop("_lock", None)  # locks cannot be copied or pickled; a copy gets its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._lock = threading.RLock()

    def adapt_step(self, x: Tensor) -> Tensor:
        """Run one adaptation step on ``x`` and return logits (each method documents which forward)."""
        raise NotImplementedError(f"{type(self).__name__} must implement adapt_step")

    def predict(self, x: Tensor) -> Tensor:
        """Return logits of the current state without adapting (used inside :meth:`frozen`)."""
        return self.model(x)

    def forward(self, x: Tensor) -> Tensor:
        """Predict on ``x`` and adapt on it: episodic reset, then ``steps`` adaptation steps.

        Thread-safe: concurrent calls are serialized, so each sees the state left by a whole previous
        call. A rejected batch (bad shape, dtype, NaN/Inf, empty) raises before any state changes.
        """
        check_batch(x, self.input_ndim)
        with self._lock:
            return self._forward_locked(x)

    def _forward_locked(self, x: Tensor) -> Tensor:
        if self._frozen:
            with torch.no_grad():
                return self.predict(x)
        if self.episodic:
            self.reset()
        if self.uses_grad and torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{type(self).__name__} adapts by gradient steps, which torch.inference_mode() forbids; "
                "call it under torch.no_grad() or no context instead, or use adapter.frozen() to predict only"
            )
        self._check_against_model(x)
        if x.shape[0] == 1:
            self._warn_batch_of_one()
        saved = [buffer.clone() for buffer in self.buffers()]
        try:
            with torch.enable_grad() if self.uses_grad else torch.no_grad():
                for _ in range(self.steps):
                    logits = self.adapt_step(x)
            if not torch.isfinite(logits).all():
                raise ValueError(
                    f"{type(self).__name__}: the model's logits are not finite on this batch (values too large "
                    f"for {x.dtype}?); the batch was rejected and nothing was adapted"
                )
        except Exception as error:
            with torch.no_grad():  # a batch rejected half-way must leave no statistics behind
                for buffer, value in zip(self.buffers(), saved):
                    buffer.copy_(value)
            if type(error) is RuntimeError:  # torch's own message, from deep inside the model
                raise ValueError(
                    f"{type(self).__name__}: the model rejected a batch of shape {tuple(x.shape)} and dtype "
                    f"{x.dtype}; nothing was adapted. The model said: {error}"
                ) from error
            raise
        return logits.detach()

    def _check_against_model(self, x: Tensor) -> None:
        param = next(self.model.parameters(), None)
        if param is None:
            return
        if param.device != x.device:
            raise ValueError(f"batch is on {x.device} but the model is on {param.device}; move one with .to()")
        if x.dtype != param.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"batch is {x.dtype} but the model's parameters are {param.dtype}; convert with "
                f"x.to({param.dtype}) or call inside torch.autocast"
            )

    def batch_of_one_advice(self) -> str | None:
        """What to tell the user, once, when a batch of one image arrives; ``None`` when it is fine."""
        if not any(layer.stats == "batch" for _, layer in iter_adaptive(self.model)):
            return None
        return (f"{type(self).__name__} normalizes with the statistics of a batch of 1 image, which are too noisy "
                "to adapt well (a batch-1 stream can end far worse than the source model); build it with "
                "stats='ema' for batch-size-1 streams (docs/production.md)")

    def _warn_batch_of_one(self) -> None:
        if self._warned_batch_of_one:
            return
        advice = self.batch_of_one_advice()
        if advice is not None:
            self._warned_batch_of_one = True
            warnings.warn(advice, RuntimeWarning, stacklevel=4)

    def snapshot(self) -> None:
        """Capture the current state (parameters, buffers, optimizer states) as the reset point."""
        state = {k: v.detach().clone() for k, v in self.state_dict(keep_vars=True).items()}
        self._snapshot = (state, [copy.deepcopy(opt.state_dict()) for opt in self.optimizers])

    def reset(self) -> None:
        """Restore the state captured by :meth:`snapshot`, bit for bit."""
        if self._snapshot is None:
            raise RuntimeError(f"{type(self).__name__} has no snapshot: call self.snapshot() in __init__")
        with self._lock:
            state, optimizer_states = self._snapshot
            self.load_state_dict(state)
            for opt, opt_state in zip(self.optimizers, optimizer_states):
                opt.load_state_dict(copy.deepcopy(opt_state))  # deep copy: the optimizer would alias it

    def save_state(self, path: str | os.PathLike[str]) -> None:
        """Write the full adaptation state to ``path`` atomically (see :func:`tta.state.save_state`)."""
        from tta.state import save_state

        with self._lock:
            save_state(self, path)

    def load_state(self, path: str | os.PathLike[str]) -> None:
        """Restore a state written by :meth:`save_state`, bit for bit (see :func:`tta.state.load_state`)."""
        from tta.state import load_state

        with self._lock:
            load_state(self, path)

    @property
    def is_adapting(self) -> bool:
        """Whether ``forward`` adapts now (``False`` inside :meth:`frozen`)."""
        return not self._frozen

    @contextmanager
    def frozen(self) -> Iterator[TTAMethod]:
        """Within the block, ``forward`` predicts with the current state and changes nothing."""
        previous, self._frozen = self._frozen, True
        try:
            with freeze_statistics(self.model):
                yield self
        finally:
            self._frozen = previous

    @classmethod
    def from_model(cls, model: nn.Module, *args: Any, **kwargs: Any) -> TTAMethod:
        """Build the method on ``model`` with its standard recipe.

        Each method defines its own keyword options; ``*args, **kwargs`` is how type checkers are
        told that a subclass may narrow this signature (the registry checks options at run time).
        """
        raise NotImplementedError(f"{cls.__name__} must implement from_model")
