"""``tta bench``: score methods on a corruption benchmark (default: Fashion-MNIST-C), resumably."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from eval.bench import BenchSpec, run_bench
from eval.commands.errors import CLIError
from eval.commands.options import parse_options, split_csv
from eval.commands.progress import progress_bar
from eval.corruptions import DEFAULT_CORRUPTIONS, list_corruptions
from eval.models import DEFAULT_CHECKPOINT
from eval.protocols import list_protocols
from eval.results import Results, ResultsStore

NAME = "bench"
HELP = "score methods on a corruption benchmark (default: Fashion-MNIST-C)"
DEFAULT_RESULTS = Path("results") / "tta-results.sqlite"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the bench flags; each maps 1:1 to a :class:`~eval.bench.BenchSpec` field."""
    p.add_argument("--dataset", default="fmnist-c", choices=["fmnist-c"], help="benchmark dataset")
    p.add_argument("--methods", default="source,norm,tent", help="comma-separated methods (see `tta list`)")
    p.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="method keyword option, repeatable, e.g. tent.lr=0.001 or norm.stats=ema")
    p.add_argument("--corruptions", default="default",
                   help="'default' (the 15 common ImageNet-C corruptions), 'available' (all 19), or a comma-separated list; "
                        "'clean' adds the uncorrupted test set")
    p.add_argument("--severities", default="5", help="comma-separated severities in 1..5")
    p.add_argument("--protocol", default="episodic", choices=list_protocols(),
                   help="episodic: reset at each domain; continual: never reset")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="seeds the corruptions")
    p.add_argument("--limit", type=int, default=None, help="use only the first N test images")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="source model checkpoint")
    p.add_argument("--data-root", type=Path, default=None, help="Fashion-MNIST IDX folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, or auto")
    p.add_argument("--runtime", default="torch", choices=["torch", "onnx"],
                   help="onnx: export each method (source frozen, norm adaptive) and score it in onnxruntime")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                   help="SQLite results store; finished cells are kept and skipped on rerun")
    p.add_argument("--out", type=Path, default=None, help="also write the table's records (.json, .csv or .md)")


def resolve_device(device: str) -> str:
    """Return ``device``, with ``auto`` meaning CUDA when available."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _corruption_list(text: str) -> list[str]:
    if text == "default":
        return list(DEFAULT_CORRUPTIONS)
    if text in ("available", "all"):
        return list_corruptions("available")
    return split_csv(text)


def build_spec(args: argparse.Namespace) -> BenchSpec:
    """Return the benchmark spec the parsed flags describe."""
    methods = split_csv(args.methods)
    try:
        severities = tuple(int(s) for s in split_csv(args.severities))
    except ValueError:
        raise CLIError(f"--severities expects integers like 5 or 1,3,5, got {args.severities!r}") from None
    return BenchSpec(
        methods=tuple(methods), options=parse_options(args.option, methods),
        corruptions=tuple(_corruption_list(args.corruptions)), severities=severities,
        protocol=args.protocol, batch_size=args.batch_size, seed=args.seed, limit=args.limit,
        checkpoint=args.checkpoint, data_root=args.data_root, device=resolve_device(args.device),
        runtime=args.runtime,
    )


def write_results(results: Results, path: Path) -> None:
    """Write records as JSON or CSV by suffix, else the markdown table."""
    text = {".json": results.to_json, ".csv": results.to_csv}.get(path.suffix, results.to_markdown)()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the markdown table; 130 when interrupted (finished cells are kept)."""
    try:
        spec = build_spec(args)
    except ImportError as error:  # --runtime onnx without the onnx extra
        raise CLIError(str(error)) from None
    bar = progress_bar("bench", "batch")

    def on_start(total: int, stored: int) -> None:
        bar.reset(total=total)
        if stored:
            bar.write(f"resuming: {stored} cell(s) already in {args.results}, not recomputed", file=sys.stderr)

    def on_batch(item: Any, _logits: Any) -> None:
        bar.set_postfix_str(str(item.domain), refresh=False)
        bar.update(1)

    with ResultsStore(args.results) as store:
        try:
            results = run_bench(spec, store, on_start=on_start, on_batch=on_batch)
        except KeyboardInterrupt:
            bar.close()
            print(f"interrupted: finished cells are saved in {args.results}; rerun the same command to resume",
                  file=sys.stderr)
            return 130
        finally:
            bar.close()
    print(results.to_markdown())
    if args.out is not None:
        write_results(results, args.out)
    return 0
