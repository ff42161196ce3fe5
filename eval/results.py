"""Benchmark results: cell keys, records, a durable SQLite store and tables.

A *cell* is one (method, options, dataset, model, protocol, domain, seed, batch size, limit)
combination. The runner produces one :class:`Record` per cell; :class:`ResultsStore` commits
each record as soon as it is put, so an interrupted run loses nothing and a rerun can skip the
cells it already has. :class:`Results` turns records into Markdown, CSV and JSON.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, get_args

from eval.domains import Domain

if TYPE_CHECKING:
    from eval.runner import CellStats

__all__ = ["CellKey", "Record", "ResultsStore", "Results", "canonical_options", "SCHEMA_VERSION"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2 added nll, peak_memory_mb and meta; version-1 stores are upgraded in place
_NO_LIMIT = -1  # stored for ``limit=None``: SQLite treats NULLs as distinct in a primary key


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
        if canonical_options(_parse_options(self.options)) != self.options:
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


def _parse_options(text: str) -> dict[str, object]:
    """Return the options mapping stored as JSON text, raising ValueError if it is not an object."""
    try:
        value = json.loads(text)
    except (TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"options must be a JSON object string, got {text!r}") from err
    if not isinstance(value, dict):
        raise ValueError(f"options must be a JSON object string, got {text!r}")
    return value


_KEY_FIELDS = tuple(f.name for f in fields(CellKey))
_VALUE_FIELDS = ("error", "ece", "n", "seconds", "created", "nll", "peak_memory_mb", "meta")
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
        return _parse_options(self.meta)

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
        return {**asdict(self.key), **{name: getattr(self, name) for name in _VALUE_FIELDS}}

    @classmethod
    def from_dict(cls, row: Mapping[str, object]) -> Record:
        """Return a record from a flat dict as written by :meth:`to_dict`.

        Raises:
            ValueError: If a field is missing.
        """
        row = {**_ADDED_IN_V2, **row}
        missing = [name for name in (*_KEY_FIELDS, *_VALUE_FIELDS) if name not in row]
        if missing:
            raise ValueError(f"record is missing fields {missing}; got fields {sorted(row)}")
        key = CellKey(**{name: row[name] for name in _KEY_FIELDS})  # type: ignore[arg-type]
        return cls(key, **{name: row[name] for name in _VALUE_FIELDS})  # type: ignore[arg-type]


_COLUMNS = (*_KEY_FIELDS, *_VALUE_FIELDS)
_QUOTED_KEYS = ", ".join(f'"{name}"' for name in _KEY_FIELDS)
_QUOTED_COLUMNS = ", ".join(f'"{name}"' for name in _COLUMNS)
_SELECT = f"SELECT {_QUOTED_COLUMNS} FROM cells"
_UPSERT = (f"INSERT INTO cells ({_QUOTED_COLUMNS}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
           f"ON CONFLICT ({_QUOTED_KEYS}) DO UPDATE SET "
           + ", ".join(f"{name} = excluded.{name}" for name in _VALUE_FIELDS))
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    method TEXT NOT NULL, options TEXT NOT NULL, dataset TEXT NOT NULL, model TEXT NOT NULL,
    protocol TEXT NOT NULL, corruption TEXT NOT NULL, severity INTEGER NOT NULL,
    seed INTEGER NOT NULL, batch_size INTEGER NOT NULL, "limit" INTEGER NOT NULL,
    error REAL NOT NULL, ece REAL NOT NULL, n INTEGER NOT NULL, seconds REAL NOT NULL,
    created TEXT NOT NULL, nll REAL, peak_memory_mb REAL, meta TEXT NOT NULL DEFAULT '{{}}',
    PRIMARY KEY ({_QUOTED_KEYS})
);
"""


class ResultsStore:
    """A SQLite file holding one row per result cell, each put committed at once.

    Args:
        path: Database file; created with its parent folders if absent.

    Raises:
        ValueError: If ``path`` exists but is not a results database of this schema version.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(str(path), timeout=30.0)
        except sqlite3.DatabaseError as err:
            raise ValueError(f"cannot open {self.path} as a results database ({err}); pass a file path") from err
        try:
            self._initialize()
        except BaseException:
            self._conn.close()
            raise

    def _initialize(self) -> None:
        """Create the tables in a new file, or check the schema of an existing one."""
        try:
            tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as err:
            raise ValueError(f"{self.path} is not a results database ({err}); pass another path") from err
        if tables and "schema_version" not in tables:
            raise ValueError(f"{self.path} is an SQLite file with tables {sorted(tables)}, not a results database")
        with self._conn:
            self._conn.executescript(_SCHEMA)
            versions = [row[0] for row in self._conn.execute("SELECT version FROM schema_version")]
            if not versions:
                self._conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif versions == [1]:
                self._upgrade_from_v1()
            elif versions != [SCHEMA_VERSION]:
                raise ValueError(f"{self.path} has results schema version {versions}, expected [{SCHEMA_VERSION}]")

    def _upgrade_from_v1(self) -> None:
        """Add the version-2 columns to a version-1 store (its cells are kept; new values are NULL / '{}')."""
        self._conn.execute("ALTER TABLE cells ADD COLUMN nll REAL")
        self._conn.execute("ALTER TABLE cells ADD COLUMN peak_memory_mb REAL")
        self._conn.execute("ALTER TABLE cells ADD COLUMN meta TEXT NOT NULL DEFAULT '{}'")
        self._conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        logger.info("upgraded %s from results schema 1 to %d", self.path, SCHEMA_VERSION)

    def has(self, key: CellKey) -> bool:
        """Return whether the store holds a record for ``key``."""
        return self.get(key) is not None

    def get(self, key: CellKey) -> Record | None:
        """Return the record stored for ``key``, or ``None``."""
        where = " AND ".join(f'"{name}" = ?' for name in _KEY_FIELDS)
        rows = self._select(f"WHERE {where}", _key_values(key))
        return rows[0] if rows else None

    def put(self, record: Record) -> None:
        """Insert ``record``, replacing any record of the same cell, and commit at once."""
        if not isinstance(record, Record):
            raise TypeError(f"put() expects a Record, got {type(record).__name__}")
        values = (*_key_values(record.key), *(getattr(record, name) for name in _VALUE_FIELDS))
        with self._conn:
            self._conn.execute(_UPSERT, values)
        logger.debug("stored %s", record.key)

    def records(self, **filters: str | int | None) -> list[Record]:
        """Return the stored records whose key fields equal ``filters``, in insertion order.

        Args:
            **filters: :class:`CellKey` field names and the values to match, e.g.
                ``method="tent", severity=5``.

        Raises:
            ValueError: If a filter names no key field.
        """
        unknown = sorted(set(filters) - set(_KEY_FIELDS))
        if unknown:
            raise ValueError(f"unknown record filters {unknown}; valid filters are {list(_KEY_FIELDS)}")
        clauses = [f'"{name}" = ?' for name in filters]
        values = [_NO_LIMIT if name == "limit" and value is None else value for name, value in filters.items()]
        return self._select(f"WHERE {' AND '.join(clauses)}" if clauses else "", values)

    def _select(self, where: str, values: Iterable[object]) -> list[Record]:
        """Return the records of the rows matching a WHERE clause, in insertion order."""
        rows = self._conn.execute(f"{_SELECT} {where} ORDER BY rowid", tuple(values))
        return [_record_from_row(row) for row in rows]

    def close(self) -> None:
        """Close the database connection; every put was already committed."""
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"


def _key_values(key: CellKey) -> tuple[object, ...]:
    """Return the primary-key column values of ``key`` (``limit=None`` stored as -1)."""
    return tuple(_NO_LIMIT if name == "limit" and value is None else value for name, value in asdict(key).items())


def _record_from_row(row: tuple[object, ...]) -> Record:
    """Return the record of one ``cells`` row selected in ``_COLUMNS`` order."""
    values = dict(zip(_COLUMNS, row))
    if values["limit"] == _NO_LIMIT:
        values["limit"] = None
    return Record.from_dict(values)


class Results(list[Record]):
    """A list of records with table views: Markdown, CSV and JSON."""

    def to_markdown(self, metric: Metric = "error", *, percent: bool = True) -> str:
        """Return a Markdown table: one row per method, one column per domain, and a mean.

        Rows come in first-seen order. A row label adds the options (or any other key field)
        that differ between records of the same method. Columns are domains in first-seen
        order, headed by the corruption name when all corrupted domains share one severity
        and by ``corruption-severity`` otherwise. Missing cells show ``–``; a mean over only
        the present cells is starred and explained under the table.

        Args:
            metric: Which value to show: ``error``/``ece`` (fractions), ``nll`` (nats), ``seconds``,
                ``peak_memory_mb`` or ``images_per_second``; cells without the value (older records) show ``–``.
            percent: Show error/ECE in percent with one decimal, else fractions with four.

        Raises:
            ValueError: If ``metric`` is unknown or two records fill the same table cell.
        """
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
        percent = percent and metric in ("error", "ece")
        rows, domains, cells = _table_cells(self, metric)
        headers = _domain_headers(domains)
        lines = ["| method | " + " | ".join([*headers, "mean"]) + " |",
                 "|:--|" + "--:|" * (len(headers) + 1)]
        for label in rows:
            values = [cells.get((label, domain)) for domain in domains]
            present = [v for v in values if v is not None]
            mean = (_format_value(sum(present) / len(present), percent) if present else "–") + (
                "*" if present and len(present) < len(values) else "")
            shown = ["–" if v is None else _format_value(v, percent) for v in values]
            lines.append("| " + " | ".join([label.replace("|", "\\|"), *shown, mean]) + " |")
        if any(line.endswith("* |") for line in lines):
            lines += ["", "\\* mean over the present cells only."]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """Return the records as CSV text with a header row (``limit`` empty when unlimited)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for record in self:
            writer.writerow({k: "" if v is None else v for k, v in record.to_dict().items()})
        return buffer.getvalue()

    def to_json(self) -> str:
        """Return the records as JSON text; :meth:`from_json` reads it back."""
        rows = [{**record.to_dict(), "options": _parse_options(record.key.options), "meta": record.metadata}
                for record in self]
        return json.dumps({"schema_version": SCHEMA_VERSION, "records": rows}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Results:
        """Return the records of JSON text written by :meth:`to_json`.

        Raises:
            ValueError: If the text is not such a document.
        """
        document = json.loads(text)
        if (not isinstance(document, dict) or document.get("schema_version") not in (1, SCHEMA_VERSION)
                or not isinstance(document.get("records"), list)):
            raise ValueError(f"expected a JSON object with schema_version 1 or {SCHEMA_VERSION} and a records list, "
                             f"got {text[:80]!r}")
        records = cls()
        for row in document["records"]:
            meta = row.get("meta", {})
            records.append(Record.from_dict({**row, "options": canonical_options(row["options"]),
                                             "meta": meta if isinstance(meta, str) else canonical_options(meta)}))
        return records


def _row_label(record: Record, varying: tuple[str, ...]) -> str:
    """Return the row label of ``record``: its method plus the key fields that vary for it."""
    parts = []
    for name in varying:
        if name == "options":
            options = _parse_options(record.key.options)
            parts.append(", ".join(f"{k}={json.dumps(v)}" for k, v in options.items()) or "defaults")
        else:
            parts.append(f"{name}={getattr(record.key, name)}")
    return f"{record.key.method} ({'; '.join(parts)})" if parts else record.key.method


_Cells = dict[tuple[str, Domain], float]


def _table_cells(records: Iterable[Record], metric: str) -> tuple[list[str], list[Domain], _Cells]:
    """Return the row labels, domains and ``(label, domain) -> value`` cells of a table."""
    records = list(records)
    row_fields = tuple(name for name in _KEY_FIELDS if name not in ("method", "corruption", "severity"))
    seen: dict[tuple[str, str], set[object]] = {}
    for record, name in ((r, n) for r in records for n in row_fields):
        seen.setdefault((record.key.method, name), set()).add(getattr(record.key, name))
    labels: dict[str, None] = {}
    domains: dict[Domain, None] = {}
    cells: dict[tuple[str, Domain], float] = {}
    for record in records:
        label = _row_label(record, tuple(n for n in row_fields if len(seen[record.key.method, n]) > 1))
        if (label, record.key.domain) in cells:
            raise ValueError(f"two records fill the table cell ({label}, {record.key.domain}); filter them first")
        labels.setdefault(label)
        domains.setdefault(record.key.domain)
        value = getattr(record, metric)
        if value is not None:
            cells[label, record.key.domain] = float(value)
    return list(labels), list(domains), cells


def _domain_headers(domains: list[Domain]) -> list[str]:
    """Return column headers: bare corruption names if all corrupted domains share one severity."""
    severities = {d.severity for d in domains if d.corruption != "clean"}
    return [d.corruption if len(severities) <= 1 else str(d) for d in domains]


def _format_value(value: float, percent: bool) -> str:
    """Return ``value`` as a percentage with one decimal, a fraction with four, or a plain number."""
    if percent:
        return f"{100 * value:.1f}"
    if abs(value) < 1:
        return f"{value:.4f}"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:,.0f}"
