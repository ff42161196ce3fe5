"""The durable results store: one SQLite row per result cell, committed as soon as it is put.

An interrupted run loses nothing and a rerun can skip the cells it already has. This module owns the
database schema and its migration: a version-1 store (before ``nll``, ``peak_memory_mb`` and ``meta``)
is upgraded in place when opened for writing, and read as it is when opened read-only.

Opening checks the file before any work is spent on it: SQLite's ``quick_check`` must pass, and a
store opened for writing must take (and roll back) a write, so a read-only file, a folder where the
journal cannot be created or a full disk is reported then, not at the first result.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from eval.results.records import COLUMNS, KEY_FIELDS, SCHEMA_VERSION, VALUE_FIELDS, CellKey, Record

__all__ = ["ResultsStore"]

logger = logging.getLogger("eval.results.tables")  # the public module's logger, which logging setups name

_NO_LIMIT = -1  # stored for ``limit=None``: SQLite treats NULLs as distinct in a primary key
_QUOTED_KEYS = ", ".join(f'"{name}"' for name in KEY_FIELDS)
_QUOTED_COLUMNS = ", ".join(f'"{name}"' for name in COLUMNS)
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
_TEXT = ("method", "options", "dataset", "model", "protocol", "corruption", "created", "meta")
_INTEGER = ("severity", "seed", "batch_size", "limit", "n")
_NULLABLE = ("nll", "peak_memory_mb")  # NULL in cells stored before these values were measured
_SQLITE_INTEGERS = range(-(2**63), 2**63)


class ResultsStore:
    """A SQLite file holding one row per result cell, each put committed at once.

    Args:
        path: Database file; created with its parent folders if absent (unless ``read_only``).
        read_only: Open an existing store for reading only: nothing is created, upgraded or written, so
            the file's bytes and modification time stay as they were.

    Raises:
        ValueError: If ``path`` exists but is not a results store of a known schema version, or is damaged
            (SQLite's ``quick_check`` fails).
        OSError: If the store cannot be opened, created or written (permissions, a full disk, a name too long,
            a missing file when ``read_only``); the message names ``path``.
    """

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._columns = COLUMNS
        try:
            self._conn = self._connect()
        except sqlite3.DatabaseError as err:
            raise _store_error(self.path, "open", err) from err
        try:
            self._initialize()
        except sqlite3.DatabaseError as err:
            self._conn.close()
            raise _store_error(self.path, "read" if read_only else "write", err) from err
        except BaseException:
            self._conn.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        """Open the connection: read-only through a ``mode=ro`` URI, else creating the file and its folders."""
        if self.read_only:
            if not self.path.is_file():
                raise FileNotFoundError(f"no results store at {self.path}")
            uri = f"file:{quote(str(self.path.absolute()))}?mode=ro"
            return sqlite3.connect(uri, uri=True, timeout=30.0)
        if str(self.path) != ":memory:":
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OSError(err.errno, f"cannot create the folder of results store {self.path}: "
                                         f"{err.strerror or err}") from err
        return sqlite3.connect(str(self.path), timeout=30.0)

    def _initialize(self) -> None:
        """Check the file, then create the tables in a new file or check (and upgrade) the schema of an existing one."""
        tables = self._check_integrity()
        if tables and "schema_version" not in tables:
            raise ValueError(f"{self.path} is an SQLite file with tables {sorted(tables)}, not a results database; "
                             "pass another path")
        if self.read_only:
            self._check_readable(tables)
            return
        with self._conn:
            self._conn.executescript(_SCHEMA)
            versions = [row[0] for row in self._conn.execute("SELECT version FROM schema_version")]
            if not versions:
                self._conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif versions == [1]:
                self._upgrade_from_v1()
            elif versions != [SCHEMA_VERSION]:
                raise ValueError(f"{self.path} has results schema version {versions}, expected [{SCHEMA_VERSION}]")
        self._check_writable()

    def _check_integrity(self) -> set[str]:
        """Return the file's table names after SQLite's ``quick_check`` passed.

        Raises:
            ValueError: If the file is not an SQLite database or ``quick_check`` finds damage.
        """
        try:
            problems = [row[0] for row in self._conn.execute("PRAGMA quick_check")]
            tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.OperationalError:
            raise  # the file could not be read (locked, unreadable): reported as an OSError
        except sqlite3.DatabaseError as err:
            raise _damaged(self.path, err) from err
        if problems != ["ok"]:
            raise _damaged(self.path, "; ".join(map(str, problems[:3])))
        return tables

    def _check_readable(self, tables: set[str]) -> None:
        """Check a store opened read-only: its tables and schema version, and which columns it has."""
        if "cells" not in tables:
            raise ValueError(f"{self.path} is not a results database (it has no cells table); pass the file that "
                             "`tta bench --results` wrote")
        versions = [row[0] for row in self._conn.execute("SELECT version FROM schema_version")]
        if versions not in ([1], [SCHEMA_VERSION]):
            raise ValueError(f"{self.path} has results schema version {versions}, expected [{SCHEMA_VERSION}]")
        stored = {row[1] for row in self._conn.execute("PRAGMA table_info(cells)")}
        self._columns = tuple(name for name in COLUMNS if name in stored)  # a version-1 store lacks some

    def _check_writable(self) -> None:
        """Take a write transaction and roll it back, so an unwritable store fails now, not at the first put."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("UPDATE schema_version SET version = version")  # opens the journal beside the file
        finally:
            if self._conn.in_transaction:
                self._conn.rollback()

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
        if self.read_only:
            raise ValueError(f"{self.path} was opened read-only; open it without read_only=True to store results")
        values = (*_key_values(record.key), *(getattr(record, name) for name in VALUE_FIELDS))
        try:
            with self._conn:
                self._conn.execute(_UPSERT, values)
        except sqlite3.OperationalError as err:
            raise _store_error(self.path, "write", err) from err
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
        """Return the records of the rows matching a WHERE clause, in insertion order.

        Raises:
            ValueError: Naming the row, if a matching row does not hold a valid record.
        """
        values = tuple(values)
        if any(isinstance(v, int) and v not in _SQLITE_INTEGERS for v in values):
            return []  # no stored integer is that large
        columns = ", ".join(f'"{name}"' for name in self._columns)
        try:
            rows = self._conn.execute(f"SELECT rowid, {columns} FROM cells {where} ORDER BY rowid", values).fetchall()
        except sqlite3.OperationalError as err:
            raise _store_error(self.path, "read", err) from err
        except sqlite3.DatabaseError as err:
            if type(err) is not sqlite3.DatabaseError:  # a misuse (a closed store), not damage
                raise
            raise _damaged(self.path, err) from err
        return [self._record(row[0], dict(zip(self._columns, row[1:]))) for row in rows]

    def _record(self, rowid: int, values: dict[str, object]) -> Record:
        """Return the record of one ``cells`` row, or raise a ``ValueError`` naming the row and what is wrong."""
        try:
            return _record_from_row(values)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{self.path}: row {rowid} of the cells table is damaged ({err}); delete it "
                             f"(DELETE FROM cells WHERE rowid = {rowid}) and rerun its cell") from err

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


def _record_from_row(values: dict[str, object]) -> Record:
    """Return the record of one ``cells`` row, its columns by name (a version-1 row lacks the newer ones).

    Raises:
        TypeError, ValueError: If a column holds a value of the wrong type or one a record cannot take.
    """
    _check_types(values)
    if values["limit"] == _NO_LIMIT:
        values["limit"] = None
    record = Record.from_dict(values)
    try:
        record.metadata  # the provenance must be a JSON object, as the JSON view reads it
    except ValueError:
        raise ValueError(f"column meta holds {record.meta!r}, not a JSON object") from None
    return record


def _check_types(values: dict[str, object]) -> None:
    """Raise ``TypeError`` naming the first column whose value has the wrong type (SQLite stores any type)."""
    for name, value in values.items():
        if name in _TEXT:
            ok = isinstance(value, str)
        elif name in _INTEGER:
            ok = isinstance(value, int)
        else:
            ok = isinstance(value, (int, float)) or (value is None and name in _NULLABLE)
        if not ok:
            raise TypeError(f"column {name} holds {value!r}")


def _damaged(path: Path, problem: object) -> ValueError:
    """Return the error for a file SQLite cannot read as a database, or finds damaged."""
    if "not a database" in str(problem):
        return ValueError(f"{path} is not a results database ({problem}); pass another path")
    return ValueError(f"{path} is damaged ({problem}); restore it from a copy, or pass another path")


def _store_error(path: Path, doing: str, err: sqlite3.DatabaseError) -> Exception:
    """Return the one-line error for ``err`` raised while opening, reading or writing the store at ``path``.

    SQLite's operational errors (permissions, a full disk, a lock, a missing folder) become ``OSError``;
    a file that is not a database, or a damaged one, a ``ValueError``.
    """
    if isinstance(err, sqlite3.OperationalError):
        return OSError(f"cannot {doing} results store {path}: {err}")
    return _damaged(path, err)
