"""Benchmark results: cell keys, records, a durable SQLite store and tables.

A *cell* is one (method, options, dataset, model, protocol, domain, seed, batch size, limit)
combination. The runner produces one :class:`Record` per cell; :class:`ResultsStore` commits
each record as soon as it is put, so an interrupted run loses nothing and a rerun can skip the
cells it already has. :class:`Results` turns records into Markdown, CSV and JSON.

This module is the public entry point: the key and record types live in :mod:`eval.results.records` and the
store, with its schema and migration, in :mod:`eval.results.store`; both are re-exported here.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable

from eval.domains import Domain
from eval.results.records import METRICS
from eval.results.records import COLUMNS, KEY_FIELDS, SCHEMA_VERSION, Metric, Record, canonical_options, parse_options

__all__ = ["Results", "row_labels", "table_cells"]


class Results(list[Record]):
    """A list of records with table views: Markdown, CSV and JSON."""

    def to_markdown(self, metric: Metric = "error", *, percent: bool = True) -> str:
        """Return a Markdown table: one row per method, one column per domain, and a mean.

        Rows come in first-seen order. A row label adds the options (or any other key field)
        that differ between records of the same method. Columns are domains in first-seen
        order, headed by the corruption name when all corrupted domains share one severity
        and by ``corruption-severity`` otherwise. Missing cells show ``–``; a mean over only
        the present cells is starred and explained under the table. The mean is over the
        corrupted domains: a ``clean`` column is shown but not averaged (noted under the table).

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
        rows, domains, cells = table_cells(self, metric)
        headers = _domain_headers(domains)
        lines = ["| method | " + " | ".join([*headers, "mean"]) + " |",
                 "|:--|" + "--:|" * (len(headers) + 1)]
        # The mean is over the corrupted domains, as the corruption benchmarks average; clean stays its own column.
        averaged = [d for d in domains if d.corruption != "clean"] or domains
        for label in rows:
            values = [cells.get((label, domain)) for domain in averaged]
            present = [v for v in values if v is not None]
            mean = (_format_value(sum(present) / len(present), percent) if present else "–") + (
                "*" if present and len(present) < len(values) else "")
            shown = ["–" if (v := cells.get((label, d))) is None else _format_value(v, percent) for d in domains]
            lines.append("| " + " | ".join([label.replace("|", "\\|"), *shown, mean]) + " |")
        if any(line.endswith("* |") for line in lines):
            lines += ["", "\\* mean over the present cells only."]
        if len(averaged) < len(domains):
            lines += ["", "mean: over the corrupted domains; clean is not included."]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """Return the records as CSV text with a header row (``limit`` empty when unlimited)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n")
        writer.writeheader()
        for record in self:
            writer.writerow({k: "" if v is None else v for k, v in record.to_dict().items()})
        return buffer.getvalue()

    def to_json(self) -> str:
        """Return the records as JSON text; :meth:`from_json` reads it back."""
        rows = [{**record.to_dict(), "options": parse_options(record.key.options), "meta": record.metadata}
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
            options = parse_options(record.key.options)
            parts.append(", ".join(f"{k}={json.dumps(v)}" for k, v in options.items()) or "defaults")
        else:
            parts.append(f"{name}={getattr(record.key, name)}")
    return f"{record.key.method} ({'; '.join(parts)})" if parts else record.key.method


_Cells = dict[tuple[str, Domain], float]


def row_labels(records: Iterable[Record], *, columns: tuple[str, ...] = ("corruption", "severity")) -> list[str]:
    """Return each record's row label: its method plus the key fields (not ``columns``) that vary for that method.

    Two records of a method that differ in protocol, seed, options, dataset, model, batch size or
    limit get different rows, so no table or summary merges cells that are not comparable.
    """
    records = list(records)
    row_fields = tuple(name for name in KEY_FIELDS if name != "method" and name not in columns)
    seen: dict[tuple[str, str], set[object]] = {}
    for record, name in ((r, n) for r in records for n in row_fields):
        seen.setdefault((record.key.method, name), set()).add(getattr(record.key, name))
    return [_row_label(record, tuple(n for n in row_fields if len(seen[record.key.method, n]) > 1))
            for record in records]


def table_cells(records: Iterable[Record], metric: str) -> tuple[list[str], list[Domain], _Cells]:
    """Return the row labels, domains and ``(label, domain) -> value`` cells of a table."""
    records = list(records)
    labels: dict[str, None] = {}
    domains: dict[Domain, None] = {}
    cells: dict[tuple[str, Domain], float] = {}
    for record, label in zip(records, row_labels(records)):
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
