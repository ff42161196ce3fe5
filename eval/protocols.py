"""Evaluation protocols: in which order test domains arrive and when the adapter is reset.

A protocol turns per-domain loaders into one stream of :class:`StreamItem`. The adapter never
decides when to reset; the protocol marks the batches before which the runner calls
``adapter.reset()`` (keeping the protocol outside the method avoids the hidden-driver
reproduction problems seen in CoTTA's code).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol as _TypingProtocol

from torch import Tensor

from eval.domains import Domain

__all__ = [
    "StreamItem",
    "Protocol",
    "ResetEachDomain",
    "Continual",
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
    """

    domain: Domain
    x: Tensor
    y: Tensor
    reset: bool


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


_PROTOCOLS: dict[str, type[ResetEachDomain] | type[Continual]] = {
    ResetEachDomain.name: ResetEachDomain,
    Continual.name: Continual,
}


def list_protocols() -> list[str]:
    """Return the names accepted by :func:`get_protocol`, sorted."""
    return sorted(_PROTOCOLS)


def get_protocol(name: str) -> Protocol:
    """Return a new protocol instance from its name.

    Args:
        name: One of :func:`list_protocols`, e.g. ``"episodic"`` or ``"continual"``.

    Raises:
        ValueError: If ``name`` is unknown; the message lists the valid names.

    Example:
        >>> get_protocol("continual").name
        'continual'
    """
    if name not in _PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; valid names are: {', '.join(list_protocols())}")
    return _PROTOCOLS[name]()
