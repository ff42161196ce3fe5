"""LAME: Laplacian-regularized maximum likelihood estimation on the outputs of a frozen model.

The model is never changed. For each batch, LAME takes the frozen model's class probabilities
``p`` and its penultimate features, builds an affinity ``W`` between the batch's samples from the
L2-normalized features, and finds assignments ``Y`` (one probability row per sample) minimizing

    E(Y) = sum_i KL(y_i || p_i) - lambda * sum_ij W_ij y_i . y_j,

i.e. likelihood under the model plus a Laplacian term that pulls neighbouring samples towards the
same class (paper, eq. 3-4). The concave-convex procedure bounds the Laplacian term linearly and
gives the fixed-point update ``y_i <- softmax(log p_i + lambda * sum_j W_ij y_j)`` (paper, eq. 8),
iterated from ``Y = p`` until the relative change of the bound ``E`` is at most ``tol``. Because it
only acts on outputs and needs no gradient, it is safe on non-i.i.d. (e.g. class-sorted) streams,
where statistics- and gradient-based methods degrade.

Returned logits: ``log(Y)`` of the corrected probabilities (``softmax`` of them gives ``Y`` back;
``argmax`` is the LAME prediction). The frozen model's own logits are not returned.

Reference: Boudiaf et al., "Parameter-free Online Test-time Adaptation", CVPR 2022 (arXiv:2201.05718).
Adapted from: the paper; behaviour checked against fiveai/LAME ``src/adaptation/lame.py`` (CC BY-NC-SA
4.0: read, not copied).

Differences from the reference implementation:
- Default affinity ``knn`` (the paper's); the official configuration's default is ``rbf``.
- Penultimate features come from :func:`tta.heads.split_classifier` (timm, torchvision, or a named
  head) instead of the repository's own backbone classes.
- Pairwise distances use ``torch.cdist`` rather than an ``(N, N, d)`` difference tensor (same
  values, less memory).
- The RBF affinity's bandwidth is the mean distance to the ``knn``-th nearest sample (counting the
  sample itself, as the official code does); like the official code, no separate sigma is taken.
- Nothing is logged per batch (the official code logs the iteration count).
- A batch of one image has no neighbours, so the Laplacian term is empty and LAME is the frozen
  model: such a batch returns the frozen model's log-probabilities and warns once per adapter
  (the paper and official code define LAME on batches only; no window of past samples is kept).
- The affinity and the optimization run in float32 with autocast off, whatever the model's or the
  autocast dtype (``cdist`` has no bfloat16 kernel, and bfloat16 energies stall the tolerance
  test); the result is cast back to the dtype of the model's logits.
- The RBF bandwidth is floored at 1e-12, so a batch of identical features (sigma = 0) gives an
  all-ones kernel instead of NaN.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tta.base import TTAMethod
from tta.heads import split_classifier
from tta.checks import (
    check_base_options,
    check_bool,
    check_choice,
    check_int,
    check_non_negative,
    check_optional_str,
    checked_builder,
)
from tta.registry import register_adapter

__all__ = [
    "LAME",
    "LAMESettings",
    "AFFINITIES",
    "Affinity",
    "knn_affinity",
    "rbf_affinity",
    "linear_affinity",
    "affinity_matrix",
    "entropy_energy",
    "laplacian_optimization",
]

Affinity = Literal["knn", "rbf", "linear"]
AFFINITIES: tuple[str, ...] = get_args(Affinity)
_EPS_LOG = 1e-10  # unary = -log(p + 1e-10), as in the official code
_EPS_ENTROPY = 1e-20  # Y log Y with Y clipped at 1e-20, as in the official code


def _distances(features: Tensor) -> Tensor:
    return torch.cdist(features, features, compute_mode="donot_use_mm_for_euclid_dist")


def knn_affinity(features: Tensor, knn: int = 5) -> Tensor:
    """Return the binary kNN affinity: ``W_ij = 1`` iff ``j`` is among the ``knn`` nearest others of ``i``.

    Not symmetric. The nearest point (the sample itself) is skipped, as in the official code.

    Args:
        features: Sample features ``(N, D)`` (LAME passes L2-normalized ones).
        knn: Neighbours per sample; fewer when the batch is smaller.

    Returns:
        ``(N, N)`` matrix of zeros and ones.
    """
    n = features.shape[0]
    neighbours = _distances(features).topk(min(knn + 1, n), dim=-1, largest=False).indices[:, 1:]
    return torch.zeros(n, n, device=features.device, dtype=features.dtype).scatter_(-1, neighbours, 1.0)


def rbf_affinity(features: Tensor, knn: int = 5) -> Tensor:
    """Return the Gaussian affinity ``exp(-d_ij^2 / (2 sigma^2))``, sigma = mean distance to the ``knn``-th nearest.

    The nearest of the ``knn`` counts the sample itself (distance 0), as the official code does.
    """
    dist = _distances(features)
    kth = dist.topk(min(knn, features.shape[0]), dim=-1, largest=False).values[:, -1]
    sigma = kth.mean().clamp_min(1e-12)  # identical features: sigma 0 would give 0/0
    return torch.exp(-dist**2 / (2 * sigma**2))


def linear_affinity(features: Tensor) -> Tensor:
    """Return the linear affinity ``features @ features.T`` (cosine similarity for normalized features)."""
    return features @ features.t()


def affinity_matrix(features: Tensor, kind: Affinity = "knn", *, knn: int = 5, symmetrize: bool = False) -> Tensor:
    """Return the ``(N, N)`` affinity of ``kind`` over ``features``, optionally ``(W + W.T) / 2``."""
    if kind == "knn":
        kernel = knn_affinity(features, knn)
    elif kind == "rbf":
        kernel = rbf_affinity(features, knn)
    elif kind == "linear":
        kernel = linear_affinity(features)
    else:
        raise ValueError(f"unknown affinity {kind!r}; choose 'knn', 'rbf' or 'linear'")
    return 0.5 * (kernel + kernel.t()) if symmetrize else kernel


def entropy_energy(assignments: Tensor, unary: Tensor, pairwise: Tensor, bound_lambda: float) -> Tensor:
    """Return the bound ``sum(unary * Y - lambda * pairwise * Y + Y log Y)`` minimized by each LAME update."""
    y = assignments
    return (unary * y - bound_lambda * pairwise * y + y * torch.log(y.clamp_min(_EPS_ENTROPY))).sum()


def laplacian_optimization(
    unary: Tensor, kernel: Tensor, *, bound_lambda: float = 1.0, max_steps: int = 100, tol: float = 1e-8
) -> Tensor:
    """Return the LAME assignments: concave-convex iterations of ``Y = softmax(-unary + lambda * W Y)``.

    Starts from ``softmax(-unary)`` and stops after ``max_steps`` updates or, from the third update on,
    when the energy changes by at most ``tol`` times its previous value (the official schedule).

    Args:
        unary: ``-log p`` of the frozen model, ``(N, K)``.
        kernel: Affinity ``W``, ``(N, N)``.
        bound_lambda: Weight of the Laplacian term (lambda; 1 in the paper).
        max_steps: Iteration cap (100 officially).
        tol: Relative energy tolerance (1e-8 officially).

    Returns:
        Probabilities ``Y``, ``(N, K)``, rows summing to one.

    Example:
        >>> p = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
        >>> torch.allclose(laplacian_optimization(-p.log(), torch.zeros(2, 2)), p)
        True
    """
    y = (-unary).softmax(-1)
    previous = float("inf")
    for step in range(max_steps):
        pairwise = bound_lambda * kernel.matmul(y)
        y = (-unary + pairwise).softmax(-1)
        energy = entropy_energy(y, unary, pairwise, bound_lambda).item()
        if step > 1 and abs(energy - previous) <= tol * abs(previous):
            break
        previous = energy
    return y


def _check_options(options: Mapping[str, Any]) -> None:
    """Raise a clear ``TypeError``/``ValueError`` for a LAME option out of its type or range (the one check)."""
    check_choice("affinity", options["affinity"], AFFINITIES)
    check_int("knn", options["knn"], minimum=1)  # an int: it is a ``topk`` count
    check_bool("symmetrize", options["symmetrize"])
    check_non_negative("bound_lambda", options["bound_lambda"])  # 0: no Laplacian term, the frozen model's prediction
    check_int("max_steps", options["max_steps"], minimum=1)
    check_non_negative("tol", options["tol"])
    check_optional_str("head", options["head"])
    check_base_options(episodic=options["episodic"], input_ndim=options["input_ndim"])


@dataclass(frozen=True)
class LAMESettings:
    """The Laplacian correction's settings, as :meth:`LAME.from_model` declares, defaults and checks them."""

    affinity: Affinity
    knn: int
    symmetrize: bool
    bound_lambda: float
    max_steps: int
    tol: float


@register_adapter("lame")
class LAME(TTAMethod):
    """LAME on a frozen classifier: corrects each batch's probabilities with a Laplacian over its features.

    Returns ``log`` of the corrected probabilities (see the module docstring). The model, its
    parameters and its statistics never change.
    """

    changes = "nothing"
    exports = "none"  # an output correction: export_onnx(lame=LameGraph(...)) appends it explicitly

    def __init__(
        self, model: nn.Module, settings: LAMESettings, *, head: str | None = None, episodic: bool = False,
        input_ndim: int | None = 4,
    ) -> None:
        super().__init__(model, episodic=episodic, input_ndim=input_ndim)
        features, classifier = split_classifier(self.model, head)
        self._split = (features, classifier)  # tuple: both share the model's parameters, not registered twice
        # plain attributes: a saved state records them as the method's settings
        self.affinity, self.knn, self.symmetrize = settings.affinity, settings.knn, settings.symmetrize
        self.bound_lambda, self.max_steps, self.tol = settings.bound_lambda, settings.max_steps, settings.tol
        self.snapshot()

    def adapt_step(self, x: Tensor) -> Tensor:
        """Objective and update: Laplacian correction of this batch's outputs; returns ``log Y``.

        A batch of one image returns the frozen model's log-probabilities (no neighbours to use).
        """
        features, classifier = self._split
        feats = features(x).flatten(1)
        logits = classifier(feats)
        with torch.autocast(x.device.type, enabled=False):
            if x.shape[0] < 2:  # TTAMethod.forward warned (batch_of_one_advice)
                return logits.float().log_softmax(-1).to(logits.dtype)
            feats, probs = feats.float(), logits.float().softmax(-1)
            unary = -torch.log(probs + _EPS_LOG)
            kernel = affinity_matrix(F.normalize(feats, p=2, dim=-1), self.affinity, knn=self.knn,
                                     symmetrize=self.symmetrize)
            y = laplacian_optimization(unary, kernel, bound_lambda=self.bound_lambda, max_steps=self.max_steps,
                                       tol=self.tol)
            return torch.log(y.clamp_min(_EPS_ENTROPY)).to(logits.dtype)

    def batch_of_one_advice(self) -> str:
        """LAME has no neighbours in a batch of one image: it returns the frozen model's prediction."""
        return ("LAME got a batch of 1 image: with no neighbours it returns the frozen model's prediction "
                "unchanged. Batch requests (LAME needs several samples per batch) to benefit from it.")

    @classmethod
    @checked_builder(_check_options)
    def from_model(
        cls,
        model: nn.Module,
        *,
        affinity: Affinity = "knn",
        knn: int = 5,
        symmetrize: bool = False,
        bound_lambda: float = 1.0,
        max_steps: int = 100,
        tol: float = 1e-8,
        head: str | None = None,
        episodic: bool = False,
        input_ndim: int | None = 4,
    ) -> LAME:
        """Wrap ``model`` (kept in ``eval()``, source statistics, unchanged) with LAME.

        Args:
            model: Any classifier whose head :func:`tta.heads.split_classifier` finds, or names with ``head``.
            affinity: ``knn`` (binary, paper), ``rbf`` (official default) or ``linear``.
            knn: Neighbours of the kNN affinity, and the rank whose distance sets the RBF bandwidth.
            symmetrize: Use ``(W + W.T) / 2`` (``LAME_FORCE_SYMMETRY``).
            bound_lambda: Weight of the Laplacian term (lambda).
            max_steps: Iteration cap of the concave-convex procedure.
            tol: Relative energy tolerance for convergence.
            head: Dotted name of the classification head, when it cannot be found by convention.
            episodic: Accepted for a uniform interface; LAME keeps no state across batches anyway.
            input_ndim: Expected input rank.

        Raises:
            TypeError: an option of the wrong type (e.g. ``knn=2.5``, ``episodic="no"``).
            ValueError: an option out of range, or a head that cannot be found (the message names ``head=``).
        """
        settings = LAMESettings(affinity, knn, symmetrize, bound_lambda, max_steps, tol)  # checked before model.eval()
        return cls(model.eval(), settings, head=head, episodic=episodic, input_ndim=input_ndim)
