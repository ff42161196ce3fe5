"""What a benchmark run is: methods x domains of a suite under one protocol, and where it runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

import tta
from eval.corruptions import DEFAULT_CORRUPTIONS
from eval.domains import Domain
from eval.edge_runtime import RUNTIMES, Runtime, check_runtime_methods
from eval.protocols import get_protocol
from eval.suites import SuiteSpec

__all__ = ["BenchSpec", "resolve_device"]


@dataclass(frozen=True)
class BenchSpec:
    """What to run: methods (with keyword options) x corruptions x severities of a suite under one protocol.

    ``device``: where each unit runs, e.g. ``cpu``, ``cuda``, ``cuda:1``, or ``auto`` (CUDA when the
    process running the unit sees a GPU, else CPU; resolved where the unit runs).

    ``online_cost``: ``None`` scores the usual offline protocol (every batch waits for adaptation);
    a number ``C >= 1`` or ``"auto"`` (measured on the first batch) scores the online protocol where a
    method ``C`` times slower than plain inference adapts on one batch in ``ceil(C)``.
    """

    methods: tuple[str, ...] = ("source", "norm", "tent")
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    corruptions: tuple[str, ...] = tuple(DEFAULT_CORRUPTIONS)
    severities: tuple[int, ...] = (5,)
    protocol: str = "episodic"
    batch_size: int = 128
    seed: int = 0
    limit: int | None = None
    suite: SuiteSpec = field(default_factory=SuiteSpec)
    device: str = "cpu"
    runtime: Runtime = "torch"
    online_cost: float | str | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(tta.list_methods()))
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; available: {tta.list_methods()}")
        get_protocol(self.protocol)
        if self.runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {self.runtime!r}; choose one of {list(RUNTIMES)}")
        if self.runtime == "onnx":
            check_runtime_methods(self.methods)
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.online_cost not in (None, "auto") and not float(self.online_cost) >= 1.0:
            raise ValueError(f"online cost must be 'auto' or a number >= 1, got {self.online_cost!r}")

    @property
    def domains(self) -> list[Domain]:
        """Domains in benchmark order: corruption-major, severities as given; ``clean`` once, at severity 0."""
        domains = [Domain(c, 0 if c == "clean" else s) for c in self.corruptions for s in self.severities]
        return list(dict.fromkeys(domains))

    @property
    def protocol_label(self) -> str:
        """The protocol as recorded in results (``+online`` variants never mix with offline cells)."""
        return self.protocol if self.online_cost is None else f"{self.protocol}+online:{self.online_cost}"


def resolve_device(device: str) -> str:
    """Return ``device``, with ``auto`` meaning CUDA when this process sees a GPU, else CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
