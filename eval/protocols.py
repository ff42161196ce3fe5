"""Evaluation protocols: in which order test domains arrive and when the adapter is reset.

A protocol turns per-domain loaders into one stream of :class:`StreamItem`. The adapter never
decides when to reset; the protocol marks the batches before which the runner calls
``adapter.reset()`` (keeping the protocol outside the method avoids the hidden-driver
reproduction problems seen in CoTTA's code).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol as _TypingProtocol

import numpy as np
import torch
from torch import Tensor

from eval.domains import Domain

__all__ = [
    "StreamItem",
    "Protocol",
    "ResetEachDomain",
    "Continual",
    "ClassSorted",
    "DirichletLabelShift",
    "Gradual",
    "MixedDomains",
    "MixedSamples",
    "class_sorted_order",
    "dirichlet_order",
    "get_protocol",
    "list_protocols",
]

Loaders = Mapping[Domain, Iterable[tuple[Tensor, Tensor]]]


@dataclass(frozen=True)
class StreamItem:
    """One test batch of a stream: its domain, images, labels and whether to reset first.

    Args:
        domain: The domain the batch was drawn from.
        x: Input images, shape ``(B, C, H, W)``.
        y: Integer labels, shape ``(B,)``.
        reset: If true, the adapter is reset to its source state before this batch.
        sample_domains: For batches that mix domains, the domain of each sample (``domain`` is then
            the first sample's, for display); ``None`` when the whole batch is from ``domain``.
    """

    domain: Domain
    x: Tensor
    y: Tensor
    reset: bool
    sample_domains: tuple[Domain, ...] | None = None

    def __post_init__(self) -> None:
        if self.sample_domains is not None and len(self.sample_domains) != self.x.shape[0]:
            raise ValueError(f"sample_domains names {len(self.sample_domains)} domains for a batch of "
                             f"{self.x.shape[0]} samples")


class Protocol(_TypingProtocol):
    """A rule that orders domains into a stream and marks where the adapter is reset."""

    name: str

    def stream(self, loaders: Loaders) -> Iterator[StreamItem]:
        """Yield the batches of ``loaders`` as stream items."""
        ...


def _iter_batches(domain: Domain, loader: Iterable[tuple[Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(x, y)`` pairs from ``loader``, raising a clear error for anything else."""
    for batch in loader:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError(
                f"loader for domain {domain} must yield (x, y) pairs of tensors, got {type(batch).__name__}"
                + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
            )
        x, y = batch
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise TypeError(
                f"loader for domain {domain} must yield tensors, got ({type(x).__name__}, {type(y).__name__})"
            )
        yield x, y


class ResetEachDomain:
    """Episodic per-domain protocol: domains in the given order, reset before each domain.

    The adapter adapts over all batches of one domain and starts every domain from the
    source model; this is the "reset each domain" protocol of Tent's ImageNet-C and
    CIFAR-C tables. Domains with no batches are skipped.

    Reference:
        Wang et al., "Tent: Fully Test-Time Adaptation by Entropy Minimization", ICLR 2021.
    """

    name: str = "episodic"

    def stream(self, loaders: Loaders) -> Iterator[StreamItem]:
        """Yield every batch of every domain, ``reset=True`` on the first batch of each domain.

        Args:
            loaders: Iterables of ``(x, y)`` batches keyed by domain, in stream order.
        """
        for domain, loader in loaders.items():
            first = True
            for x, y in _iter_batches(domain, loader):
                yield StreamItem(domain, x, y, reset=first)
                first = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Continual:
    """Continual protocol: domains in the given order, one reset before the whole stream.

    The adapter carries its state across domain shifts, as in CoTTA's continual benchmark.

    Reference:
        Wang et al., "Continual Test-Time Domain Adaptation", CVPR 2022.
    """

    name: str = "continual"

    def stream(self, loaders: Loaders) -> Iterator[StreamItem]:
        """Yield every batch of every domain, ``reset=True`` only on the very first batch.

        Args:
            loaders: Iterables of ``(x, y)`` batches keyed by domain, in stream order.
        """
        first = True
        for domain, loader in loaders.items():
            for x, y in _iter_batches(domain, loader):
                yield StreamItem(domain, x, y, reset=first)
                first = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _reordered(
    domain: Domain, loader: Iterable[tuple[Tensor, Tensor]], order: Callable[[Tensor], Tensor]
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield the domain's samples in ``order(labels)``, re-batched at the size of its first batch.

    The whole domain is held in memory: fine for Fashion-MNIST or CIFAR-C, not for a full ImageNet-C domain.
    """
    batches = list(_iter_batches(domain, loader))
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
    first = True
    for domain, loader in loaders.items():
        if reset_each_domain:
            first = True
        for x, y in _reordered(domain, loader, order):
            yield StreamItem(domain, x, y, reset=first)
            first = False


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

    def __init__(self, *, reset_each_domain: bool = True) -> None:
        self.reset_each_domain = reset_each_domain

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

    def __init__(self, concentration: float = 0.1, seed: int = 0, *, reset_each_domain: bool = True) -> None:
        if concentration <= 0:
            raise ValueError(f"concentration must be > 0, got {concentration}")
        self.concentration, self.seed, self.reset_each_domain = concentration, seed, reset_each_domain

    def stream(self, loaders: Loaders) -> Iterator[StreamItem]:
        """Yield every sample of every domain in a Dirichlet label-clustered order."""
        return _label_shift_stream(
            loaders, lambda y: dirichlet_order(y, self.concentration, self.seed), self.reset_each_domain
        )

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(concentration={self.concentration}, seed={self.seed}, "
                f"reset_each_domain={self.reset_each_domain})")


class Gradual:
    """Gradual protocol: for each corruption in turn, severities rise 1 -> 5 and fall back 5 -> 1; one reset.

    The severities present in ``loaders`` for a corruption are visited in ascending then descending
    order (the peak once), so a domain's cell accumulates both of its visits. Continual: state is
    carried across everything.

    Reference:
        Wang et al., "Continual Test-Time Domain Adaptation", CVPR 2022 (gradual severity changes).
    """

    name: str = "gradual"

    def stream(self, loaders: Loaders) -> Iterator[StreamItem]:
        """Yield the batches corruption by corruption, severities up then down, ``reset`` only first."""
        by_corruption: dict[str, list[Domain]] = {}
        for domain in loaders:
            by_corruption.setdefault(domain.corruption, []).append(domain)
        first = True
        for domains in by_corruption.values():
            up = sorted(domains, key=lambda d: d.severity)
            for domain in up + up[-2::-1]:
                for x, y in _iter_batches(domain, loaders[domain]):
                    yield StreamItem(domain, x, y, reset=first)
                    first = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _Shuffled:
    """Base of the protocols whose order is drawn from a seed."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"


class MixedDomains(_Shuffled):
    """Mixed-domain protocol: the batches of all domains in one seeded random order; one reset.

    Each batch still comes from a single domain (so per-domain errors are exact); the domain changes
    from batch to batch. :class:`MixedSamples` mixes domains inside each batch.

    Args:
        seed: Seeds the order; the same seed gives the same stream.
    """

    name: str = "mixed"

    def stream(self, loaders: Loaders) -> Iterator[StreamItem]:
        """Yield all batches of all domains shuffled together (domains are read fully first)."""
        batches = [(d, x, y) for d, loader in loaders.items() for x, y in _iter_batches(d, loader)]
        order = np.random.default_rng(self.seed).permutation(len(batches)).tolist()
        for position, index in enumerate(order):
            domain, x, y = batches[index]
            yield StreamItem(domain, x, y, reset=position == 0)


class MixedSamples(_Shuffled):
    """Sample-level mixed domains: every sample of every domain in one seeded random order; one reset.

    Batches mix domains (each test batch holds samples of several corruptions), as in the mixed-domain
    setting of the continual-TTA literature (e.g. Döbler et al., "Robust Mean Teacher for Continual and
    Gradual Test-Time Adaptation", CVPR 2023); each sample is scored for its own domain. All domains
    are read into memory first (fine for Fashion-MNIST/CIFAR-C or a ``--limit``; not a full ImageNet-C).

    Args:
        seed: Seeds the order; the same seed gives the same stream.
    """

    name: str = "mixed-samples"

    def stream(self, loaders: Loaders) -> Iterator[StreamItem]:
        """Yield batches of the first domain's batch size drawn from the shuffled pool of all samples."""
        xs: list[Tensor] = []
        ys: list[Tensor] = []
        tags: list[Domain] = []
        size = 0
        for domain, loader in loaders.items():
            for x, y in _iter_batches(domain, loader):
                size = size or x.shape[0]
                xs.append(x)
                ys.append(y)
                tags.extend([domain] * x.shape[0])
        if not tags:
            return
        x_all, y_all = torch.cat(xs), torch.cat(ys)
        order = np.random.default_rng(self.seed).permutation(len(tags))
        for start in range(0, len(tags), size):
            window = order[start : start + size]
            index = torch.from_numpy(window).to(x_all.device)
            domains = tuple(tags[i] for i in window.tolist())
            yield StreamItem(domains[0], x_all[index], y_all[index.to(y_all.device)], reset=start == 0,
                             sample_domains=domains)


_PROTOCOLS: dict[str, Callable[[], Protocol]] = {
    ResetEachDomain.name: ResetEachDomain,
    Continual.name: Continual,
    ClassSorted.name: ClassSorted,
    DirichletLabelShift.name: DirichletLabelShift,
    Gradual.name: Gradual,
    MixedDomains.name: MixedDomains,
    MixedSamples.name: MixedSamples,
}


def list_protocols() -> list[str]:
    """Return the names accepted by :func:`get_protocol`, sorted."""
    return sorted(_PROTOCOLS)


def get_protocol(name: str, *, seed: int | None = None) -> Protocol:
    """Return a new protocol instance from its name.

    Args:
        name: One of :func:`list_protocols`, e.g. ``"episodic"`` or ``"continual"``.
        seed: Seeds the order of protocols that shuffle (``mixed``, ``mixed-samples``, ``dirichlet``); others
            ignore it.

    Raises:
        ValueError: If ``name`` is unknown; the message lists the valid names.

    Example:
        >>> get_protocol("continual").name
        'continual'
    """
    if name not in _PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; valid names are: {', '.join(list_protocols())}")
    factory = _PROTOCOLS[name]
    if seed is not None and factory in (MixedDomains, MixedSamples, DirichletLabelShift):
        return factory(seed=seed)
    return factory()
