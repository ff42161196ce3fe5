"""``tta report``: render tables (markdown with mCE, CSV, JSON) and PNG plots from a results store."""

from __future__ import annotations

import argparse
from pathlib import Path

from eval.commands.bench import DEFAULT_RESULTS
from eval.commands.errors import CLIError
from eval.commands.paths import check_output_file
from eval.results.report import markdown_report, plot_error_over_domains, plot_errors, plot_protocols, protocol_table
from eval.results.records import METRICS, Record
from eval.results.tables import Results
from eval.results.store import ResultsStore

NAME = "report"
HELP = "render tables and plots from a results store"
_FILTERS = ("method", "dataset", "protocol", "severity", "seed", "batch_size", "model")
PLOT_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff")
"""Extensions the plot flags write (matplotlib picks the figure format from the extension)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the store, filters and output flags."""
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="SQLite results store")
    p.add_argument("--format", choices=["md", "csv", "json"], default="md")
    p.add_argument("--metric", choices=list(METRICS), default="error",
                   help="markdown table value: error, ece, nll, seconds, peak_memory_mb or images_per_second")
    p.add_argument("--by-protocol", action="store_true",
                   help="markdown: one row per method, one column per protocol (mean error over its cells)")
    p.add_argument("--plot-protocols", type=Path, default=None,
                   help="write a PNG bar chart of mean error per protocol and method")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG bar chart of error per domain and method")
    p.add_argument("--plot-stream", type=Path, default=None,
                   help="write a PNG line plot of error along the stream (continual protocols)")
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
    if args.by_protocol:
        markdown = lambda: protocol_table(results)  # noqa: E731
    elif args.metric != "error":
        markdown = lambda: results.to_markdown(args.metric)  # noqa: E731
    else:
        markdown = lambda: markdown_report(results)  # noqa: E731
    text = {"md": markdown, "csv": results.to_csv, "json": results.to_json}[args.format]()
    print(text)
    if args.plot is not None:
        plot_errors(results, args.plot, title=f"error per domain ({args.results.name})")
    if args.plot_protocols is not None:
        plot_protocols(results, args.plot_protocols, title="mean error per protocol")
    if args.plot_stream is not None:
        plot_error_over_domains(results, args.plot_stream, title="error along the stream")
    return 0
