"""What a result depends on besides its key: versions, device, preprocessing, data subset, engine version.

Recorded as JSON next to every stored cell, so a number can be traced to the software and data that
produced it (the key already holds method, options, dataset, model, protocol, domain, seed, batch size).
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import TYPE_CHECKING

import torch

import tta

from eval.corruptions import ENGINE_VERSION
from eval.models.suites import used_settings

if TYPE_CHECKING:
    from eval.bench.spec import BenchSpec

__all__ = ["library_version", "run_metadata"]

def library_version() -> str:
    """Return this library's version (``tta.__version__``, the single source the distribution reads too)."""
    return tta.__version__


def _plain(value: object) -> object:
    """Return ``value`` as a JSON-ready value (paths and tuples become strings and lists)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def run_metadata(spec: BenchSpec, device: str | None = None) -> dict[str, object]:
    """Return the provenance of a benchmark run: software versions, device, runtime and the suite's data settings.

    The suite's settings are those its dataset uses (:func:`eval.models.suites.used_settings`), with the
    normalization inside an on-disk suite's model resolved.

    ``device``: where the cells ran (a unit resolves ``auto``); ``None`` records the spec's.
    """
    # only the settings the dataset uses (a flag it ignores is refused), worker counts left out: they change no result
    suite = {name: _plain(value) for name, value in used_settings(spec.suite).items() if name != "num_workers"}
    meta: dict[str, object] = {
        "library": library_version(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": spec.device if device is None else device,
        "runtime": spec.runtime,
        "suite": suite,
    }
    if spec.suite.dataset == "fmnist-c":
        meta["corruption_engine"] = ENGINE_VERSION
    if spec.online_cost is not None:
        meta["online_cost"] = spec.online_cost
    return meta
