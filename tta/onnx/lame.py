"""LAME output correction as traceable graph code: kNN affinity and a fixed number of Laplacian steps.

LAME corrects a batch's predictions without touching the model: it finds class assignments ``Y``
close to the model's probabilities that nearby samples (in feature space) share. Written with
plain tensor operations and no data-dependent control flow, so it exports to ONNX with a dynamic
batch axis and an edge device gets the non-i.i.d. safety net without PyTorch.

Reference: Boudiaf et al., "Parameter-free Online Test-time Adaptation", CVPR 2022 (arXiv:2201.05718).
Adapted from: fiveai/LAME ``src/adaptation/lame.py`` (``kNN_affinity``, ``laplacian_optimization``),
behaviour only.

Differences from the reference implementation:
- NOTE(deviation): a fixed number of steps (``steps``) instead of stopping when the energy changes by
  less than 1e-8 (at most 100 steps): graphs have no data-dependent loops.
- NOTE(deviation): the k nearest neighbours are found by ranking distances (``rank < knn``) instead of
  ``topk``, so that batches smaller than ``knn + 1`` need no special case; ties may select more than
  ``knn`` neighbours, where ``topk`` picks one arbitrarily.
- The corrected output is returned as log-probabilities ``log Y`` (valid logits), not ``Y``, computed by a
  log-softmax of the last update, so tiny assignments keep their precision in every runtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LameGraph", "knn_affinity", "laplacian_steps", "log_plus_epsilon", "LameOutput"]


@dataclass(frozen=True)
class LameGraph:
    """LAME appended to an exported graph.

    Args:
        head: Name of the classifier submodule (``fc``, ``classifier``, ``heads``...); its input is
            the feature vector the affinity is computed on.
        knn: Neighbours per sample in the affinity (the paper's kNN kernel, 5 by default).
        steps: Fixed number of Laplacian updates.
        bound_lambda: Weight of the Laplacian term (λ, 1 in the paper).
    """

    head: str = "fc"
    knn: int = 5
    steps: int = 10
    bound_lambda: float = 1.0

    def __post_init__(self) -> None:
        if self.knn < 1 or self.steps < 1:
            raise ValueError(f"LAME needs knn >= 1 and steps >= 1, got knn={self.knn}, steps={self.steps}")


def knn_affinity(features: Tensor, knn: int) -> Tensor:
    """Return the ``(N, N)`` 0/1 kNN affinity: ``W[i, j] = 1`` if ``j`` is among the ``knn`` nearest of ``i``.

    Args:
        features: ``(N, D)`` features (LAME L2-normalizes them first).
        knn: Neighbours per sample; a sample is never its own neighbour.
    """
    squared = (features * features).sum(dim=1)
    # Squared Euclidean distances rank neighbours as the distances do (cdist has no ONNX translation).
    dist = squared.unsqueeze(0) + squared.unsqueeze(1) - 2.0 * features.matmul(features.t())
    n = features.shape[0]
    index = torch.arange(n, device=features.device)
    eye = index.unsqueeze(0) == index.unsqueeze(1)  # not torch.eye: onnxruntime has no boolean EyeLike
    dist = dist.masked_fill(eye, float("inf"))
    # rank[i, j] = how many samples are closer to i than j is
    rank = (dist.unsqueeze(1) < dist.unsqueeze(2)).sum(dim=2)
    return ((rank < knn) & ~eye).to(features.dtype)


def log_plus_epsilon(log_p: Tensor, epsilon: float) -> Tensor:
    """Return ``log(p + epsilon)`` from ``log p`` without leaving log space.

    ``log(softmax(z) + eps)`` of a float32 probability near ``eps`` differs by up to 2 between
    runtimes (their softmaxes differ in the tiny entries); ``max + log1p(exp(-|a - b|))`` of the two
    logarithms is exact in every runtime and plain elementwise ONNX.
    """
    log_eps = torch.full_like(log_p, math.log(epsilon))
    high = torch.maximum(log_p, log_eps)
    return high + torch.log1p(torch.exp(-(log_p - log_eps).abs()))


def laplacian_steps(log_probs: Tensor, kernel: Tensor, *, steps: int, bound_lambda: float = 1.0,
                    log: bool = False) -> Tensor:
    """Return LAME's assignments ``Y`` ``(N, K)`` after ``steps`` updates ``Y = softmax(log p + λ W Y)``.

    Args:
        log_probs: The model's log-probabilities (the negative unary term), ``(N, K)``.
        kernel: ``(N, N)`` affinity.
        steps: Number of updates (eq. 8 of the paper, iterated); at least 1.
        bound_lambda: λ.
        log: Return ``log Y``, from a log-softmax of the last update: exact for tiny assignments, where
            ``log(Y)`` of a float32 ``Y`` near 1e-7 is off by 1e-3 between runtimes.
    """
    y = log_probs.softmax(dim=-1)
    for _ in range(steps - 1):
        y = (log_probs + bound_lambda * kernel.matmul(y)).softmax(dim=-1)
    last = log_probs + bound_lambda * kernel.matmul(y)
    return last.log_softmax(dim=-1) if log else last.softmax(dim=-1)


class _Capture(nn.Module):
    """Wraps the head: records its input (the features) while passing it through."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head
        self.features: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        self.features = x
        return self.head(x)


class LameOutput(nn.Module):
    """``model`` followed by LAME on its logits and head features; returns ``log Y`` ``(N, K)``."""

    def __init__(self, model: nn.Module, config: LameGraph) -> None:
        super().__init__()
        parent_name, _, child = config.head.rpartition(".")
        try:
            parent = model.get_submodule(parent_name)
            head = getattr(parent, child)
        except AttributeError:
            raise ValueError(
                f"LAME head {config.head!r} is not a submodule of {type(model).__name__}; name the classifier "
                "layer whose input is the feature vector (e.g. 'fc', 'classifier', 'heads')"
            ) from None
        self.capture = _Capture(head)
        setattr(parent, child, self.capture)
        self.model = model
        self.config = config

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        features = self.capture.features
        self.capture.features = None
        if features is None:
            raise RuntimeError(f"the LAME head {self.config.head!r} was not called by the model's forward")
        features = F.normalize(features.flatten(1), p=2.0, dim=-1)
        kernel = knn_affinity(features, self.config.knn)
        log_probs = log_plus_epsilon(logits.log_softmax(dim=-1), 1e-10)  # LAME's unary term is -log(p + 1e-10)
        return laplacian_steps(log_probs, kernel, steps=self.config.steps, bound_lambda=self.config.bound_lambda,
                               log=True)
