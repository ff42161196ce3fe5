"""The stream every evaluation protocol yields: batches tagged with their domain and a reset flag.

A protocol (:class:`Protocol`) turns per-domain loaders (:data:`Loaders`) into one stream of
:class:`StreamItem`; the runner and the executors consume the items. The protocols themselves are in
:mod:`eval.protocols.domain_order` and :mod:`eval.protocols.label_shift`, named in :mod:`eval.protocols.registry`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol as _TypingProtocol

from torch import Tensor

from eval.domains import Domain

__all__ = ["Loaders", "Protocol", "StreamItem", "iter_batches", "sequential_stream"]

Loaders = Mapping[Domain, Iterable[tuple[Tensor, Tensor]]]
"""Per-domain iterables of ``(x, y)`` batches, in stream order: what every protocol streams."""


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

    @property
    def carries_state(self) -> bool:
        """Whether the adapter's state flows from one domain into the next (no reset between domains)."""
        ...

    @property
    def contiguous(self) -> bool:
        """Whether each domain is visited in one contiguous run, so its cell is final when the run ends.

        Cells of such a protocol can be stored domain by domain; a protocol that revisits or
        interleaves domains (gradual, mixed) finishes its cells only when the whole stream ends.
        """
        ...

    def stream(self, loaders: Loaders) -> Iterator[StreamItem]:
        """Yield the batches of ``loaders`` as stream items."""
        ...


def iter_batches(domain: Domain, loader: Iterable[tuple[Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
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


def sequential_stream(
    loaders: Loaders,
    *,
    reset_each_domain: bool,
    batches: Callable[[Domain, Iterable[tuple[Tensor, Tensor]]], Iterable[tuple[Tensor, Tensor]]] = iter_batches,
) -> Iterator[StreamItem]:
    """Yield every domain's ``batches(domain, loader)`` in order, with ``reset`` on the stream's first batch
    and, if ``reset_each_domain``, on each domain's first batch; domains with no batches are skipped."""
    first = True
    for domain, loader in loaders.items():
        first = first or reset_each_domain
        for x, y in batches(domain, loader):
            yield StreamItem(domain, x, y, reset=first)
            first = False
