"""Source data: the labeled (or unlabeled) samples of the training distribution some methods use.

A method that uses source samples (EATA's Fisher information, RMT's prototypes, DANN's task loss)
declares ``needs = frozenset({"source_data"})`` and takes one keyword, ``source_data=``, in any of
these shapes (:data:`SourceData`):

- a tensor batch ``x`` ``(B, ...)``;
- a tuple ``(x, y)`` of two tensors: one labeled batch (pass a list for several batches);
- an iterable of batches ``x`` or ``(x, y)``: a ``DataLoader``, a list, any re-iterable object;
- a function of no arguments that returns such an iterable (a generator function, say), called
  afresh for every pass.

:func:`source_batches` turns any of them into checked ``(x, y or None)`` batches. It reads the input
again on every call when the input is re-iterable (a tensor, a pair, a list, a ``DataLoader``, a
function); a one-shot iterator (a generator object, ``iter(loader)``) is read once, and a second pass
over it finds it empty and says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeAlias

import torch
from torch import Tensor

from tta.checks import check_batch, check_int
from tta.registry import get_adapter_class

__all__ = ["SourceBatch", "SourceData", "require_source_data", "source_batches", "uses_source_data"]

SourceBatch: TypeAlias = Tensor | tuple[Tensor, Tensor] | list[Tensor]
"""One batch: images ``x`` (float, ``(B, ...)``) or a pair ``(x, y)`` with integer labels ``y`` ``(B,)``."""

SourceData: TypeAlias = Tensor | tuple[Tensor, Tensor] | Iterable[SourceBatch] | Callable[[], Iterable[SourceBatch]]
"""What ``source_data=`` accepts: one batch, an iterable of batches, or a function returning such an iterable."""

_SHAPES = ("a tensor x, a pair (x, y), an iterable of such batches (a DataLoader, a list), "
           "or a function returning one")


def uses_source_data(method: str) -> bool:
    """Return whether the registered method ``method`` declares ``"source_data"`` in its ``needs``."""
    return "source_data" in get_adapter_class(method).needs


def require_source_data(method: str, source_data: object) -> None:
    """Raise ``ValueError`` if ``source_data`` is ``None``, naming ``method`` and the ways to pass it."""
    if source_data is None:
        raise ValueError(
            f"method {method!r} needs source data (samples of the training distribution): pass "
            f"tta.wrap(model, {method!r}, source_data=loader) with {_SHAPES}; on the command line `tta bench` "
            "reads the suite's training split, or the one given with --source-data PATH"
        )


def source_batches(
    source_data: SourceData, *, method: str, limit: int | None = None, labels: bool = False
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield the checked batches of ``source_data`` as ``(x, y)``, ``y`` ``None`` for unlabeled batches.

    Checks run as the batches are read, so an error names the first bad batch by its index.

    Args:
        source_data: One of the shapes of :data:`SourceData`.
        method: The method reading it, named in every error.
        limit: Stop after this many images (the last batch is cut to fit); ``None`` reads everything.
        labels: Require labeled ``(x, y)`` batches.

    Raises:
        TypeError: ``source_data`` or a batch has another shape, images are not floating point or
            labels not integer.
        ValueError: A batch is empty, has rank < 2, holds NaN/Inf, its labels are not ``(B,)``, a
            batch lacks labels while ``labels`` is set, or there are no batches at all.
    """
    require_source_data(method, source_data)
    if limit is not None:
        check_int("limit", limit, minimum=1)
    read = 0
    for index, batch in enumerate(_raw_batches(source_data, method)):
        x, y = _checked(batch, method, index, labels)
        if limit is not None and read + len(x) >= limit:
            keep = limit - read
            yield x[:keep], None if y is None else y[:keep]
            return
        read += len(x)
        yield x, y
    if read == 0:
        raise ValueError(_empty_message(source_data, method))


def _raw_batches(source_data: SourceData, method: str) -> Iterable[Any]:
    """Return the batches of ``source_data`` before any check: one for a tensor or a pair, else the iterable's."""
    if isinstance(source_data, Tensor) or (isinstance(source_data, tuple) and len(source_data) == 2
                                          and all(isinstance(part, Tensor) for part in source_data)):
        return [source_data]
    if callable(source_data):
        source_data = source_data()
    if isinstance(source_data, Iterable) and not isinstance(source_data, (str, bytes)):
        return source_data
    raise TypeError(f"source_data for method {method!r} must be {_SHAPES}; got {type(source_data).__name__}")


def _checked(batch: object, method: str, index: int, labels: bool) -> tuple[Tensor, Tensor | None]:
    """Return batch ``index`` as ``(x, y)`` after checking it, or raise naming the method and the index."""
    where = f"source_data for method {method!r}, batch {index}"
    x, y = _split(batch, where)
    try:
        check_batch(x, ndim=None)
    except TypeError as error:
        raise TypeError(f"{where}: {error}") from None
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    if x.dim() < 2:
        raise ValueError(f"{where}: images must have a batch dimension and at least one more, "
                         f"got shape {tuple(x.shape)}")
    if y is None:
        if labels:
            raise ValueError(f"{where}: method {method!r} needs labeled (x, y) batches, got images only")
        return x, None
    _check_labels(y, len(x), where)
    return x, y


def _split(batch: object, where: str) -> tuple[Tensor, Tensor | None]:
    """Return ``(x, y)`` of a batch given as ``x``, ``(x,)`` or ``(x, y)`` (``y`` ``None`` when absent)."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) in (1, 2) and all(isinstance(p, Tensor) for p in batch):
        return batch[0], batch[1] if len(batch) == 2 else None
    found = f"{type(batch).__name__} of {len(batch)} item(s)" if isinstance(batch, (tuple, list)) else type(batch).__name__
    raise TypeError(f"{where}: a batch must be a tensor x or a pair of tensors (x, y), got {found}")


def _check_labels(y: Tensor, count: int, where: str) -> None:
    """Raise unless ``y`` holds ``count`` integer class indices ``(B,)``."""
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{where}: labels must be integer class indices, got dtype {y.dtype}; convert with y.long()")
    if y.dim() != 1 or len(y) != count:
        raise ValueError(f"{where}: labels must have shape ({count},) to match the {count} images, "
                         f"got {tuple(y.shape)}")


def _empty_message(source_data: SourceData, method: str) -> str:
    """Say that no batch came, and why a second pass over a one-shot iterator finds none."""
    message = f"source_data for method {method!r} holds no batches; pass at least one batch of images"
    if isinstance(source_data, Iterator):
        message += (" (it is a one-shot iterator, read once and then empty: pass a list, a DataLoader or a "
                     "function returning a fresh iterator to read it again)")
    return message
