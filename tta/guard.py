"""CollapseGuard: watch label-free signals of an adapting method and fall back to the source model on collapse.

Entropy-minimizing methods can collapse on long or badly matched streams: predictions drift to a
few classes with high confidence and the error climbs above the unadapted model's (Boudiaf et al.,
CVPR 2022, show it for Tent and others). The guard runs the frozen source model on each batch too
and compares the two predictions' class diversity (entropy of the batch's mean prediction): when
the adapted diversity falls below ``min_diversity_ratio`` times the source's, the batch is answered
with the source predictions and the policy acts. Comparing with the source on the same batch keeps
the guard quiet on streams that are legitimately narrow (class-sorted streams narrow both).
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from tta.base import Changes, Exports, Need, TTAMethod

__all__ = ["CollapseGuard", "GuardEvent", "GuardPolicy", "marginal_entropy"]

logger = logging.getLogger(__name__)
GuardPolicy = Literal["reset", "fallback", "freeze"]


def marginal_entropy(logits: Tensor) -> Tensor:
    """Return the entropy (nats) of the batch's mean predicted distribution: 0 when all predict one class."""
    probs = logits.softmax(1).mean(0)
    return -(probs * probs.clamp_min(1e-12).log()).sum()


@dataclass(frozen=True)
class GuardEvent:
    """One detected collapse: which batch, the two diversities, and what the guard did."""

    batch: int
    adapted_diversity: float
    source_diversity: float
    action: GuardPolicy


class CollapseGuard(nn.Module):
    """Wrap a method so a collapse is answered with source predictions and a policy.

    Args:
        adapter: The adapting method.
        source: The unadapted model (a separate copy, kept frozen in ``eval()``).
        policy: ``reset`` (default): answer with the source and reset the method to source;
            ``fallback``: answer with the source, keep adapting; ``freeze``: answer with the source,
            reset, and stop adapting until :meth:`resume`.
        min_diversity_ratio: Collapse when adapted diversity < ratio x source diversity. The default
            0.7 was chosen on a Fashion-MNIST-C continual stream where Tent (lr 0.05) collapses: 0.5
            reacted too late (error stayed above source), 0.7 kept it at or below source
            (``tests/tta/test_guard.py``). Healthy adaptation usually raises diversity over the source's.

    Returns (forward): the method's logits, or the source's on a batch flagged as collapsed.

    The guard keeps the method's interface: ``model``, ``optimizers``, ``hparams``, the declarations
    (``changes``, ``exports``, ``needs``, ``uses_grad``, ``quick_options``), ``reset``, ``frozen``,
    ``save_state``, ``load_state``, ``register_reset_hook``, and any other attribute of the method
    (e.g. Tent's ``optimizer``) read through the guard.
    """

    def __init__(
        self, adapter: TTAMethod, source: nn.Module, *, policy: GuardPolicy = "reset", min_diversity_ratio: float = 0.7
    ) -> None:
        super().__init__()
        self.check_options(policy)
        if not 0.0 < min_diversity_ratio < 1.0:
            raise ValueError(f"min_diversity_ratio must be in (0, 1), got {min_diversity_ratio}")
        self.adapter = adapter
        self.source = source.eval().requires_grad_(False)
        self.policy: GuardPolicy = policy
        self.min_diversity_ratio = min_diversity_ratio
        self.events: list[GuardEvent] = []
        self.batches = 0
        self.stopped = False
        self._frozen = False

    @staticmethod
    def check_options(policy: object) -> GuardPolicy:
        """Return ``policy`` if it names a guard policy, else raise ``ValueError`` (before anything is built)."""
        if policy not in ("reset", "fallback", "freeze"):
            raise ValueError(f"unknown guard policy {policy!r}; choose 'reset', 'fallback' or 'freeze'")
        return policy

    def forward(self, x: Tensor) -> Tensor:
        """Predict and adapt with the method, unless its predictions have collapsed on this batch.

        Thread-safe: the whole step (adapt, compare with the source, act) holds the method's lock, so
        concurrent calls give the results of some serial order of the same calls, resets included.
        """
        with self.adapter._lock:  # re-entrant: the method's own forward and reset take it again
            return self._step(x)

    def _step(self, x: Tensor) -> Tensor:
        if self._frozen:  # inside frozen(): the method predicts, the guard neither counts nor acts
            return self.adapter(x)
        if self.stopped:
            with self.adapter.frozen():
                return self.adapter(x)
        logits = self.adapter(x)
        with torch.no_grad():
            source_logits = self.source(x)
        adapted_div, source_div = marginal_entropy(logits).item(), marginal_entropy(source_logits).item()
        self.batches += 1
        if not math.isfinite(source_div):  # the source cannot score this batch (overflow): nothing to compare with
            return logits
        if math.isfinite(adapted_div) and adapted_div >= self.min_diversity_ratio * source_div:
            return logits
        self._act(adapted_div, source_div)
        return source_logits

    def _act(self, adapted_div: float, source_div: float) -> None:
        event = GuardEvent(self.batches - 1, adapted_div, source_div, self.policy)
        self.events.append(event)
        logger.warning("collapse detected at batch %d (diversity %.3f vs source %.3f): %s",
                       event.batch, adapted_div, source_div, self.policy)
        if self.policy in ("reset", "freeze"):
            self.adapter.reset()  # its reset hooks rewrite an attached checkpoint: the collapsed state must not stay
        self.stopped = self.policy == "freeze"

    def train(self, mode: bool = True) -> CollapseGuard:
        """Set the guard's and the method's flags only: the source copy stays in ``eval()`` (as in TTAMethod)."""
        if not isinstance(mode, bool):
            raise ValueError(f"training mode must be a bool, got {mode!r}")
        self.training = mode
        self.adapter.train(mode)
        return self

    def resume(self) -> None:
        """Allow adaptation again after a ``freeze``."""
        with self.adapter._lock:
            self.stopped = False

    def reset(self) -> None:
        """Reset the method (the event log is kept)."""
        with self.adapter._lock:
            self.adapter.reset()
            self.stopped = False

    @contextmanager
    def frozen(self) -> Iterator[CollapseGuard]:
        """Predict with the method's current state without adapting; the guard neither counts nor acts."""
        with self.adapter.frozen():
            previous, self._frozen = self._frozen, True
            try:
                yield self
            finally:
                self._frozen = previous

    def save_state(self, path: str | os.PathLike[str], *, relative_to_source: bool = False) -> None:
        """Save the method's adaptation state (see :meth:`tta.TTAMethod.save_state`)."""
        self.adapter.save_state(path, relative_to_source=relative_to_source)

    def load_state(self, path: str | os.PathLike[str]) -> None:
        """Load the method's adaptation state (see :meth:`tta.TTAMethod.load_state`)."""
        self.adapter.load_state(path)

    def register_reset_hook(self, hook: Callable[[TTAMethod], None]) -> RemovableHandle:
        """Call ``hook(method)`` after every reset of the method, the guard's included (see TTAMethod)."""
        return self.adapter.register_reset_hook(hook)

    @property
    def model(self) -> nn.Module:
        """The adapted model (the method's ``model``): ``guarded.model.compile()`` compiles it in place."""
        return self.adapter.model

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The method's optimizers."""
        return self.adapter.optimizers

    @property
    def hparams(self) -> dict[str, Any]:
        """The options that built the method, defaults filled (see :class:`tta.TTAMethod`)."""
        return self.adapter.hparams

    @property
    def is_adapting(self) -> bool:
        """Whether ``forward`` adapts now: not inside :meth:`frozen`, nor after a ``freeze`` collapse."""
        return self.adapter.is_adapting and not self._frozen and not self.stopped

    @property
    def changes(self) -> Changes:
        """The method's declaration (see :class:`tta.TTAMethod`)."""
        return self.adapter.changes

    @property
    def exports(self) -> Exports:
        """The method's declaration (see :class:`tta.TTAMethod`)."""
        return self.adapter.exports

    @property
    def needs(self) -> frozenset[Need]:
        """The method's declaration (see :class:`tta.TTAMethod`)."""
        return self.adapter.needs

    @property
    def uses_grad(self) -> bool:
        """The method's declaration (see :class:`tta.TTAMethod`)."""
        return self.adapter.uses_grad

    @property
    def quick_options(self) -> Mapping[str, object]:
        """The method's declaration (see :class:`tta.TTAMethod`)."""
        return self.adapter.quick_options

    def __getattr__(self, name: str) -> Any:
        """Read other attributes (a method's own, e.g. Tent's ``optimizer``) from the method."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            adapter = self.__dict__.get("_modules", {}).get("adapter")
            if adapter is None or name.startswith("__"):
                raise
            return getattr(adapter, name)

    @classmethod
    def around(cls, adapter: TTAMethod, source: nn.Module, **kwargs: object) -> CollapseGuard:
        """Guard ``adapter`` with a private frozen copy of ``source``."""
        return cls(adapter, copy.deepcopy(source), **kwargs)  # type: ignore[arg-type]
