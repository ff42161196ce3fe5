"""Result cells: the key identifying one benchmark cell and the record of its scores.

A *cell* is one (method, options, dataset, model, protocol, domain, seed, batch size, limit)
combination; :class:`CellKey` names it and :class:`Record` holds what the runner measured for it.
The field tuples here fix the column order of the SQLite store (:mod:`eval.results.store`) and of
the CSV/JSON views (:mod:`eval.results.tables`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal, get_args

from eval.domains import Domain

if TYPE_CHECKING:
    from eval.bench.meters import CellStats

__all__ = ["CellKey", "Record", "canonical_options", "parse_options", "Metric", "METRICS", "SCHEMA_VERSION",
           "KEY_FIELDS", "VALUE_FIELDS", "COLUMNS"]

SCHEMA_VERSION = 2  # 2 added nll, peak_memory_mb and meta; version-1 stores are upgraded in place


def canonical_options(options: Mapping[str, object]) -> str:
    """Return the canonical JSON text of a method's keyword arguments (sorted keys, no spaces).

    Raises:
        TypeError: If ``options`` is not a mapping with string keys and JSON-serializable values.

    Example:
        >>> canonical_options({"lr": 0.001, "steps": 1})
        '{"lr":0.001,"steps":1}'
    """
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise TypeError(f"options must be a mapping with string keys, got {options!r}")
    try:
        return json.dumps(dict(options), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"options must hold plain JSON values (str, int, float, bool, None, lists): {err}") from err


@dataclass(frozen=True)
class CellKey:
    """Identity of one result cell; every field is part of the store's primary key.

    Args:
        method: Registry name of the adaptation method, e.g. ``"tent"``.
        options: Canonical JSON of the method's keyword arguments (see :func:`canonical_options`).
        dataset: Dataset name, e.g. ``"fmnist-c"``.
        model: Source model identity, e.g. checkpoint name plus a sha256 prefix.
        protocol: Protocol name, e.g. ``"episodic"``.
        corruption: Corruption name, or ``"clean"``.
        severity: Severity in 1..5, 0 for ``"clean"``.
        seed: Random seed of the run.
        batch_size: Test batch size.
        limit: Number of examples per domain the run was limited to, or ``None`` for all.
    """

    method: str
    options: str
    dataset: str
    model: str
    protocol: str
    corruption: str
    severity: int
    seed: int
    batch_size: int
    limit: int | None = None

    def __post_init__(self) -> None:
        if canonical_options(parse_options(self.options)) != self.options:
            raise ValueError(f"options must be canonical JSON (use CellKey.build), got {self.options!r}")
        if self.batch_size < 1 or (self.limit is not None and self.limit < 1):
            raise ValueError(f"batch_size and limit must be positive, got {self.batch_size} and {self.limit}")
        Domain(self.corruption, self.severity)  # validates the severity range

    @classmethod
    def build(cls, method: str, options: Mapping[str, object], *, dataset: str, model: str, protocol: str,
              domain: Domain, seed: int, batch_size: int, limit: int | None = None) -> CellKey:
        """Return the key of one cell from a method's keyword arguments and a domain.

        Example:
            >>> key = CellKey.build("tent", {"lr": 1e-3}, dataset="fmnist-c", model="m", protocol="episodic",
            ...                     domain=Domain("gaussian_noise", 5), seed=0, batch_size=64)
            >>> key.options
            '{"lr":0.001}'
        """
        return cls(method, canonical_options(options), dataset, model, protocol,
                   domain.corruption, domain.severity, seed, batch_size, limit)

    @property
    def domain(self) -> Domain:
        """The cell's domain."""
        return Domain(self.corruption, self.severity)


def parse_options(text: str) -> dict[str, object]:
    """Return the options mapping stored as JSON text, raising ValueError if it is not an object."""
    try:
        value = json.loads(text)
    except (TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"options must be a JSON object string, got {text!r}") from err
    if not isinstance(value, dict):
        raise ValueError(f"options must be a JSON object string, got {text!r}")
    return value


KEY_FIELDS = tuple(f.name for f in fields(CellKey))
"""The :class:`CellKey` fields, in order: the store's primary key."""
VALUE_FIELDS = ("error", "ece", "n", "seconds", "created", "nll", "peak_memory_mb", "meta")
"""The :class:`Record` fields besides the key, in column order."""
Metric = Literal["error", "ece", "nll", "seconds", "peak_memory_mb", "images_per_second"]
METRICS: tuple[str, ...] = get_args(Metric)
_ADDED_IN_V2 = {"nll": None, "peak_memory_mb": None, "meta": "{}"}  # value fields a version-1 record lacks


@dataclass(frozen=True)
class Record:
    """The scores of one finished cell.

    Args:
        key: Which cell.
        error: Top-1 error as a fraction in ``[0, 1]``.
        ece: Expected calibration error as a fraction in ``[0, 1]``.
        n: Number of test examples scored.
        seconds: Time spent adapting and scoring the cell.
        created: When the record was made, ISO-8601 (defaults to now, UTC).
        nll: Mean negative log-likelihood (nats), if measured.
        peak_memory_mb: Peak memory while the cell ran (MiB), if measured.
        meta: Canonical JSON of the run's provenance (library and torch versions, device, data settings).
    """

    key: CellKey
    error: float
    ece: float
    n: int
    seconds: float
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    nll: float | None = None
    peak_memory_mb: float | None = None
    meta: str = "{}"

    @property
    def metadata(self) -> dict[str, object]:
        """The provenance as a dict."""
        return parse_options(self.meta)

    @property
    def images_per_second(self) -> float:
        """Throughput of the cell: images adapted and scored per second."""
        return self.n / self.seconds if self.seconds > 0 else float("inf")

    @classmethod
    def from_stats(cls, key: CellKey, stats: CellStats, meta: Mapping[str, object] | None = None) -> Record:
        """Return the record of ``key`` from a runner's finished-cell scores and the run's provenance."""
        return cls(key, stats.error, stats.ece, stats.n, stats.seconds, nll=stats.nll,
                   peak_memory_mb=stats.peak_memory_mb, meta=canonical_options(meta or {}))

    def to_dict(self) -> dict[str, object]:
        """Return a flat dict: the key fields followed by the values."""
        return {**asdict(self.key), **{name: getattr(self, name) for name in VALUE_FIELDS}}

    @classmethod
    def from_dict(cls, row: Mapping[str, object]) -> Record:
        """Return a record from a flat dict as written by :meth:`to_dict`.

        Raises:
            ValueError: If a field is missing.
        """
        row = {**_ADDED_IN_V2, **row}
        missing = [name for name in (*KEY_FIELDS, *VALUE_FIELDS) if name not in row]
        if missing:
            raise ValueError(f"record is missing fields {missing}; got fields {sorted(row)}")
        key = CellKey(**{name: row[name] for name in KEY_FIELDS})  # type: ignore[arg-type]
        return cls(key, **{name: row[name] for name in VALUE_FIELDS})  # type: ignore[arg-type]


COLUMNS = (*KEY_FIELDS, *VALUE_FIELDS)
"""Every field of a record, key fields first: the store's and the CSV's column order."""
