"""``tta report``: render tables (Markdown with mCE where it applies, LaTeX, CSV, JSON) and figures from a results
store."""

from __future__ import annotations

import argparse
from pathlib import Path

from eval.commands.bench import DEFAULT_RESULTS
from eval.commands.errors import CLIError
from eval.commands.paths import check_output_file
from eval.commands.help import show_defaults
from eval.commands.output import print_output
from eval.results.report import (latex_report, markdown_report, plot_error_over_domains, plot_errors, plot_protocols,
                                 protocol_table)
from eval.results.records import METRICS, Record
from eval.results.tables import METRIC_LABELS, Results
from eval.results.store import ResultsStore

NAME = "report"
HELP = "render tables and plots from a results store"
_FILTERS = ("method", "dataset", "protocol", "severity", "seed", "batch_size", "model")
PLOT_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff")
"""Extensions the plot flags write (matplotlib picks the figure format from the extension)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the store, filters and output flags."""
    show_defaults(p)
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="SQLite results store")
    p.add_argument("--format", choices=["md", "tex", "csv", "json"], default="md",
                   help="output format: md (Markdown tables), tex (LaTeX tables, booktabs), csv or json (the records)")
    p.add_argument("--metric", choices=list(METRICS), default="error",
                   help="value of the tables and figures: error, ece, nll, seconds, peak_memory_mb or "
                        "images_per_second")
    p.add_argument("--by-protocol", action="store_true",
                   help="one row per method, one column per protocol (mean over its corrupted domains)")
    figure = "(PNG, PDF or SVG, chosen by the extension)"
    p.add_argument("--plot-protocols", type=Path, default=None,
                   help=f"write a bar chart of the mean per protocol and method {figure}")
    p.add_argument("--plot", type=Path, default=None,
                   help=f"write a bar chart of the metric per domain and its mean, per method {figure}")
    p.add_argument("--plot-stream", type=Path, default=None,
                   help=f"write a line plot of the metric along the stream (continual protocols) {figure}")
    for name in _FILTERS:
        kind = int if name in ("severity", "seed", "batch_size") else str
        what = "stored dataset id (e.g. fmnist-c/corruptions-v2)" if name == "dataset" else name
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None, help=f"keep only this {what}")


def _stored_values(records: list[Record], filters: dict[str, object]) -> str:
    """Return ``"; stored <filter> values: ..."`` for each filter, so a mistyped value shows what to use."""
    parts = []
    for name in filters:
        values = sorted({str(getattr(record.key, name)) for record in records})
        if values:
            parts.append(f"stored {name} values: {', '.join(values)}")
    return "".join(f"; {part}" for part in parts)


def run(args: argparse.Namespace) -> int:
    """Print the table in the chosen format and write the requested plots (each atomically).

    The store is opened read-only, so a report never changes it; a file that is not a results store,
    or a row that does not hold a valid record (named by its rowid), is refused with exit code 2.
    """
    for flag in ("--plot", "--plot-protocols", "--plot-stream"):
        path = getattr(args, flag[2:].replace("-", "_"))
        if path is not None:
            check_output_file(path, flag, suffixes=PLOT_FORMATS)
    if not args.results.is_file():
        raise CLIError(f"no results store at {args.results}; run `tta bench --results {args.results}` first")
    filters = {name: getattr(args, name) for name in _FILTERS if getattr(args, name) is not None}
    with ResultsStore(args.results, read_only=True) as store:  # a report never changes the file
        results = Results(store.records(**filters))
        stored = store.records() if not results else []
    if not results:
        raise CLIError(f"no records in {args.results} match {filters or 'anything'}{_stored_values(stored, filters)}")
    print_output(_text(results, args))
    label = METRIC_LABELS[args.metric]
    if args.plot is not None:
        plot_errors(results, args.plot, metric=args.metric, title=f"{label} per domain")
    if args.plot_protocols is not None:
        plot_protocols(results, args.plot_protocols, metric=args.metric, title=f"mean {label} per protocol")
    if args.plot_stream is not None:
        plot_error_over_domains(results, args.plot_stream, metric=args.metric, title=f"{label} along the stream")
    return 0


def _text(results: Results, args: argparse.Namespace) -> str:
    """Return the report's text in the chosen format: the tables (md/tex) or the records (csv/json)."""
    if args.format == "csv":
        return results.to_csv()
    if args.format == "json":
        return results.to_json()
    if args.by_protocol:
        return protocol_table(results, args.metric, args.format)
    return (latex_report if args.format == "tex" else markdown_report)(results, args.metric)


