"""TTAMethod: the template every adaptation method fills in (adapt_step), with exact snapshot/reset."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Self

import torch
from torch import Tensor, nn

from adapters_bn import freeze_statistics
from tta import state
from tta._caller import warn_at_caller
from tta.inputs import batch_statistics_advice, check_against_model, check_batch, check_grad_allowed
from tta.locked import LockedModule
from tta.options import check_base_options
from tta.outputs import check_finite_logits, check_logits, logits_checked
from tta.rollback import model_errors_explained, rolled_back_on_error
from tta.snapshot import Snapshot, restore_snapshot, take_snapshot

__all__ = ["TTAMethod", "check_batch"]  # check_batch: re-exported from tta.inputs


class TTAMethod(LockedModule):
    """Base of all methods: ``forward`` predicts and adapts, ``reset`` restores the source state exactly.

    Subclasses implement :meth:`adapt_step` (one update on ``x``, returning logits), register their
    optimizers in ``self.optimizers`` and call :meth:`snapshot` at the end of ``__init__``. ``self._lock``
    (:class:`~tta.locked.LockedModule`) serializes adaptation across threads. All state
    lives in parameters, buffers and optimizer state, so the snapshot is complete. The wrapped model
    is put in ``eval()`` (dropout off) and stays there: ``train()`` on the wrapper does not recurse into
    it. Normalization modes are set explicitly by each method.
    """

    uses_grad: ClassVar[bool] = False

    def __init__(
        self, model: nn.Module, *, steps: int = 1, episodic: bool = False, input_ndim: int | None = 4
    ) -> None:
        super().__init__()
        check_base_options(steps=steps, episodic=episodic, input_ndim=input_ndim)
        self.model = model.eval()
        self.steps = steps
        self.episodic = episodic
        self.input_ndim = input_ndim
        self.optimizers: list[torch.optim.Optimizer] = []
        self._frozen = False
        self._snapshot: Snapshot | None = None
        self._warned_batch_of_one = False

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
            self.reset()
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
        self._snapshot = take_snapshot(self, self.optimizers)

    def reset(self) -> None:
        """Restore the state captured by :meth:`snapshot`, bit for bit."""
        if self._snapshot is None:
            raise RuntimeError(f"{type(self).__name__} has no snapshot: call self.snapshot() in __init__")
        with self._lock:
            restore_snapshot(self, self.optimizers, self._snapshot)

    def save_state(self, path: str | os.PathLike[str], *, relative_to_source: bool = False) -> None:
        """Write the full adaptation state to ``path`` atomically (see :func:`tta.state.save_state`)."""
        with self._lock:
            state.save_state(self, path, relative_to_source=relative_to_source)

    def load_state(self, path: str | os.PathLike[str]) -> None:
        """Restore a state written by :meth:`save_state`, bit for bit (see :func:`tta.state.load_state`)."""
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
