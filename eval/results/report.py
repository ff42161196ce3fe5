"""Reports from the results store: tables with mCE, and PNG plots (matplotlib, imported lazily)."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from tta.files import write_atomically
from eval.results.baselines import ALEXNET_ERRORS
from eval.domains import Domain
from eval.metrics import mean_corruption_error
from eval.results.tables import Results, row_labels, table_cells

__all__ = ["mce_by_method", "plot_errors", "plot_error_over_domains", "markdown_report", "protocol_means",
           "protocol_table", "plot_protocols"]

K = TypeVar("K", bound=Hashable)


def _errors_by_method(results: Results) -> dict[str, dict[Domain, float]]:
    """Return ``row label -> domain -> error``, rows labelled as in the error table (no two cells merged).

    Raises:
        ValueError: If two records fill one cell (filter the results first), as the error table does.
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


def markdown_report(results: Results) -> str:
    """Return the error table followed by an mCE table (AlexNet normalizers; a reference only for ImageNet-C)."""
    lines = [results.to_markdown(), ""]
    mce = mce_by_method(results)
    if mce:
        lines += ["| method | mCE (%) |", "|:--|--:|"] + [f"| {m} | {100 * v:.1f} |" for m, v in mce.items()]
    return "\n".join(lines)


def _protocol_cells(results: Results) -> dict[str, dict[str, list[float]]]:
    """Return ``row label -> protocol -> errors of its cells``, rows split by every other varying key field."""
    cells: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record, label in zip(results, row_labels(results, columns=("corruption", "severity", "protocol"))):
        cells[label][record.key.protocol].append(record.error)
    return cells


def protocol_means(results: Results) -> dict[str, dict[str, float]]:
    """Return the mean error (fraction) of each method under each protocol, over that protocol's cells."""
    cells = _protocol_cells(results)
    return {m: {p: sum(v) / len(v) for p, v in by_protocol.items()} for m, by_protocol in cells.items()}


def protocol_table(results: Results) -> str:
    """Return a markdown table: one row per method, one column per protocol (mean error %, its cells)."""
    cells, means = _protocol_cells(results), protocol_means(results)
    protocols = list(dict.fromkeys(r.key.protocol for r in results))
    counts = {p: len({r.key.domain for r in results if r.key.protocol == p}) for p in protocols}
    lines = ["| method | " + " | ".join(f"{p} ({counts[p]} domains)" for p in protocols) + " |",
             "|:--|" + "--:|" * len(protocols)]
    partial = False
    for method, by_protocol in means.items():
        shown = []
        for p in protocols:
            star = "*" if p in by_protocol and len(cells[method][p]) < counts[p] else ""
            partial = partial or bool(star)
            shown.append(f"{100 * by_protocol[p]:.1f}{star}" if p in by_protocol else "–")
        lines.append(f"| {method} | " + " | ".join(shown) + " |")
    if partial:
        lines += ["", "\\* mean over fewer domains than the column's: not comparable with the other rows."]
    return "\n".join(lines) + "\n"


def plot_protocols(results: Results, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Write a grouped bar chart: mean error per protocol (x) per method (bars)."""
    protocols = list(dict.fromkeys(r.key.protocol for r in results))
    return _grouped_bars(protocol_means(results), protocols, protocols, path, width_per_group=1.3, rotation=20,
                         ylabel="mean error (%)", title=title, legend_fontsize="small")


def _grouped_bars(table: Mapping[str, Mapping[K, float]], groups: Sequence[K], labels: Sequence[str],
                  path: str | os.PathLike[str], *, width_per_group: float, rotation: int, ylabel: str, title: str,
                  legend_fontsize: str | None = None) -> Path:
    """Write a bar chart with one group per entry of ``groups`` and one bar per row of ``table`` (fractions)."""
    plt = _pyplot()
    width = 0.8 / max(len(table), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, width_per_group * len(groups)), 4.0))
    for i, (method, values) in enumerate(table.items()):
        xs = [j + i * width for j in range(len(groups))]
        ax.bar(xs, [100 * values.get(g, float("nan")) for g in groups], width, label=method)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], list(labels), rotation=rotation, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=legend_fontsize)
    fig.tight_layout()
    _save(plt, fig, path)
    return Path(path)


def _save(plt: ModuleType, fig: Any, path: str | os.PathLike[str]) -> None:
    """Write ``fig`` to ``path`` atomically (missing folders created, the format from its extension) and close it."""
    image_format = Path(path).suffix[1:].lower() or "png"
    try:
        write_atomically(path, lambda handle: fig.savefig(handle, format=image_format, dpi=120))
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


def plot_errors(results: Results, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Write a grouped bar chart: error per domain (x) per method (bars)."""
    table = _errors_by_method(results)
    domains = list(dict.fromkeys(r.key.domain for r in results))
    return _grouped_bars(table, domains, [str(d) for d in domains], path,
                         width_per_group=0.4 * max(len(table), 1), rotation=45, ylabel="error (%)", title=title)


def plot_error_over_domains(results: Results, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Write a line plot of error along the stream's domain order (continual / gradual streams)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 4.0))
    for method, errors in _errors_by_method(results).items():
        order = list(errors)
        ax.plot(range(len(order)), [100 * errors[d] for d in order], marker="o", label=method)
        ax.set_xticks(range(len(order)), [str(d) for d in order], rotation=45, ha="right")
    ax.set_ylabel("error (%)")
    ax.set_xlabel("domain, in stream order")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    _save(plt, fig, path)
    return Path(path)
