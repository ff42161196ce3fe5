"""The one check every label file goes through: a 1-D integer array whose values index the classes."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["labels_problem"]


def labels_problem(source: str | os.PathLike[str], labels: np.ndarray, num_classes: int | None = None) -> str | None:
    """Return why ``labels`` (read from ``source``) cannot be class labels, or ``None`` if they can.

    Labels must be a 1-D integer array (a float array is refused rather than truncated) with
    ``0 <= label`` and, when ``num_classes`` is known, ``label < num_classes``.
    """
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        return f"{source}: labels must be a 1-D integer array, found {labels.dtype} {labels.shape}"
    if labels.size == 0:
        return None
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        bound = "0 <= label" if num_classes is None else f"0 <= label < {num_classes}"
        return f"{source}: labels must satisfy {bound}, found values from {low} to {high}"
    return None
