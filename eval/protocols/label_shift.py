"""Label-shift (non-i.i.d.) protocols: each domain's samples re-ordered by class, then re-batched.

Class-sorted streams put one or two classes in every batch; Dirichlet streams cluster the labels with
a tunable concentration. Both read an on-disk domain in the new order batch by batch; a loader that
cannot be indexed is held in memory whole to be re-ordered.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from eval.datasets.indexed import IndexedLoader
from eval.domains import Domain
from eval.protocols.streams import Loaders, StreamItem, iter_batches, sequential_stream

__all__ = [
    "DEFAULT_CONCENTRATION",
    "ClassSorted",
    "ContinualDirichlet",
    "DirichletLabelShift",
    "class_sorted_order",
    "dirichlet_order",
    "domain_seed",
]

DEFAULT_CONCENTRATION = 0.1
"""The Dirichlet concentration (delta) of NOTE's and RoTTA's benchmarks: long single-class runs."""


def _reordered(
    domain: Domain, loader: Iterable[tuple[Tensor, Tensor]], order: Callable[[Tensor], Tensor]
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield the domain's samples in ``order(labels)``, re-batched at the size of its first batch.

    An :class:`~eval.datasets.indexed.IndexedLoader` (the on-disk suites) is read batch by batch in
    that order; any other loader is held in memory whole to be re-ordered (fine for Fashion-MNIST,
    whose corruptions are drawn per original batch; the batches are the same either way).
    """
    if isinstance(loader, IndexedLoader):
        yield from iter_batches(domain, loader.in_order(order(loader.labels())))
        return
    batches = list(iter_batches(domain, loader))
    if not batches:
        return
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    index = order(y).to(y.device)
    size = batches[0][0].shape[0]
    for start in range(0, len(y), size):
        window = index[start : start + size]
        yield x[window], y[window]


def _label_shift_stream(
    loaders: Loaders, order: Callable[[Tensor], Tensor], reset_each_domain: bool
) -> Iterator[StreamItem]:
    return sequential_stream(loaders, reset_each_domain=reset_each_domain,
                             batches=lambda domain, loader: _reordered(domain, loader, order))


def class_sorted_order(labels: Tensor) -> Tensor:
    """Return the indices that sort ``labels`` ascending, keeping the original order within a class.

    Example:
        >>> class_sorted_order(torch.tensor([2, 0, 1, 0])).tolist()
        [1, 3, 2, 0]
    """
    return torch.sort(labels.cpu(), stable=True).indices


def dirichlet_order(labels: Tensor, concentration: float, seed: int) -> Tensor:
    """Return a label-clustered order of the indices of ``labels`` (Dirichlet non-i.i.d. sampling).

    The stream is cut into as many time slots as there are classes. Each class spreads its
    (shuffled) samples over the slots in proportions drawn from ``Dir(concentration)``; within a
    slot, the classes' chunks come in a random order. Small concentrations put each class in few
    slots (long single-class runs); large ones approach an i.i.d. stream. This is the scheme of
    NOTE (Gong et al., NeurIPS 2022) and RoTTA (Yuan et al., CVPR 2023). All randomness comes
    from ``numpy.random.default_rng(seed)``.

    Example:
        >>> sorted(dirichlet_order(torch.tensor([0, 1, 0, 1]), 0.1, seed=0).tolist())
        [0, 1, 2, 3]
    """
    labels = labels.cpu()
    rng = np.random.default_rng(seed)
    classes = torch.unique(labels).tolist()
    proportions = rng.dirichlet([concentration] * len(classes), size=len(classes))
    chunks: list[list[Tensor]] = [[] for _ in classes]
    for c, fractions in zip(classes, proportions):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.from_numpy(rng.permutation(len(members)))]
        cuts = (np.cumsum(fractions)[:-1] * len(members)).astype(np.int64).tolist()
        for slot, part in enumerate(torch.tensor_split(members, cuts)):
            chunks[slot].append(part)
    return torch.cat([chunk[i] for chunk in chunks for i in rng.permutation(len(chunk)).tolist()])


def domain_seed(seed: int, domain: Domain) -> int:
    """Return the seed of ``domain``'s draws in a stream seeded by ``seed``: distinct per domain, fixed by its name.

    Derived from the domain's identity rather than its position, so a stream resumed at a later domain
    draws that domain's order as the whole stream did.

    Example:
        >>> domain_seed(0, Domain("fog", 5)) == domain_seed(0, Domain("fog", 5)) != domain_seed(0, Domain("fog", 4))
        True
    """
    entropy = [seed, zlib.crc32(f"{domain.corruption}/{domain.severity}".encode())]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class ClassSorted:
    """Class-sorted (non-i.i.d.) protocol: each domain's samples arrive sorted by label.

    Every batch then holds one or two classes, the hardest case for methods that estimate
    statistics or gradients from the batch, and the one LAME targets. All samples are kept and
    re-batched at the size of each domain's first batch.

    Args:
        reset_each_domain: Reset before each domain (default, as ``episodic``); ``False`` resets once.

    Reference:
        Boudiaf et al., "Parameter-free Online Test-time Adaptation", CVPR 2022 (non-i.i.d. streams).
    """

    name: str = "class-sorted"
    contiguous: bool = True

    def __init__(self, *, reset_each_domain: bool = True) -> None:
        self.reset_each_domain = reset_each_domain

    @property
    def carries_state(self) -> bool:
        """Whether the adapter's state flows from one domain into the next: only without a reset per domain."""
        return not self.reset_each_domain

    def stream(self, loaders: Loaders) -> Iterator[StreamItem]:
        """Yield every sample of every domain, sorted by label within each domain."""
        return _label_shift_stream(loaders, class_sorted_order, self.reset_each_domain)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reset_each_domain={self.reset_each_domain})"


class DirichletLabelShift:
    """Dirichlet non-i.i.d. protocol: each domain's samples arrive in label clusters (see :func:`dirichlet_order`).

    Args:
        concentration: Dirichlet concentration (gamma); 0.1 gives long single-class runs, 100 is near i.i.d.
        seed: Seeds the draws; the same seed gives the same order.
        reset_each_domain: Reset before each domain (default); ``False`` resets once.
    """

    name: str = "dirichlet"
    contiguous: bool = True

    def __init__(self, concentration: float = DEFAULT_CONCENTRATION, seed: int = 0, *,
                 reset_each_domain: bool = True) -> None:
        if not concentration > 0 or concentration == float("inf"):
            raise ValueError(f"concentration must be a finite number > 0, got {concentration}")
        self.concentration, self.seed, self.reset_each_domain = concentration, seed, reset_each_domain

    @property
    def carries_state(self) -> bool:
        """Whether the adapter's state flows from one domain into the next: only without a reset per domain."""
        return not self.reset_each_domain

    def stream(self, loaders: Loaders) -> Iterator[StreamItem]:
        """Yield every sample of every domain in a Dirichlet label-clustered order."""
        return _label_shift_stream(
            loaders, lambda y: dirichlet_order(y, self.concentration, self.seed), self.reset_each_domain
        )

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(concentration={self.concentration}, seed={self.seed}, "
                f"reset_each_domain={self.reset_each_domain})")


class ContinualDirichlet(DirichletLabelShift):
    """Continual Dirichlet protocol (RoTTA's practical TTA setting): domains in the given order, one reset.

    Within each domain the samples arrive in a Dirichlet label-clustered order (:func:`dirichlet_order`);
    the adapter carries its state across domain shifts, so both the domain and the label distribution shift.
    Each domain draws its own order (:func:`domain_seed`), as RoTTA's one long stream does: with every domain
    holding the same test images, one shared order would repeat the same label sequence in each domain.

    Args:
        concentration: Dirichlet concentration (delta); RoTTA uses 0.1.
        seed: Seeds the draws; the same seed gives the same order.

    Reference:
        Yuan et al., "Robust Test-Time Adaptation in Dynamic Scenarios", CVPR 2023.
    """

    name: str = "continual-dirichlet"

    def __init__(self, concentration: float = DEFAULT_CONCENTRATION, seed: int = 0) -> None:
        super().__init__(concentration, seed, reset_each_domain=False)

    def stream(self, loaders: Loaders) -> Iterator[StreamItem]:
        """Yield every domain's samples in its own Dirichlet label-clustered order, ``reset`` only first."""
        def batches(domain: Domain, loader: Iterable[tuple[Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
            seed = domain_seed(self.seed, domain)
            return _reordered(domain, loader, lambda y: dirichlet_order(y, self.concentration, seed))

        return sequential_stream(loaders, reset_each_domain=False, batches=batches)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(concentration={self.concentration}, seed={self.seed})"
