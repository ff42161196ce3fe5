"""All-or-nothing adaptation steps: a rejected batch leaves the method exactly as it was.

Two halves keep the common path cheap. :func:`finite_step_` (the one update every gradient method
takes) checks the loss, the logits it will return and the gradients *before* the optimizer step, so
a refused batch never reaches the parameters, the optimizer state or what follows the step (a
teacher's EMA). :func:`rolled_back_on_error` then restores what a forward changes before those checks
run (buffers: BN statistics, counters) and the method's plain attributes; with several steps per batch
an earlier step has already updated when a later one is refused, so it also restores the full state.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from tta.outputs import check_logits
from tta.snapshot import Snapshot, restore_snapshot, take_snapshot

__all__ = ["finite_step_", "model_errors_explained", "rolled_back_on_error"]

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
