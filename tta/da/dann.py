"""DANN: domain-adversarial training of a deployed classifier with labeled source and unlabeled target data.

A domain discriminator is attached through a gradient reversal layer to the penultimate features
of any classifier (found by :func:`tta.heads.split_classifier`). Minimizing the task loss on
labeled source images plus the discriminator's loss on source and target images trains the
discriminator to tell the domains apart and, through the reversed gradient, the feature extractor
to make them indistinguishable (Ganin & Lempitsky 2015, eq. 9). The wrapped :class:`DANN` module
returns the classifier's logits only, so it deploys and exports like the original model; the
discriminator is used by :meth:`DANN.losses` alone.

Reference: Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015
(arXiv:1409.7495); Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016
(arXiv:1505.07818).
Adapted from: thuml/Transfer-Learning-Library ``dalib/adaptation/dann.py`` and
``examples/domain_adaptation/image_classification/dann.py`` (MIT), behaviour only.

Differences from the reference implementation:
- Source and target images go through the feature extractor in *one* concatenated forward, as in
  Transfer-Learning-Library, so in training mode every BatchNorm layer normalizes with the
  statistics of the mixed batch and its running statistics drift toward the mixture.
- The discriminator has ``num_domains`` outputs trained with cross-entropy (the paper's deep
  architecture, x -> 1024 -> 1024 -> 2); Transfer-Learning-Library uses one sigmoid output
  with binary cross-entropy, which is the same model for two domains.
- The discriminator uses dropout, as the paper's deep experiments; Transfer-Learning-Library
  defaults to BatchNorm1d instead.
- The feature extractor and the heads share one learning rate (the reference uses 0.1x for a
  pretrained backbone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from tta.da.grl import GradientReversal, grad_reverse
from tta.heads import split_classifier

__all__ = ["DANN", "DANNLosses", "DomainHead", "dann_step"]

SOURCE_DOMAIN, TARGET_DOMAIN = 0, 1


@dataclass(frozen=True)
class DANNLosses:
    """The losses of one DANN step; ``total`` is what is back-propagated.

    Args:
        task: Cross-entropy of the classifier on the labeled source batch (scalar).
        domain: Cross-entropy of the discriminator on source and target features (scalar).
        total: ``task + domain_weight * domain`` (scalar); the reversal layer flips the domain
            gradient for the feature extractor.
        domain_accuracy: Fraction of source and target images the discriminator assigns to the
            right domain (detached scalar); 0.5 is chance for equal batch sizes.
    """

    task: Tensor
    domain: Tensor
    total: Tensor
    domain_accuracy: Tensor


class DomainHead(nn.Module):
    """Domain discriminator: an MLP from features to domain logits.

    Args:
        in_features: Feature dimension ``D`` of the classifier's penultimate layer.
        hidden: Widths of the hidden layers; the paper's deep image experiments use (1024, 1024).
        num_domains: Number of domains (2: source and target).
        dropout: Dropout probability after each hidden ReLU (0.5 in the paper's deep experiments).

    Shape:
        - Input: ``(B, in_features)``.
        - Output: domain logits ``(B, num_domains)``.

    Example:
        >>> DomainHead(64, hidden=(32,))(torch.zeros(5, 64)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self, in_features: int, hidden: Sequence[int] = (1024, 1024), num_domains: int = 2, dropout: float = 0.5
    ) -> None:
        super().__init__()
        if in_features < 1 or num_domains < 2 or any(width < 1 for width in hidden):
            raise ValueError(
                f"need in_features >= 1, hidden widths >= 1 and num_domains >= 2, got {in_features}, "
                f"{tuple(hidden)}, {num_domains}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.in_features = in_features
        layers: list[nn.Module] = []
        width = in_features
        for next_width in hidden:
            layers += [nn.Linear(width, next_width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = next_width
        layers.append(nn.Linear(width, num_domains))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        """Return domain logits for ``features``."""
        if features.dim() != 2 or features.shape[1] != self.in_features:
            raise ValueError(
                f"the domain head expects features of shape (B, {self.in_features}), got {tuple(features.shape)}; "
                f"build DomainHead(in_features={features.shape[-1]}) for this classifier"
            )
        return self.layers(features)


def _head_in_features(head: nn.Module) -> int | None:
    first_linear = next((m for m in head.modules() if isinstance(m, nn.Linear)), None)
    return None if first_linear is None else first_linear.in_features


def _check_batches(source: tuple[Tensor, Tensor], target: Tensor) -> None:
    if not isinstance(source, (tuple, list)) or len(source) != 2:
        raise TypeError(f"source must be an (images, labels) pair, got {type(source).__name__}")
    x_s, y_s = source
    if len(x_s) == 0 or len(target) == 0:
        raise ValueError(f"empty batch: source has {len(x_s)} images and target {len(target)}; both need >= 1")
    if len(y_s) != len(x_s):
        raise ValueError(f"source has {len(x_s)} images but {len(y_s)} labels")
    if x_s.shape[1:] != target.shape[1:]:
        raise ValueError(
            f"source and target images must share their shape after the batch axis, got {tuple(x_s.shape)} "
            f"and {tuple(target.shape)}"
        )


class DANN(nn.Module):
    """A classifier with a domain discriminator on its penultimate features, behind gradient reversal.

    ``forward`` returns the classifier's logits only: the wrapped model's own forward, unchanged,
    so a trained ``DANN`` is deployed or exported as ``dann.model`` (or as itself). Training uses
    :meth:`losses` (one objective), :func:`dann_step` (one SGD step) or :meth:`fit` (the loop).

    Args:
        model: The classifier to adapt; it is trained in place (not copied).
        head: Name of the classification head module when :func:`~tta.heads.split_classifier`
            cannot find it (for example ``"model.fc"``).
        domain_head: The discriminator; by default a :class:`DomainHead` on the head's input
            features with ``hidden`` and ``dropout``.
        hidden: Hidden widths of the default discriminator (the paper's 1024, 1024).
        dropout: Dropout of the default discriminator (0.5 in the paper).
        domain_weight: Weight of the domain loss in ``total`` (1 in the paper; the λ of the
            reversal layer scales only the gradient reaching the features).
        scale: Initial reversal scale λ of ``self.grl`` (a schedule updates it).

    Raises:
        ValueError: If the head cannot be found (pass ``head=``), the feature dimension cannot be
            inferred (pass ``domain_head=``), or ``domain_head`` expects another dimension.

    Shape:
        - Input: the classifier's input, e.g. ``(B, C, H, W)``.
        - Output: class logits ``(B, num_classes)``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        head: str | None = None,
        domain_head: nn.Module | None = None,
        hidden: Sequence[int] = (1024, 1024),
        dropout: float = 0.5,
        domain_weight: float = 1.0,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        features, class_head = split_classifier(model, head)
        self.model = model
        # Not registered as children: both share their parameters with `model`.
        self._split = (features, class_head)
        self.domain_head = domain_head if domain_head is not None else self._default_head(class_head, hidden, dropout)
        self._check_feature_dimension(class_head)
        self.grl = GradientReversal(scale)
        self.domain_weight = domain_weight

    @staticmethod
    def _default_head(class_head: nn.Module, hidden: Sequence[int], dropout: float) -> DomainHead:
        in_features = _head_in_features(class_head)
        if in_features is None:
            raise ValueError(
                f"cannot infer the feature dimension: the head {type(class_head).__name__} has no nn.Linear; "
                f"pass domain_head=DomainHead(in_features=D) with the dimension D of the features"
            )
        return DomainHead(in_features, hidden=hidden, dropout=dropout)

    def _check_feature_dimension(self, class_head: nn.Module) -> None:
        expected = _head_in_features(class_head)
        got = getattr(self.domain_head, "in_features", None) or _head_in_features(self.domain_head)
        if expected is not None and got is not None and expected != got:
            raise ValueError(
                f"feature dimension mismatch: the classifier's head takes {expected} features but the "
                f"domain head expects {got}; build DomainHead(in_features={expected})"
            )

    def forward(self, x: Tensor) -> Tensor:
        """Return the classifier's logits for ``x`` (the wrapped model's forward; no discriminator)."""
        return self.model(x)

    def features(self, x: Tensor) -> Tensor:
        """Return the penultimate features the discriminator sees, shape ``(B, D)``."""
        return self._split[0](x)

    def losses(self, source: tuple[Tensor, Tensor], target: Tensor, *, scale: float | None = None) -> DANNLosses:
        """Return the task, domain and total losses on one source and one target batch.

        Source and target images are concatenated into one forward (see the module notes on
        BatchNorm). Labels of the target batch are never used.

        Args:
            source: Labeled source batch ``(x_s, y_s)``, shapes ``(B_s, ...)`` and ``(B_s,)``.
            target: Unlabeled target images ``(B_t, ...)`` of the same per-image shape.
            scale: Reversal scale λ for this call; ``None`` uses ``self.grl.scale``.

        Returns:
            The :class:`DANNLosses` record; back-propagate ``total``.

        Raises:
            ValueError: On empty batches, mismatched shapes, or features the discriminator does not take.
        """
        _check_batches(source, target)
        x_s, y_s = source
        features = self.features(torch.cat([x_s, target]))
        logits = self._split[1](features[: len(x_s)])
        reversed_features = self.grl(features) if scale is None else grad_reverse(features, scale)
        domain_logits = self.domain_head(reversed_features)
        domains = torch.full((len(features),), TARGET_DOMAIN, dtype=torch.long, device=features.device)
        domains[: len(x_s)] = SOURCE_DOMAIN
        task = F.cross_entropy(logits, y_s)
        domain = F.cross_entropy(domain_logits, domains)
        accuracy = (domain_logits.detach().argmax(1) == domains).float().mean()
        return DANNLosses(task=task, domain=domain, total=task + self.domain_weight * domain, domain_accuracy=accuracy)


def dann_step(
    model: DANN,
    optimizer: torch.optim.Optimizer,
    source: tuple[Tensor, Tensor],
    target: Tensor,
    scale: float | None = None,
) -> DANNLosses:
    """Run one DANN optimization step and return its losses (computed before the update).

    Args:
        model: The :class:`DANN` module, in training mode.
        optimizer: Optimizer over the trainable classifier and discriminator parameters.
        source: Labeled source batch ``(x_s, y_s)``.
        target: Unlabeled target images.
        scale: Reversal scale λ for this step; ``None`` uses ``model.grl.scale``.

    Returns:
        The losses of the forward used for the update.
    """
    optimizer.zero_grad(set_to_none=True)
    losses = model.losses(source, target, scale=scale)
    losses.total.backward()
    optimizer.step()
    return losses
