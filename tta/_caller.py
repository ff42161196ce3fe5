"""Warnings attributed to the user's line: the first frame outside this library and torch."""

from __future__ import annotations

import os
import sys
import warnings

import torch

__all__ = ["warn_at_caller"]

_INTERNAL = tuple(os.path.dirname(path) + os.sep for path in (__file__, str(torch.__file__)))


def warn_at_caller(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """Issue ``message`` as if from the first calling frame outside ``tta`` and ``torch`` (the user's call)."""
    frame = sys._getframe(1)
    level = 2  # stacklevel 2 names the frame that called this function
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
