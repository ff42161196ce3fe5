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
import statistics
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from eval.domains import Domain
from eval.results.records import METRICS
from eval.results.records import COLUMNS, KEY_FIELDS, SCHEMA_VERSION, Metric, Record, canonical_options, parse_options
from tta.registry import method_options

__all__ = ["Results", "row_labels", "table_cells", "table_samples", "METRIC_LABELS",
           "markdown_table", "domain_headers", "format_cell", "format_mean", "mean_and_spread"]

METRIC_LABELS: Mapping[str, str] = MappingProxyType({
    "error": "top-1 error (%)", "ece": "ECE (%)", "nll": "NLL (nats)", "seconds": "time per cell (s)",
    "peak_memory_mb": "peak memory (MiB)", "images_per_second": "throughput (images/s)",
})
"""Each metric's name and unit, as the report's tables and figures show them (error and ECE in percent)."""


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
        A cell the store holds for several seeds shows ``mean ± std`` over them (noted under the table).

        Args:
            metric: Which value to show: ``error``/``ece`` (fractions), ``nll`` (nats), ``seconds``,
                ``peak_memory_mb`` or ``images_per_second``; cells without the value (older records) show ``–``.
            percent: Show error/ECE in percent with one decimal, else fractions with four.

        Raises:
            ValueError: If ``metric`` is unknown or two records fill the same table cell.
        """
        return markdown_table(*self.table(metric, percent=percent))

    def table(self, metric: Metric = "error", *, percent: bool = True) -> tuple[list[str], list[list[str]], list[str]]:
        """Return the table of :meth:`to_markdown` as its header, its rows of cell texts and the notes under it.

        Raises:
            ValueError: If ``metric`` is unknown or two records fill the same table cell.
        """
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
        percent = percent and metric in ("error", "ece")
        labels, domains, samples = table_samples(self, metric)
        # The mean is over the corrupted domains, as the corruption benchmarks average; clean stays its own column.
        averaged = [d for d in domains if d.corruption != "clean"] or domains
        rows = []
        for label in labels:
            shown = [format_cell(samples.get((label, d)), percent) for d in domains]
            rows.append([label, *shown, format_mean([samples.get((label, d)) for d in averaged], percent)])
        notes = []
        if any(row[-1].endswith("*") for row in rows):
            notes.append("* mean over the present cells only.")
        if len(averaged) < len(domains):
            notes.append("mean: over the corrupted domains; clean is not included.")
        seeds = _seed_note(samples.values())
        if seeds:
            notes.append(seeds)
        return ["method", *domain_headers(domains), "mean"], rows, notes

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


_Cells = dict[tuple[str, Domain], float]


def _effective_options(method: str, text: str, declared: dict[str, dict[str, object]]) -> dict[str, object]:
    """Return the options a cell ran with: the method's declared defaults under the stored ones.

    ``declared`` caches each method's defaults; a method this installation does not know keeps its stored options.
    """
    if method not in declared:
        try:
            declared[method] = {name: option.default for name, option in method_options(method).items()}
        except ValueError:
            declared[method] = {}
    return {**declared[method], **parse_options(text)}


def _option_text(value: object) -> str:
    """Return an option value as a row label shows it (JSON where it can)."""
    return json.dumps(value, default=str)


def row_labels(records: Iterable[Record], *, columns: tuple[str, ...] = ("corruption", "severity")) -> list[str]:
    """Return each record's row label: its method plus the key fields (not ``columns``) that tell rows apart.

    Seeds are pooled (a cell holds one value per seed). A key field that varies anywhere in ``records``
    (protocol, dataset, model, batch size, limit) is named in every row, so rows of a mixed store read alike;
    the options are named by their effective values (declared defaults under the stored ones), those that
    vary between records of the same method. No table or summary merges cells that are not comparable.
    """
    records = list(records)
    fields = [n for n in KEY_FIELDS if n not in ("method", "options", "seed", *columns)]
    varying = [n for n in fields if len({getattr(r.key, n) for r in records}) > 1]
    declared: dict[str, dict[str, object]] = {}
    options = [_effective_options(r.key.method, r.key.options, declared) for r in records]
    names: dict[str, dict[str, None]] = {}  # method -> every option name any of its records has, in order
    for record, effective in zip(records, options):
        names.setdefault(record.key.method, {}).update(dict.fromkeys(effective))
    seen: dict[tuple[str, str], set[str]] = {}
    for record, effective in zip(records, options):
        for name in names[record.key.method]:
            seen.setdefault((record.key.method, name), set()).add(_option_text(effective.get(name)))
    labels = []
    for record, effective in zip(records, options):
        parts = [f"{name}={getattr(record.key, name)}" for name in varying]
        shown = [name for name in names[record.key.method] if len(seen[record.key.method, name]) > 1]
        if shown and "options" not in columns:
            parts.append(", ".join(f"{name}={_option_text(effective.get(name))}" for name in shown))
        labels.append(f"{record.key.method} ({'; '.join(parts)})" if parts else record.key.method)
    return labels


_Samples = dict[tuple[str, Domain], dict[int, float]]


def table_samples(records: Iterable[Record], metric: str) -> tuple[list[str], list[Domain], _Samples]:
    """Return the row labels, domains and ``(label, domain) -> seed -> value`` cells of a table.

    Raises:
        ValueError: If two records fill one cell for the same seed (filter them first).
    """
    records = list(records)
    labels: dict[str, None] = {}
    domains: dict[Domain, None] = {}
    samples: _Samples = {}
    filled: set[tuple[str, Domain, int]] = set()
    for record, label in zip(records, row_labels(records)):
        if (label, record.key.domain, record.key.seed) in filled:
            raise ValueError(f"two records fill the table cell ({label}, {record.key.domain}) for seed "
                             f"{record.key.seed}; filter them first")
        filled.add((label, record.key.domain, record.key.seed))
        labels.setdefault(label)
        domains.setdefault(record.key.domain)
        value = getattr(record, metric)
        if value is not None:
            samples.setdefault((label, record.key.domain), {})[record.key.seed] = float(value)
    return list(labels), list(domains), samples


def table_cells(records: Iterable[Record], metric: str) -> tuple[list[str], list[Domain], _Cells]:
    """Return the row labels, domains and ``(label, domain) -> value`` cells of a table (the mean over seeds)."""
    labels, domains, samples = table_samples(records, metric)
    return labels, domains, {cell: statistics.fmean(values.values()) for cell, values in samples.items()}


def domain_headers(domains: list[Domain]) -> list[str]:
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


def markdown_table(header: list[str], rows: list[list[str]], notes: list[str]) -> str:
    """Return a Markdown table (first column left-aligned, the rest right-aligned) followed by its notes."""
    lines = ["| " + " | ".join(header) + " |", "|:--|" + "--:|" * (len(header) - 1)]
    lines += ["| " + " | ".join([row[0].replace("|", "\\|"), *row[1:]]) + " |" for row in rows]
    for note in notes:
        lines += ["", "\\" + note if note.startswith("*") else note]
    return "\n".join(lines) + "\n"


def format_cell(cell: Mapping[int, float] | None, percent: bool) -> str:
    """Return a cell's value, ``mean ± std`` over its seeds when it has several, or ``–`` when it has none."""
    if not cell:
        return "–"
    values = list(cell.values())
    shown = _format_value(statistics.fmean(values), percent)
    return shown + (f" ± {_format_value(statistics.stdev(values), percent)}" if len(values) > 1 else "")


def mean_and_spread(cells: list[dict[int, float] | None]) -> tuple[float, float | None, bool] | None:
    """Return the mean over ``cells`` (each ``seed -> value``), its spread over seeds and whether cells are missing.

    The spread is the sample standard deviation of the per-seed means, given only when every cell is present
    and all hold the same two or more seeds, so it measures how much the number moves with the seed.
    ``None`` when no cell is present.
    """
    present = [cell for cell in cells if cell]
    if not present:
        return None
    seeds = set(present[0])
    if len(present) == len(cells) and len(seeds) > 1 and all(set(cell) == seeds for cell in present):
        per_seed = [statistics.fmean(cell[s] for cell in present) for s in sorted(seeds)]
        return statistics.fmean(per_seed), statistics.stdev(per_seed), False
    return statistics.fmean(statistics.fmean(cell.values()) for cell in present), None, len(present) < len(cells)


def format_mean(cells: list[dict[int, float] | None], percent: bool) -> str:
    """Return a row's mean over ``cells`` as :func:`mean_and_spread` finds it: ``± std``, or starred when partial."""
    summary = mean_and_spread(cells)
    if summary is None:
        return "–"
    mean, spread, partial = summary
    shown = _format_value(mean, percent)
    return shown + (f" ± {_format_value(spread, percent)}" if spread is not None else "") + ("*" if partial else "")


def _seed_note(cells: Iterable[Mapping[int, float]]) -> str:
    """Return the note explaining ``±`` when some cell holds several seeds, else an empty string."""
    pooled = [cell for cell in cells if len(cell) > 1]
    if not pooled:
        return ""
    counts = sorted({len(cell) for cell in pooled})
    seeds = sorted({seed for cell in pooled for seed in cell})
    how_many = f"{counts[0]} seeds" if len(counts) == 1 else f"{counts[0]}–{counts[-1]} seeds per cell"
    return (f"mean ± sample standard deviation over {how_many} ({', '.join(map(str, seeds))}); "
            "the mean column's ± is over the per-seed means.")
