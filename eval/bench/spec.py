"""What a benchmark run is: methods x domains of a suite under one protocol, and where it runs."""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

import tta
from tta.registry import import_methods
from eval.corruptions import DEFAULT_CORRUPTIONS, list_corruptions
from eval.domains import Domain
from eval.bench.edge_runtime import RUNTIMES, Runtime, check_runtime_methods
from eval.protocols.label_shift import DEFAULT_CONCENTRATION
from eval.protocols.registry import get_protocol
from eval.protocols.streams import Protocol
from eval.models.suites import SuiteSpec

__all__ = ["BenchSpec", "check_device_available", "check_seed", "for_seeds", "resolve_device", "resolve_protocol",
           "SEEDS"]

_SEVERITIES = range(1, 6)  # the five ImageNet-C severities
SEEDS = range(2**63)
"""The seeds a run takes: torch and numpy generators take them, and the results store keeps them as 64-bit
SQLite integers (``numpy.random.default_rng`` refuses negative seeds, SQLite integers above ``2**63 - 1``)."""


@dataclass(frozen=True)
class BenchSpec:
    """What to run: methods (with keyword options) x corruptions x severities of a suite under one protocol.

    ``device``: where each unit runs, e.g. ``cpu``, ``cuda``, ``cuda:1``, or ``auto`` (CUDA when the
    process running the unit sees a GPU, else CPU; resolved where the unit runs).

    ``online_cost``: ``None`` scores the usual offline protocol (every batch waits for adaptation);
    a number ``C >= 1`` or ``"auto"`` (measured on the first batch) scores the online protocol where a
    method ``C`` times slower than plain inference adapts on one batch in ``ceil(C)``.

    ``dirichlet_delta``: the Dirichlet concentration of the ``dirichlet`` and ``continual-dirichlet`` protocols;
    ``None`` keeps their default (0.1). A delta other than the default is part of :attr:`protocol_label`, so cells
    of different deltas are stored apart.
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
    dirichlet_delta: float | None = None

    def __post_init__(self) -> None:
        import_methods(self.methods)  # module:Class names and entry points: imported and registered here
        _check_names("method", self.methods, tta.list_methods())
        _check_options(self.options, self.methods)
        # fmnist-c corrupts on the fly, so only implemented corruptions exist; on-disk suites list missing files
        known = [*list_corruptions("available"), "clean"] if self.suite.dataset == "fmnist-c" else None
        _check_names("corruption", self.corruptions, known)
        _check_severities(self.severities)
        _check_device_name(self.device)
        check_seed(self.seed)  # before seeding the protocol with it
        _check_delta(self.dirichlet_delta)
        resolve_protocol(self.protocol, self.seed, self.dirichlet_delta)
        if self.runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {self.runtime!r}; choose one of {list(RUNTIMES)}")
        if self.runtime == "onnx":
            check_runtime_methods(self.methods)
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 (or omitted for every image), got {self.limit}")
        if self.suite.num_workers < 0:
            raise ValueError(f"data-loading workers must be >= 0, got {self.suite.num_workers}")
        if self.suite.per_class is not None and self.suite.per_class < 1:
            raise ValueError(f"images per class must be >= 1 (or omitted for all), got {self.suite.per_class}")
        if self.online_cost not in (None, "auto") and not float(self.online_cost) >= 1.0:
            raise ValueError(f"online cost must be 'auto' or a number >= 1, got {self.online_cost!r}")

    @property
    def stream_protocol(self) -> Protocol:
        """The protocol named by ``protocol``, seeded by ``seed`` (:func:`resolve_protocol`: looked up once)."""
        return resolve_protocol(self.protocol, self.seed, self.dirichlet_delta)

    @property
    def domains(self) -> list[Domain]:
        """Domains in benchmark order: corruption-major, severities as given; ``clean`` once, at severity 0."""
        domains = [Domain(c, 0 if c == "clean" else s) for c in self.corruptions for s in self.severities]
        return list(dict.fromkeys(domains))

    @property
    def protocol_label(self) -> str:
        """The protocol as recorded in results: ``:delta=`` for a Dirichlet concentration other than the default,
        ``+online`` for the online protocol, so cells of different settings never mix."""
        delta = self.dirichlet_delta
        label = self.protocol if delta in (None, DEFAULT_CONCENTRATION) else f"{self.protocol}:delta={float(delta)!r}"
        return label if self.online_cost is None else f"{label}+online:{self.online_cost}"


def for_seeds(spec: BenchSpec, seeds: Sequence[int]) -> list[BenchSpec]:
    """Return one copy of ``spec`` per seed, in the given order: a multi-seed run is one run per seed.

    Raises:
        ValueError: If ``seeds`` is empty, repeats a seed, or holds one outside :data:`SEEDS`.
    """
    if not seeds:
        raise ValueError("no seeds given; name at least one, e.g. 0 or 0,1,2")
    repeated = [seed for seed, count in Counter(seeds).items() if count > 1]
    if repeated:
        raise ValueError(f"seed(s) {repeated} given more than once in {list(seeds)}; list each once")
    return [replace(spec, seed=seed) for seed in seeds]


@functools.lru_cache(maxsize=16)
def resolve_protocol(name: str, seed: int, concentration: float | None = None) -> Protocol:
    """Return the protocol ``name`` seeded by ``seed``, looked up once per process and shared (protocols keep no state).

    Args:
        concentration: The Dirichlet concentration of the protocols that take one; ``None`` keeps their default.

    Raises:
        ValueError: If ``name`` is unknown (the message lists the valid names) or takes no concentration.
    """
    return get_protocol(name, seed=seed, concentration=concentration)


def _check_delta(delta: float | None) -> None:
    """Raise ``ValueError`` unless ``delta`` is ``None`` or a finite number > 0."""
    if delta is None:
        return
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < math.inf:
        raise ValueError(f"the Dirichlet concentration (--dirichlet-delta) must be a finite number > 0, got {delta!r}; "
                         f"{DEFAULT_CONCENTRATION} is the papers' setting, larger is closer to i.i.d.")


def _check_names(kind: str, names: Sequence[str], known: Sequence[str] | None) -> None:
    """Raise ``ValueError`` if ``names`` is empty, repeats a name, or has one outside ``known`` (``None``: any)."""
    if not names:
        raise ValueError(f"no {kind}s given; name at least one" + (f" of {list(known)}" if known else ""))
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:
        # rejected rather than dropped: a repeat is more often a typo for another name than a wish
        raise ValueError(f"{kind}(s) {repeated} given more than once in {list(names)}; list each once")
    unknown = [name for name in names if known is not None and name not in known]
    if unknown:
        raise ValueError(f"unknown {kind}(s) {unknown}; available: {list(known or [])}")


def _check_options(options: Mapping[str, Mapping[str, Any]], methods: Sequence[str]) -> None:
    """Raise ``ValueError`` for options given to a method the run does not have (a typo would be ignored)."""
    strays = [name for name in options if name not in methods]
    if strays:
        raise ValueError(f"options for {', '.join(map(repr, strays))}, which is not among the methods "
                         f"{list(methods)}; add it to the methods or drop its options")


def _check_severities(severities: Sequence[int]) -> None:
    """Raise ``ValueError`` unless ``severities`` is a non-empty list of distinct integers in 1..5."""
    if not severities:
        raise ValueError(f"no severities given; name at least one of {list(_SEVERITIES)}")
    wrong = [s for s in severities if isinstance(s, bool) or not isinstance(s, int) or s not in _SEVERITIES]
    if wrong:
        raise ValueError(f"severities must be integers in 1..5, got {wrong}")
    repeated = sorted(s for s, count in Counter(severities).items() if count > 1)
    if repeated:
        raise ValueError(f"severity(ies) {repeated} given more than once in {list(severities)}; list each once")


def check_seed(seed: int) -> None:
    """Raise ``ValueError`` unless ``seed`` is an integer in :data:`SEEDS` (``0 .. 2**63 - 1``)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed not in SEEDS:
        raise ValueError(f"seed must be an integer in 0..{SEEDS[-1]}, got {seed}")


def _device_count(kind: str) -> int | None:
    """Return how many ``kind`` devices this process sees; ``None`` if torch has no such backend."""
    backend = getattr(torch, kind, None)
    if kind == "cpu" or backend is None or not callable(getattr(backend, "is_available", None)):
        return 1 if kind == "cpu" else None
    return int(backend.device_count()) if backend.is_available() else 0


def _check_device_name(device: str) -> None:
    """Raise ``ValueError`` unless ``device`` is ``auto`` or names a device type torch can run on."""
    if device == "auto":
        return
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        kind = None
    if kind is None or _device_count(kind) is None:
        raise ValueError(f"unknown device {device!r}; expected cpu, cuda, cuda:N, mps or auto")


def check_device_available(device: str) -> None:
    """Raise ``ValueError`` unless this process sees ``device`` (``auto`` always resolves to one it sees).

    Call it where the units run on this machine; a Ray cluster's nodes may have devices this one lacks.
    """
    _check_device_name(device)
    resolved = torch.device(resolve_device(device))
    count = _device_count(resolved.type) or 0
    if count == 0:
        raise ValueError(f"device {device!r}: this machine has no {resolved.type} device visible to torch; "
                         "use --device cpu or auto")
    if resolved.index is not None and resolved.index >= count:
        raise ValueError(f"device {device!r}: only {count} {resolved.type} device(s) visible, "
                         f"indices 0..{count - 1}")


def resolve_device(device: str) -> str:
    """Return ``device``, with ``auto`` meaning CUDA when this process sees a GPU, else CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
