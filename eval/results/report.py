"""Reports from the results store: captioned tables (Markdown or LaTeX) with mCE where it means something,
and figures (PNG, PDF or SVG, the format from the file's extension; matplotlib, imported lazily).

Every figure of a report shows its rows in the table's order, each method in one colour that depends on the
method's name only (so it is the same in every figure and every report), variants of a method told apart by
hatching or line style, the legend outside the axes, and error bars over seeds where a cell has several.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from tta.files import write_atomically
from tta.registry import list_methods
from eval.results.baselines import ALEXNET_ERRORS
from eval.domains import Domain
from eval.metrics import mean_corruption_error
from eval.results.records import Metric, Record
from eval.results.tables import (METRIC_LABELS, Results, domain_headers, format_mean, markdown_table, mean_and_spread,
                                 row_labels, table_cells, table_samples)

__all__ = ["dataset_label", "mce_by_method", "plot_errors", "plot_error_over_domains", "markdown_report", "latex_report",
           "latex_table", "protocol_means", "protocol_table", "plot_protocols", "IMAGENET_C"]

IMAGENET_C = "imagenet-c"
"""The dataset (first part of a stored dataset id) the AlexNet normalizers of mCE belong to."""
TableFormat = Literal["md", "tex"]
_Summary = tuple[float, float | None]  # a bar or point: mean, and its spread over seeds if known
_HATCHES = ("", "//", "..", "xx", "\\\\", "--")
_LINESTYLES = ("-", "--", ":", "-.")


def _errors_by_method(results: Results) -> dict[str, dict[Domain, float]]:
    """Return ``row label -> domain -> error`` (mean over seeds), rows labelled as in the error table.

    Raises:
        ValueError: If two records fill one cell for one seed (filter the results first), as the error table does.
    """
    labels, _, cells = table_cells(results, "error")
    table: dict[str, dict[Domain, float]] = {label: {} for label in labels}
    for (label, domain), error in cells.items():
        table[label][domain] = error
    return table


def mce_by_method(results: Results) -> dict[str, float]:
    """Return mCE (AlexNet-normalized, fraction) per method over the corruptions that have normalizers."""
    out = {}
    for method, errors in _errors_by_method(results).items():
        usable = {d: e for d, e in errors.items() if d.corruption in ALEXNET_ERRORS}
        if usable:
            out[method] = mean_corruption_error(usable)
    return out


def dataset_label(dataset: str) -> str:
    """Return a stored dataset id with what it is where the id alone could mislead.

    ``fmnist-c`` is the Fashion-MNIST test set corrupted on the fly with CIFAR-10-C's severity tables
    (or ImageNet-C's, ``/imagenet-table``): not Weiss and Tonella's published Fashion-MNIST-C (2022).
    """
    if dataset.split("/")[0] == "fmnist-c":
        table = "ImageNet-C" if dataset.endswith("/imagenet-table") else "CIFAR-10-C"
        return f"{dataset} (Fashion-MNIST + {table} severities)"
    return dataset


def _caption(results: Results, metric: Metric, what: str) -> str:
    """Return a table's caption: the metric with its unit, and the dataset/protocol when one holds for all rows."""
    parts = [f"{METRIC_LABELS[metric]} {what}"]
    for name in ("dataset", "protocol"):
        values = {getattr(r.key, name) for r in results}
        if len(values) == 1 and not (name == "protocol" and what == "per protocol"):
            value = values.pop()
            parts.append(f"{name} {dataset_label(value) if name == 'dataset' else value}")
    return "; ".join(parts)


def _mce_table(results: Results) -> tuple[list[str], list[list[str]], list[str]] | None:
    """Return the mCE table with its caveats, or ``None`` where mCE means nothing (not ImageNet-C, no normalizers).

    mCE divides by AlexNet's ImageNet-C errors, so it is shown for ImageNet-C only; on a subset of its
    corruptions or severities it is labelled as not comparable with published mCE (15 corruptions × 5 severities).
    """
    if {r.key.dataset.split("/")[0] for r in results} != {IMAGENET_C}:
        return None
    mce = mce_by_method(results)
    if not mce:
        return None
    covered = {r.key.domain for r in results if r.key.corruption in ALEXNET_ERRORS}
    corruptions = {d.corruption for d in covered}
    notes = ["mCE: corruption error normalized by AlexNet's (Hendrycks & Dietterich, 2019)."]
    if len(covered) < 5 * len(ALEXNET_ERRORS):
        severities = ",".join(str(s) for s in sorted({d.severity for d in covered}))
        notes.append(f"mCE over {len(corruptions)} of {len(ALEXNET_ERRORS)} corruptions at severities {severities}: "
                     "not comparable with published mCE (all 15 corruptions at severities 1-5).")
    return ["method", "mCE (%)"], [[m, f"{100 * v:.1f}"] for m, v in mce.items()], notes


def markdown_report(results: Results, metric: Metric = "error") -> str:
    """Return the captioned table of ``metric`` per domain, and for the error on ImageNet-C the mCE table."""
    return _report(results, metric, "md")


def latex_report(results: Results, metric: Metric = "error") -> str:
    """Return :func:`markdown_report`'s tables as LaTeX (booktabs)."""
    return _report(results, metric, "tex")


def _report(results: Results, metric: Metric, fmt: TableFormat) -> str:
    """Return the per-domain table and, where it applies, the mCE table, in ``fmt``."""
    parts = [_render(_caption(results, metric, "per domain"), *results.table(metric), fmt)]
    mce = _mce_table(results) if metric == "error" else None
    if mce is not None:
        parts.append(_render("mCE (%)", *mce, fmt))
    elif metric == "error":
        note = "mCE is not shown: its AlexNet normalizers are for ImageNet-C only.\n"
        parts.append(f"% {note}" if fmt == "tex" else note)
    return "\n".join(parts)


def _render(caption: str, header: list[str], rows: list[list[str]], notes: list[str], fmt: TableFormat) -> str:
    """Return a captioned table in Markdown or LaTeX."""
    if fmt == "tex":
        return latex_table(caption, header, rows, notes)
    return f"{caption}\n\n{markdown_table(header, rows, notes)}"


def latex_table(caption: str, header: list[str], rows: list[list[str]], notes: list[str]) -> str:
    """Return a LaTeX ``table`` with a booktabs ``tabular`` (first column left, the rest right) and its notes."""
    def cell(text: str) -> str:
        return _latex_escape(text).replace("±", "$\\pm$").replace("–", "--")

    lines = ["\\begin{table}", "\\centering", f"\\caption{{{cell(caption)}}}",
             f"\\begin{{tabular}}{{l{'r' * (len(header) - 1)}}}", "\\toprule",
             " & ".join(cell(h) for h in header) + " \\\\", "\\midrule"]
    lines += [" & ".join(cell(c) for c in row) + " \\\\" for row in rows]
    lines += ["\\bottomrule", "\\end{tabular}"]
    if notes:
        lines += ["\\par\\smallskip\\footnotesize " + " ".join(cell(n) for n in notes)]
    return "\n".join([*lines, "\\end{table}"]) + "\n"


def _latex_escape(text: str) -> str:
    """Return ``text`` with LaTeX's special characters escaped."""
    special = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_", "{": "\\{",
               "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}"}
    return "".join(special.get(ch, ch) for ch in text)


_ProtocolCells = dict[str, dict[str, dict[Domain, dict[int, float]]]]


def _protocol_cells(results: Results, metric: Metric) -> tuple[_ProtocolCells, dict[str, list[Domain]]]:
    """Return ``row label -> protocol -> domain -> seed -> value`` and each protocol's averaged domains.

    Rows are split by every other varying key field; as in the error table, the clean domain is left out of a
    protocol's mean unless the protocol has no other.
    """
    cells: _ProtocolCells = {}
    for record, label in zip(results, row_labels(results, columns=("corruption", "severity", "protocol"))):
        value = getattr(record, metric)
        by_seed = cells.setdefault(label, {}).setdefault(record.key.protocol, {}).setdefault(record.key.domain, {})
        if value is not None:
            by_seed[record.key.seed] = float(value)
    domains: dict[str, list[Domain]] = {}
    for record in results:
        domains.setdefault(record.key.protocol, [])
        if record.key.domain not in domains[record.key.protocol]:
            domains[record.key.protocol].append(record.key.domain)
    averaged = {p: [d for d in ds if d.corruption != "clean"] or ds for p, ds in domains.items()}
    return cells, averaged


def _protocol_summaries(results: Results, metric: Metric) -> dict[str, dict[str, tuple[float, float | None, bool]]]:
    """Return ``row label -> protocol -> (mean, spread over seeds, partial)`` over each protocol's domains."""
    cells, domains = _protocol_cells(results, metric)
    out: dict[str, dict[str, tuple[float, float | None, bool]]] = {}
    for label, by_protocol in cells.items():
        for protocol, by_domain in by_protocol.items():
            summary = mean_and_spread([by_domain.get(d) for d in domains[protocol]])
            if summary is not None:
                out.setdefault(label, {})[protocol] = summary
    return out


def protocol_means(results: Results, metric: Metric = "error") -> dict[str, dict[str, float]]:
    """Return the mean ``metric`` of each method under each protocol, over that protocol's corrupted cells."""
    return {label: {p: s[0] for p, s in by_protocol.items()}
            for label, by_protocol in _protocol_summaries(results, metric).items()}


def protocol_table(results: Results, metric: Metric = "error", fmt: TableFormat = "md") -> str:
    """Return a captioned table: one row per method, one column per protocol (its mean over the protocol's
    corrupted domains; ``± std`` over seeds; starred where the row lacks some of the column's domains)."""
    cells, domains = _protocol_cells(results, metric)
    percent = metric in ("error", "ece")
    header = ["method", *(f"{p} ({len(ds)} domains)" for p, ds in domains.items())]
    rows = [[label, *(format_mean([by_protocol[p].get(d) for d in ds], percent) if p in by_protocol else "–"
                      for p, ds in domains.items())] for label, by_protocol in cells.items()]
    notes = []
    if any(c.endswith("*") for row in rows for c in row[1:]):
        notes.append("* mean over fewer domains than the column's: not comparable with the other rows.")
    if any("±" in c for row in rows for c in row[1:]):
        notes.append("mean ± sample standard deviation of the per-seed means.")
    return _render(_caption(results, metric, "per protocol"), header, rows, notes, fmt)


def plot_protocols(results: Results, path: str | os.PathLike[str], *, metric: Metric = "error",
                   title: str = "") -> Path:
    """Write a grouped bar chart: mean ``metric`` per protocol (x) per method (bars), error bars over seeds."""
    summaries = _protocol_summaries(results, metric)
    protocols = list(dict.fromkeys(r.key.protocol for r in results))
    table = {label: [by_protocol.get(p, (float("nan"), None))[:2] for p in protocols]
             for label, by_protocol in summaries.items()}
    methods = _label_methods(results, ("corruption", "severity", "protocol"))
    return _grouped_bars(table, methods, protocols, path, metric=metric, width_per_group=1.3, rotation=20,
                         title=title)


def plot_errors(results: Results, path: str | os.PathLike[str], *, metric: Metric = "error", title: str = "") -> Path:
    """Write a grouped bar chart: ``metric`` per domain and its mean (x) per method (bars), error bars over seeds."""
    labels, domains, samples = table_samples(results, metric)
    averaged = [d for d in domains if d.corruption != "clean"] or domains
    table = {}
    for label in labels:
        bars = [_summary([samples.get((label, d))]) for d in domains]
        table[label] = [*bars, _summary([samples.get((label, d)) for d in averaged])]
    return _grouped_bars(table, _label_methods(results), [*domain_headers(domains), "mean"], path, metric=metric,
                         width_per_group=0.4 * max(len(table), 1), rotation=45, title=title)


def plot_error_over_domains(results: Results, path: str | os.PathLike[str], *, metric: Metric = "error",
                            title: str = "") -> Path:
    """Write a line plot of ``metric`` along the stream's domain order (continual / gradual streams)."""
    plt = _pyplot()
    labels, domains, samples = table_samples(results, metric)
    scale = _scale(metric)
    styles = _styles(labels, _label_methods(results))
    fig, ax = plt.subplots(figsize=(8.0, 4.0))
    for label in labels:
        points = [_summary([samples.get((label, d))]) for d in domains]
        colour, variant = styles[label]
        ax.errorbar(range(len(domains)), [scale * m for m, _ in points], yerr=_yerr(points, scale), marker="o",
                    capsize=2, color=colour, linestyle=_LINESTYLES[variant % len(_LINESTYLES)], label=label)
    ax.set_xticks(range(len(domains)), domain_headers(domains), rotation=45, ha="right")
    ax.set_ylabel(METRIC_LABELS[metric])
    ax.set_xlabel("domain, in stream order")
    _finish(plt, fig, ax, path, title)
    return Path(path)


def _summary(cells: list[dict[int, float] | None]) -> _Summary:
    """Return a bar's height and spread over seeds (NaN height where no cell is present)."""
    summary = mean_and_spread(cells)
    return (float("nan"), None) if summary is None else summary[:2]


def _yerr(points: Sequence[_Summary], scale: float) -> list[float] | None:
    """Return the error bars of ``points`` (NaN, drawing none, where a spread is unknown); ``None`` if none has one."""
    if all(spread is None for _, spread in points):
        return None
    return [float("nan") if spread is None else scale * spread for _, spread in points]


def _scale(metric: Metric) -> float:
    """Return the factor from stored values to plotted ones (error and ECE in percent)."""
    return 100.0 if metric in ("error", "ece") else 1.0


def _label_methods(records: Sequence[Record], columns: tuple[str, ...] = ("corruption", "severity")) -> dict[str, str]:
    """Return ``row label -> method`` for the rows :func:`row_labels` makes of ``records``."""
    return dict(zip(row_labels(records, columns=columns), (r.key.method for r in records)))


def _styles(labels: Sequence[str], methods: Mapping[str, str]) -> dict[str, tuple[Any, int]]:
    """Return ``row label -> (colour, variant)``: the colour fixed by the method's name, the variant its nth row.

    Registered methods take the colours of matplotlib's ``tab10`` cycle in registry order; others follow them
    in name order. A method's second, third... row (other options, protocol...) is variant 1, 2...
    """
    plt = _pyplot()
    known = list_methods()
    others = sorted({methods[label] for label in labels} - set(known))
    palette = plt.get_cmap("tab10").colors
    out: dict[str, tuple[Any, int]] = {}
    for label in labels:
        method = methods[label]
        index = known.index(method) if method in known else len(known) + others.index(method)
        out[label] = (palette[index % len(palette)], sum(methods[other] == method for other in out))
    return out


def _grouped_bars(table: Mapping[str, Sequence[_Summary]], methods: Mapping[str, str], groups: Sequence[str],
                  path: str | os.PathLike[str], *, metric: Metric, width_per_group: float, rotation: int,
                  title: str) -> Path:
    """Write a bar chart with one group per entry of ``groups`` and one bar per row of ``table`` (stored values)."""
    plt = _pyplot()
    scale = _scale(metric)
    styles = _styles(list(table), methods)
    width = 0.8 / max(len(table), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, width_per_group * len(groups)), 4.0))
    for i, (label, bars) in enumerate(table.items()):
        colour, variant = styles[label]
        ax.bar([j + i * width for j in range(len(groups))], [scale * m for m, _ in bars], width,
               yerr=_yerr(bars, scale), capsize=2, color=colour,
               hatch=_HATCHES[variant % len(_HATCHES)], edgecolor="white" if variant else None, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], list(groups), rotation=rotation, ha="right")
    ax.set_ylabel(METRIC_LABELS[metric])
    _finish(plt, fig, ax, path, title)
    return Path(path)


def _finish(plt: ModuleType, fig: Any, ax: Any, path: str | os.PathLike[str], title: str) -> None:
    """Title the figure, put the legend outside the axes (so it never covers data) and write it."""
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small", frameon=False)
    fig.tight_layout()
    _save(plt, fig, path)


def _save(plt: ModuleType, fig: Any, path: str | os.PathLike[str]) -> None:
    """Write ``fig`` to ``path`` atomically (missing folders created, the format from its extension) and close it."""
    image_format = Path(path).suffix[1:].lower() or "png"
    try:
        write_atomically(path, lambda handle: fig.savefig(handle, format=image_format, dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _pyplot() -> ModuleType:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install '.[report]' in a checkout of this project") from error
    return plt
