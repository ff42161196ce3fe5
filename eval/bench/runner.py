"""Feed a test stream to an adapter and score it per domain; pure orchestration, no I/O.

The runner never wraps the adapter in ``torch.no_grad()``: gradient-based methods need
autograd inside ``forward`` and every adapter decides its own grad mode. It resets the adapter
where the protocol says so and reports each domain's scores as soon as the domain ends, so the
caller can store the cell at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from eval.domains import Domain
from eval.bench.memory import PeakMemory
from eval.bench.meters import CellStats, DomainMeter
from eval.protocols.streams import StreamItem

__all__ = ["run_benchmark"]

logger = logging.getLogger(__name__)


def _check_logits(logits: object, x: Tensor) -> Tensor:
    """Return ``logits`` if it is a floating ``(B, K)`` tensor for the batch ``x``, else raise."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"adapter(x) must return a logits tensor of shape (B, K), got {type(logits).__name__}")
    if logits.ndim != 2 or logits.shape[0] != x.shape[0] or not logits.is_floating_point():
        raise ValueError(
            f"adapter(x) must return floating logits of shape (B, K) = ({x.shape[0]}, K) for a batch of "
            f"shape {tuple(x.shape)}, got a {logits.dtype} tensor of shape {tuple(logits.shape)}"
        )
    return logits


def _reset(adapter: nn.Module) -> None:
    """Call ``adapter.reset()`` if the adapter has one; a plain model has no state to reset."""
    reset = getattr(adapter, "reset", None)
    if callable(reset):
        reset()


def run_benchmark(
    adapter: nn.Module,
    stream: Iterable[StreamItem],
    *,
    device: torch.device | str = "cpu",
    on_cell: Callable[[Domain, CellStats], None] | None = None,
    on_batch: Callable[[StreamItem, Tensor], None] | None = None,
) -> dict[Domain, CellStats]:
    """Run ``adapter`` over ``stream`` and return the error and ECE of each domain.

    For each item: if ``item.reset``, call ``adapter.reset()`` (when it exists); move ``x`` and
    ``y`` to ``device``; predict (and adapt) with ``adapter(x)``; score the detached logits
    for ``item.domain``. When the domain of the stream changes or the stream ends, call
    ``on_cell`` with the finished domain's scores. A domain that comes back later in the
    stream keeps accumulating, and ``on_cell`` is called again with its updated scores.

    Args:
        adapter: A module whose ``forward(x)`` returns logits ``(B, K)``, already on ``device``;
            an adapter may update itself while predicting and chooses its own grad mode.
        stream: Stream items from a protocol, e.g. ``get_protocol("episodic").stream(loaders)``.
        device: Where batches are moved before the forward pass.
        on_cell: Called with ``(domain, stats)`` as soon as a domain's run of batches ends.
        on_batch: Called with ``(item, logits)`` after each batch, e.g. to advance a progress bar.

    Returns:
        Final scores per domain, in first-seen order; the logits come from the adapter's
        forward on each batch, i.e. after it adapted on that batch if it adapts before predicting.

    Raises:
        TypeError: If the adapter returns something other than a tensor.
        ValueError: If the adapter returns logits of the wrong shape or the labels do not fit them.
    """
    meters: dict[Domain, DomainMeter] = {}
    memory = PeakMemory(device)
    current: Domain | None = None
    mixed: dict[Domain, None] = {}  # domains scored from mixed batches: reported when the stream ends
    for item in stream:
        if current is not None and (item.sample_domains is not None or item.domain != current):
            _finish(current, meters[current], on_cell)
        if item.sample_domains is not None:
            if current is not None or not mixed:
                memory.reset()
            current = None
            logits = _step_mixed(adapter, item, device, meters, memory)
            mixed.update(dict.fromkeys(item.sample_domains))
        else:
            if item.domain != current:
                memory.reset()
            current = item.domain
            meter = meters.setdefault(item.domain, DomainMeter(memory))
            start = time.perf_counter()
            logits = _step(adapter, item, device, meter)
            meter.seconds += time.perf_counter() - start
        if on_batch is not None:
            on_batch(item, logits)
    if current is not None:
        _finish(current, meters[current], on_cell)
    for domain in sorted(mixed, key=list(meters).index):
        _finish(domain, meters[domain], on_cell)
    return {domain: meter.stats() for domain, meter in meters.items()}


def _step_mixed(adapter: nn.Module, item: StreamItem, device: torch.device | str,
                meters: dict[Domain, DomainMeter], memory: PeakMemory) -> Tensor:
    """Predict on a batch that mixes domains and score each sample for its own domain.

    The batch's time is shared among its domains in proportion to their samples.
    """
    start = time.perf_counter()
    logits, y = _predict(adapter, item, device)
    seconds = time.perf_counter() - start
    tags = item.sample_domains or ()
    for domain in dict.fromkeys(tags):
        index = torch.tensor([i for i, tag in enumerate(tags) if tag == domain], device=logits.device)
        meter = meters.setdefault(domain, DomainMeter(memory))
        meter.update(logits[index], y[index])
        meter.seconds += seconds * len(index) / len(tags)
    return logits


def _step(adapter: nn.Module, item: StreamItem, device: torch.device | str, meter: DomainMeter) -> Tensor:
    """Reset if asked, predict on one batch, score it and return the detached logits."""
    logits, y = _predict(adapter, item, device)
    meter.update(logits, y)
    return logits


def _predict(adapter: nn.Module, item: StreamItem, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Reset if the item asks, move the batch to ``device`` and return the detached logits and the labels."""
    if item.reset:
        _reset(adapter)
    x = item.x.to(device, non_blocking=True)
    y = item.y.to(device, non_blocking=True)
    return _check_logits(adapter(x), x).detach(), y


def _finish(domain: Domain, meter: DomainMeter, on_cell: Callable[[Domain, CellStats], None] | None) -> None:
    """Report a domain whose run of batches just ended."""
    meter.close()
    stats = meter.stats()
    logger.debug("finished %s: error %.4f, ece %.4f, n %d, %.2f s", domain, stats.error, stats.ece, stats.n,
                 stats.seconds)
    if on_cell is not None:
        on_cell(domain, stats)
