"""Progress bars for long commands: live in a terminal, sparse lines in logs."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

__all__ = ["progress_bar"]


def progress_bar(desc: str, unit: str, **kwargs: Any) -> tqdm:
    """Return a tqdm bar on stderr; outside a terminal it refreshes every 15 s so logs stay short."""
    interactive = sys.stderr.isatty()
    return tqdm(total=0, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.2 if interactive else 15.0, **kwargs)
