"""``tta report`` for papers: correct summaries, seeds as mean ± std, LaTeX tables and consistent figures."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from eval.cli import main
from eval.domains import Domain
from eval.results import report
from eval.results.baselines import ALEXNET_ERRORS
from eval.results.records import CellKey, Record
from eval.results.report import markdown_report, plot_errors, protocol_table
from eval.results.store import ResultsStore
from eval.results.tables import Results


def _rec(method: str, corruption: str = "fog", error: float = 0.5, *, severity: int = 5, seed: int = 0,
         protocol: str = "episodic", dataset: str = "fmnist-c", options: dict[str, object] | None = None) -> Record:
    key = CellKey.build(method, options or {}, dataset=dataset, model="m", protocol=protocol,
                        domain=Domain(corruption, 0 if corruption == "clean" else severity), seed=seed,
                        batch_size=64)
    return Record(key, error, error / 10, 100, 1.0)


def _store(path: Path, records: list[Record]) -> Path:
    with ResultsStore(path) as store:
        for record in records:
            store.put(record)
    return path


def _seeded_store(path: Path) -> Path:
    """Two methods, two corruptions, seeds 0 and 1 (tent: 20/40 on fog, 30/50 on snow)."""
    return _store(path, [_rec("source", c, e, seed=s) for s in (0, 1) for c, e in (("fog", 0.6), ("snow", 0.8))]
                  + [_rec("tent", "fog", 0.2 + 0.2 * s, seed=s) for s in (0, 1)]
                  + [_rec("tent", "snow", 0.3 + 0.2 * s, seed=s) for s in (0, 1)])


# --- summaries -----------------------------------------------------------------------------------------------


def test_by_protocol_mean_leaves_clean_out_as_the_error_table_does() -> None:
    results = Results([_rec("norm", "clean", 0.1), _rec("norm", "fog", 0.5), _rec("norm", "snow", 0.7)])
    assert "| norm | 60.0 |" in protocol_table(results)
    assert "| norm | 10.0 | 50.0 | 70.0 | 60.0 |" in results.to_markdown()


def test_mce_is_not_printed_for_datasets_other_than_imagenet_c() -> None:
    results = Results([_rec("norm", "fog", 0.5)])
    text = markdown_report(results)
    assert "| norm | 50.0 |" in text and "mCE (%)" not in text
    assert "ImageNet-C" in text  # says why there is no mCE


def test_mce_on_a_partial_imagenet_c_set_is_labelled() -> None:
    partial = markdown_report(Results([_rec("norm", "fog", 0.4725, dataset="imagenet-c/x")]))
    assert "mCE (%)" in partial and "1 of 15 corruptions" in partial
    full = Results([_rec("norm", c, 0.5, severity=s, dataset="imagenet-c/x") for c in ALEXNET_ERRORS
                    for s in range(1, 6)])
    text = markdown_report(full)
    assert "mCE (%)" in text and "of 15 corruptions" not in text


def test_tables_name_their_metric_and_unit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _store(tmp_path / "r.sqlite", [_rec("norm", "fog", 0.5)])
    assert main(["report", "--results", str(path)]) == 0
    assert "top-1 error (%)" in capsys.readouterr().out
    assert main(["report", "--results", str(path), "--metric", "ece", "--by-protocol"]) == 0
    out = capsys.readouterr().out
    assert "ECE (%)" in out and "| norm | 5.0 |" in out  # the protocol table follows --metric too


# --- seeds, row labels, LaTeX --------------------------------------------------------------------------------


def test_seeds_of_a_cell_show_as_mean_and_std(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _seeded_store(tmp_path / "r.sqlite")
    assert main(["report", "--results", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| tent | 30.0 ± 14.1 | 40.0 ± 14.1 | 35.0 ± 14.1 |" in out
    assert "| source | 60.0 ± 0.0 | 80.0 ± 0.0 | 70.0 ± 0.0 |" in out
    assert "2 seeds" in out and "(seed=" not in out


def test_row_labels_name_protocol_and_effective_options_for_every_row() -> None:
    results = Results([_rec("source"), _rec("tent"), _rec("tent", protocol="continual"),
                       _rec("tent", options={"steps": 3})])
    rows = [line.split(" |")[0] for line in results.to_markdown().splitlines()[2:]]
    assert rows == ["| source (protocol=episodic)", "| tent (protocol=episodic; steps=1)",
                    "| tent (protocol=continual; steps=1)", "| tent (protocol=episodic; steps=3)"]
    assert "defaults" not in results.to_markdown()


def test_format_tex_prints_a_booktabs_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _store(tmp_path / "r.sqlite", [_rec("pseudo_label", "gaussian_noise", 0.25), _rec("source", "fog", 0.5)])
    assert main(["report", "--results", str(path), "--format", "tex"]) == 0
    out = capsys.readouterr().out
    assert "\\toprule" in out and "\\midrule" in out and "\\bottomrule" in out and "\\end{tabular}" in out
    assert "pseudo\\_label & 25.0 & -- & 25.0" in out and "gaussian\\_noise" in out
    assert "top-1 error (\\%)" in out and "|" not in out


def test_report_into_a_closed_pipe_exits_quietly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    path = _store(tmp_path / "r.sqlite", [_rec("norm", "fog", 0.5)])
    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["report", "--results", str(path)]) == 0
    assert capsys.readouterr().err == ""


# --- figures -------------------------------------------------------------------------------------------------


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures the report writes, kept open for inspection."""
    pytest.importorskip("matplotlib")
    kept: list[Any] = []
    monkeypatch.setattr(report, "_save", lambda plt, fig, path: kept.append(fig))
    return kept


def _bar_colours(fig: Any) -> dict[str, tuple[float, ...]]:
    ax = fig.axes[0]
    return {c.get_label(): tuple(c.patches[0].get_facecolor()) for c in ax.containers if getattr(c, "patches", None)}


def _inside(inner: Any, outer: Any) -> bool:
    return bool(inner.x0 < outer.x1 and inner.x1 > outer.x0 and inner.y0 < outer.y1 and inner.y1 > outer.y0)


def test_figures_keep_one_colour_per_method_and_the_legend_off_the_data(tmp_path: Path, figures: list[Any]) -> None:
    both = Results([_rec("source", "fog", 0.6), _rec("tent", "fog", 0.3)])
    plot_errors(both, tmp_path / "a.png")
    plot_errors(Results([_rec("tent", "fog", 0.3)]), tmp_path / "b.png")
    report.plot_protocols(both, tmp_path / "c.png")
    colours = [_bar_colours(fig) for fig in figures]
    assert colours[0]["tent"] == colours[1]["tent"] == colours[2]["tent"] != colours[0]["source"]
    for fig in figures:
        fig.canvas.draw()
        ax, legend = fig.axes[0], fig.axes[0].get_legend()
        renderer = fig.canvas.get_renderer()
        assert not _inside(legend.get_window_extent(renderer), ax.get_window_extent(renderer))


def test_error_plot_has_a_mean_group_error_bars_over_seeds_and_follows_metric(
        tmp_path: Path, figures: list[Any]) -> None:
    results = Results(_rec("tent", c, e + 0.1 * s, seed=s) for s in (0, 1) for c, e in (("fog", 0.2), ("snow", 0.4)))
    plot_errors(results, tmp_path / "a.png", metric="ece")
    ax = figures[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fog", "snow", "mean"]
    assert ax.get_ylabel() == "ECE (%)"
    bars = next(c for c in ax.containers if hasattr(c, "patches"))
    assert bars.errorbar is not None
    assert [round(p.get_height(), 3) for p in bars.patches] == [2.5, 4.5, 3.5]


def test_report_plots_follow_metric_and_title_has_no_file_name(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    monkeypatch.setitem(matplotlib.rcParams, "svg.fonttype", "none")  # keep text as text in the SVG
    path = _seeded_store(tmp_path / "store-name.sqlite")
    svg, pdf = tmp_path / "bars.svg", tmp_path / "protocols.pdf"
    assert main(["report", "--results", str(path), "--metric", "ece", "--plot", str(svg),
                 "--plot-protocols", str(pdf)]) == 0
    text = svg.read_text()
    assert "ECE (%)" in text and "store-name" not in text
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_the_embedded_dataset_is_named_for_what_it_is_in_tables() -> None:
    from eval.results.report import dataset_label

    assert dataset_label("fmnist-c/corruptions-v2") == "fmnist-c/corruptions-v2 (Fashion-MNIST + CIFAR-10-C severities)"
    assert dataset_label("fmnist-c/corruptions-v2/imagenet-table").endswith("(Fashion-MNIST + ImageNet-C severities)")
    assert dataset_label("cifar10-c") == "cifar10-c"
