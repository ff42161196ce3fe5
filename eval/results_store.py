"""The durable results store: one SQLite row per result cell, committed as soon as it is put.

An interrupted run loses nothing and a rerun can skip the cells it already has. This module owns the
database schema and its migration: a version-1 store (before ``nll``, ``peak_memory_mb`` and ``meta``)
is upgraded in place when opened.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from types import TracebackType

from eval.records import COLUMNS, KEY_FIELDS, SCHEMA_VERSION, VALUE_FIELDS, CellKey, Record

__all__ = ["ResultsStore"]

logger = logging.getLogger("eval.results")  # the public module's logger, which logging setups name

_NO_LIMIT = -1  # stored for ``limit=None``: SQLite treats NULLs as distinct in a primary key
_QUOTED_KEYS = ", ".join(f'"{name}"' for name in KEY_FIELDS)
_QUOTED_COLUMNS = ", ".join(f'"{name}"' for name in COLUMNS)
_SELECT = f"SELECT {_QUOTED_COLUMNS} FROM cells"
_UPSERT = (f"INSERT INTO cells ({_QUOTED_COLUMNS}) VALUES ({', '.join('?' * len(COLUMNS))}) "
           f"ON CONFLICT ({_QUOTED_KEYS}) DO UPDATE SET "
           + ", ".join(f"{name} = excluded.{name}" for name in VALUE_FIELDS))
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
        where = " AND ".join(f'"{name}" = ?' for name in KEY_FIELDS)
        rows = self._select(f"WHERE {where}", _key_values(key))
        return rows[0] if rows else None

    def put(self, record: Record) -> None:
        """Insert ``record``, replacing any record of the same cell, and commit at once."""
        if not isinstance(record, Record):
            raise TypeError(f"put() expects a Record, got {type(record).__name__}")
        values = (*_key_values(record.key), *(getattr(record, name) for name in VALUE_FIELDS))
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
        unknown = sorted(set(filters) - set(KEY_FIELDS))
        if unknown:
            raise ValueError(f"unknown record filters {unknown}; valid filters are {list(KEY_FIELDS)}")
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
    """Return the record of one ``cells`` row selected in ``COLUMNS`` order."""
    values = dict(zip(COLUMNS, row))
    if values["limit"] == _NO_LIMIT:
        values["limit"] = None
    return Record.from_dict(values)
