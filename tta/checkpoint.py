"""Periodic checkpoints of an adapter's full state, and resuming from one after a restart.

A :class:`PeriodicCheckpoint` is attached to a method as a forward hook: after every ``every``
adapted batches it writes the complete adaptation state with :func:`tta.state.save_state`, which
writes a temporary file and renames it, so a crash at any moment leaves either the previous
checkpoint or the new one on disk, never a partial file. Only batches that were adapted count:
batches rejected with an error and predictions made inside ``adapter.frozen()`` do not.

On restart, :func:`resume` loads the newest checkpoint into a freshly built adapter (or keeps the
source state when there is none yet), so one line serves both the first start and every restart::

    adapted = tta.wrap(model, "tent", checkpoint="state.pt", checkpoint_every=1000, resume="state.pt")
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

from tta.files import check_writable_path, remove_stale_temporaries
from tta.base import TTAMethod
from tta.guard import CollapseGuard

__all__ = ["Attachment", "PeriodicCheckpoint", "resume"]

logger = logging.getLogger(__name__)


class Attachment:
    """The hooks by which a :class:`PeriodicCheckpoint` follows an adapter; :meth:`remove` detaches it."""

    def __init__(self, *handles: RemovableHandle) -> None:
        self.handles = handles

    def remove(self) -> None:
        """Stop checkpointing: remove the forward and reset hooks."""
        for handle in self.handles:
            handle.remove()


class PeriodicCheckpoint:
    """Write an adapter's full state to ``path`` atomically after every ``every`` adapted batches.

    The count is in batches (calls of ``forward`` that adapted), not images: the state changes once
    per batch whatever its size, and a batch is the unit a restart can lose. The counter lives in
    this object, not in the saved state, so after a restart it starts again from zero.

    A periodic write that fails (disk full, folder removed) never costs the batch its prediction:
    the error is logged with ``logger.error``, counted in :attr:`failures`, and the next write
    tries again. Find the object of a wrapper with :meth:`of`.

    Args:
        path: The checkpoint file; written by :func:`tta.state.save_state` (write, then rename).
        every: Batches between two writes, at least 1.

    Raises:
        ValueError: if ``every`` is below 1, or ``path`` is a folder, empty, or lies under a file.
    """

    def __init__(self, path: str | os.PathLike[str], every: int = 1000) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"checkpoint_every must be a whole number of batches >= 1, got {every!r}")
        self.path = check_writable_path(path)
        for leftover in remove_stale_temporaries(self.path):  # a killed process's partial write
            logger.warning("removed %s, left by a checkpoint write that was killed", leftover)
        self.every = every
        self.batches = 0  # adapted batches seen since this object was attached
        self.writes = 0
        self.failures = 0  # periodic writes that raised (logged); the adapter kept its prediction
        self.enabled = True

    def __deepcopy__(self, memo: dict[int, Any]) -> PeriodicCheckpoint:
        """A copied adapter does not checkpoint: two adapters writing one file would overwrite each other.

        Attach a new :class:`PeriodicCheckpoint` with its own path to the copy to checkpoint it.
        """
        copied = PeriodicCheckpoint(self.path, self.every)
        copied.enabled = False
        logger.warning("a copy of an adapter checkpointed to %s does not checkpoint; attach its own "
                       "PeriodicCheckpoint with another path", self.path)
        return copied

    def attach(self, adapter: TTAMethod) -> Attachment:
        """Start checkpointing ``adapter``: every ``every`` batches, and after every ``reset()`` (so the file
        never keeps a state just discarded, e.g. by the collapse guard). ``.remove()`` on the result stops it.
        """
        if not isinstance(adapter, TTAMethod):
            raise TypeError(f"PeriodicCheckpoint attaches to a tta method, got {type(adapter).__name__}")
        return Attachment(adapter.register_forward_hook(self._after_forward), adapter.register_reset_hook(self.write_now))

    def _after_forward(self, adapter: TTAMethod, args: tuple[Any, ...], output: Any) -> None:
        # Runs only after a forward that returned; a rejected batch raised before reaching here.
        with adapter._lock:  # count and save as one step, between two whole forwards of other threads
            if not self.enabled or not adapter.is_adapting:
                return
            self.batches += 1
            if self.batches % self.every == 0:
                self._save_or_log(adapter)

    def write_now(self, adapter: TTAMethod) -> None:
        """Write ``adapter``'s state now, logging and counting a failure (after every reset of ``adapter``)."""
        if self.enabled:
            with adapter._lock:
                self._save_or_log(adapter)

    def _save_or_log(self, adapter: TTAMethod) -> None:
        try:
            self.save(adapter)
        except Exception as error:  # any failure: the batch's logits must still reach the caller
            self.failures += 1
            logger.error("checkpoint write to %s failed after %d batches (%d failure(s) so far); adaptation "
                         "goes on and the next write tries again: %s", self.path, self.batches, self.failures, error)

    @staticmethod
    def of(adapted: nn.Module) -> PeriodicCheckpoint | None:
        """Return the checkpoint attached to ``adapted`` (a method, or a guard around one), or ``None``.

        Example: ``PeriodicCheckpoint.of(tta.wrap(model, "tent", checkpoint="s.pt")).failures``.
        """
        adapter = adapted.adapter if isinstance(adapted, CollapseGuard) else adapted
        owners = (getattr(hook, "__self__", None) for hook in adapter._forward_hooks.values())
        return next((owner for owner in owners if isinstance(owner, PeriodicCheckpoint)), None)

    def save(self, adapter: TTAMethod) -> Path:
        """Write ``adapter``'s state now (also called every ``every`` batches); returns the path."""
        adapter.save_state(self.path)
        path = self.path
        self.writes += 1
        logger.debug("checkpoint %d written to %s after %d batches", self.writes, path, self.batches)
        return path


def resume(adapter: TTAMethod, path: str | os.PathLike[str]) -> bool:
    """Load the checkpoint at ``path`` into ``adapter`` if there is one; returns whether it did.

    With no file at ``path`` (the first start) the adapter keeps its source state and a message is
    logged. A file that exists but is not a state of this method and model raises, so a damaged or
    foreign checkpoint is never silently ignored (nor loaded: the file's digest is checked first).

    Raises:
        ValueError: the file is damaged, or not an adaptation state of this method, its settings and
            architecture (see :func:`tta.state.load_state`).
    """
    path = Path(path)
    if not path.exists():
        logger.info("no checkpoint at %s yet: starting from the source model", path)  # a first start is normal
        return False
    adapter.load_state(path)
    logger.info("resumed adaptation state from %s", path)
    return True
