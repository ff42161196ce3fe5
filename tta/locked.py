"""A module with a re-entrant lock that serializes its state changes and is copied or pickled as a fresh lock."""

from __future__ import annotations

import threading
from typing import Any

from torch import nn

__all__ = ["LockedModule"]


class LockedModule(nn.Module):
    """``nn.Module`` holding ``self._lock``: a ``deepcopy`` or unpickled copy gets its own lock, not a shared one."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.RLock()

    def __getstate__(self) -> dict[str, Any]:
        attributes = dict(super().__getstate__())
        attributes.pop("_lock", None)  # locks cannot be copied or pickled
        return attributes

    def __setstate__(self, attributes: dict[str, Any]) -> None:
        super().__setstate__(attributes)
        self._lock = threading.RLock()
