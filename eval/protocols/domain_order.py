"""Protocols that order whole domains or their batches: episodic, continual, gradual and mixed streams.

Each batch keeps the samples its loader gave it (:class:`MixedSamples` aside, which pools samples of
all domains); the protocols differ in the order of domains and batches and in where the adapter is
reset. Label-shift protocols, which reorder samples by class, are in :mod:`eval.protocols.label_shift`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from eval.datasets.indexed import IndexedLoader
from eval.domains import Domain
from eval.protocols.streams import Loaders, StreamItem, iter_batches, sequential_stream

__all__ = ["Continual", "Gradual", "MixedDomains", "MixedSamples", "ResetEachDomain"]


class ResetEachDomain:
    """Episodic per-domain protocol: domains in the given order, reset before each domain.

    The adapter adapts over all batches of one domain and starts every domain from the
    source model; this is the "reset each domain" protocol of Tent's ImageNet-C and
    CIFAR-C tables. Domains with no batches are skipped.

    Reference:
        Wang et al., "Tent: Fully Test-Time Adaptation by Entropy Minimization", ICLR 2021.
    """

    name: str = "episodic"
    carries_state: bool = False
    contiguous: bool = True

    def stream(self, loaders: Loaders) -> Iterator[StreamItem]:
        """Yield every batch of every domain, ``reset=True`` on the first batch of each domain.

        Args:
            loaders: Iterables of ``(x, y)`` batches keyed by domain, in stream order.
        """
        return sequential_stream(loaders, reset_each_domain=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Continual:
    """Continual protocol: domains in the given order, one reset before the whole stream.

    The adapter carries its state across domain shifts, as in CoTTA's continual benchmark.

    Reference:
        Wang et al., "Continual Test-Time Domain Adaptation", CVPR 2022.
    """

    name: str = "continual"
    carries_state: bool = True
    contiguous: bool = True

    def stream(self, loaders: Loaders) -> Iterator[StreamItem]:
        """Yield every batch of every domain, ``reset=True`` only on the very first batch.

        Args:
            loaders: Iterables of ``(x, y)`` batches keyed by domain, in stream order.
        """
        return sequential_stream(loaders, reset_each_domain=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Gradual:
    """Gradual protocol: for each corruption in turn, severities rise 1 -> 5 and fall back 5 -> 1; one reset.

    The severities present in ``loaders`` for a corruption are visited in ascending then descending
    order (the peak once), so a domain's cell accumulates both of its visits. Continual: state is
    carried across everything.

    Reference:
        Wang et al., "Continual Test-Time Domain Adaptation", CVPR 2022 (gradual severity changes).
    """

    name: str = "gradual"
    carries_state: bool = True
    contiguous: bool = False

    def stream(self, loaders: Loaders) -> Iterator[StreamItem]:
        """Yield the batches corruption by corruption, severities up then down, ``reset`` only first."""
        by_corruption: dict[str, list[Domain]] = {}
        for domain in loaders:
            by_corruption.setdefault(domain.corruption, []).append(domain)
        first = True
        for domains in by_corruption.values():
            up = sorted(domains, key=lambda d: d.severity)
            for domain in up + up[-2::-1]:
                for x, y in iter_batches(domain, loaders[domain]):
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
    carries_state: bool = True
    contiguous: bool = False

    def stream(self, loaders: Loaders) -> Iterator[StreamItem]:
        """Yield all batches of all domains shuffled together (domains are read fully first)."""
        batches = [(d, x, y) for d, loader in loaders.items() for x, y in iter_batches(d, loader)]
        order = np.random.default_rng(self.seed).permutation(len(batches)).tolist()
        for position, index in enumerate(order):
            domain, x, y = batches[index]
            yield StreamItem(domain, x, y, reset=position == 0)


class MixedSamples(_Shuffled):
    """Sample-level mixed domains: every sample of every domain in one seeded random order; one reset.

    Batches mix domains (each test batch holds samples of several corruptions), as in the mixed-domain
    setting of the continual-TTA literature (e.g. Döbler et al., "Robust Mean Teacher for Continual and
    Gradual Test-Time Adaptation", CVPR 2023); each sample is scored for its own domain. All domains
    of an on-disk suite are read batch by batch in the shuffled order; other loaders are read into memory
first (Fashion-MNIST's corruptions are drawn per original batch).

    Args:
        seed: Seeds the order; the same seed gives the same stream.
    """

    name: str = "mixed-samples"
    carries_state: bool = True
    contiguous: bool = False

    def stream(self, loaders: Loaders) -> Iterator[StreamItem]:
        """Yield batches of the first domain's batch size drawn from the shuffled pool of all samples."""
        indexed = list(loaders.values())
        if indexed and all(isinstance(loader, IndexedLoader) for loader in indexed):
            yield from self._indexed_stream(loaders)
            return
        xs: list[Tensor] = []
        ys: list[Tensor] = []
        tags: list[Domain] = []
        size = 0
        for domain, loader in loaders.items():
            for x, y in iter_batches(domain, loader):
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

    def _indexed_stream(self, loaders: Loaders) -> Iterator[StreamItem]:
        """The same stream from on-disk domains, read batch by batch in the shuffled order (nothing held whole)."""
        domain_loaders = [loader for loader in loaders.values() if isinstance(loader, IndexedLoader)]
        tags = [domain for domain, loader in zip(loaders, domain_loaders) for _ in range(len(loader.labels()))]
        if not tags:
            return
        order = np.random.default_rng(self.seed).permutation(len(tags))
        start = 0
        for x, y in iter_batches(next(iter(loaders)), IndexedLoader.mixed(domain_loaders, order.tolist())):
            domains = tuple(tags[i] for i in order[start : start + len(y)].tolist())
            yield StreamItem(domains[0], x, y, reset=start == 0, sample_domains=domains)
            start += len(y)
