"""The ``tta`` console script: argument parsing and wiring only; the work lives in importable functions."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

import tta
from eval.bench import BenchSpec, run_bench
from eval.corruptions import DEFAULT_CORRUPTIONS, list_corruptions
from eval.models import DEFAULT_CHECKPOINT
from eval.protocols import list_protocols
from eval.results import ResultsStore

__all__ = ["main", "parse_options"]

DEFAULT_RESULTS = Path("results") / "tta-results.sqlite"


class CLIError(Exception):
    """A user error reported as ``tta: error: ...`` with exit code 2."""


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(items: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Turn ``method.key=value`` (or ``key=value`` with a single method) into per-method keyword arguments.

    Values are read as JSON where possible (``1e-3``, ``true``, ``null``), else kept as strings;
    keys are checked against each method's builder signature.
    """
    options: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise CLIError(f"--option expects method.key=value, got {item!r}")
        method, dot, key = name.rpartition(".")
        if not dot:
            if len(methods) != 1:
                raise CLIError(f"--option {item!r}: name the method (e.g. tent.{name}=...) when running several")
            method, key = methods[0], name
        if method not in options:
            raise CLIError(f"--option {item!r}: method {method!r} is not among --methods {list(methods)}")
        valid = tta.adapter_options(method)
        if key not in valid:
            raise CLIError(f"--option {item!r}: {method} has no option {key!r}; valid: {sorted(valid)}")
        options[method][key] = _parse_value(value)
    return options


def _corruption_list(text: str) -> list[str]:
    if text == "default":
        return list(DEFAULT_CORRUPTIONS)
    if text in ("available", "all"):
        return list_corruptions("available")
    return _csv(text)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="score methods on a corruption benchmark (default: Fashion-MNIST-C)")
    p.add_argument("--dataset", default="fmnist-c", choices=["fmnist-c"], help="benchmark dataset")
    p.add_argument("--methods", default="source,norm,tent", help="comma-separated methods (see `tta list`)")
    p.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="method keyword option, repeatable, e.g. tent.lr=0.001 or norm.stats=ema")
    p.add_argument("--corruptions", default="default",
                   help="'default' (the 8 of the embedded benchmark), 'available', or a comma-separated list; 'clean' adds the uncorrupted test set")
    p.add_argument("--severities", default="5", help="comma-separated severities in 1..5")
    p.add_argument("--protocol", default="episodic", choices=list_protocols(),
                   help="episodic: reset at each domain; continual: never reset")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="seeds the corruptions")
    p.add_argument("--limit", type=int, default=None, help="use only the first N test images")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="source model checkpoint")
    p.add_argument("--data-root", type=Path, default=None, help="Fashion-MNIST IDX folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, or auto")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                   help="SQLite results store; finished cells are kept and skipped on rerun")
    p.add_argument("--out", type=Path, default=None, help="also write the table's records (.json, .csv or .md)")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-source", help="train the Fashion-MNIST source model on CPU")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--out", type=Path, default=DEFAULT_CHECKPOINT)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the ``tta`` command."""
    parser = argparse.ArgumentParser(prog="tta", description="Test-time adaptation: benchmark and tools.")
    sub = parser.add_subparsers(dest="command", metavar="{bench,train-source,list}")
    _add_bench(sub)
    _add_train(sub)
    sub.add_parser("list", help="list methods (with options), corruptions and protocols")
    return parser


def _resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _bench_spec(args: argparse.Namespace) -> BenchSpec:
    methods = _csv(args.methods)
    try:
        severities = tuple(int(s) for s in _csv(args.severities))
    except ValueError:
        raise CLIError(f"--severities expects integers like 5 or 1,3,5, got {args.severities!r}") from None
    return BenchSpec(
        methods=tuple(methods), options=parse_options(args.option, methods),
        corruptions=tuple(_corruption_list(args.corruptions)), severities=severities,
        protocol=args.protocol, batch_size=args.batch_size, seed=args.seed, limit=args.limit,
        checkpoint=args.checkpoint, data_root=args.data_root, device=_resolve_device(args.device),
    )


def _write_out(results: Any, path: Path) -> None:
    text = {".json": results.to_json, ".csv": results.to_csv}.get(path.suffix, results.to_markdown)()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _bench(args: argparse.Namespace) -> int:
    spec = _bench_spec(args)
    bar = tqdm(total=0, unit="batch", desc="bench", file=sys.stderr, dynamic_ncols=True)

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
        _write_out(results, args.out)
    return 0


def _train_source(args: argparse.Namespace) -> int:
    from eval.training import train_source

    with tqdm(total=0, unit="step", desc="train-source", file=sys.stderr, dynamic_ncols=True) as bar:

        def progress(step: int, total: int, loss: float) -> None:
            if bar.total != total:
                bar.reset(total=total)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.update(step - bar.n)

        summary = train_source(args.out, data_root=args.data_root, epochs=args.epochs, batch_size=args.batch_size,
                               lr=args.lr, seed=args.seed, width=args.width, progress=progress)
    print(f"wrote {args.out}: clean test accuracy {100 * float(summary['clean_test_accuracy']):.2f}%")
    return 0


def _list() -> int:
    print("methods:")
    for name in tta.list_methods():
        opts = ", ".join(f"{k}={v!r}" for k, v in tta.adapter_options(name).items())
        print(f"  {name:8s} {opts}")
    print("corruptions (implemented):", ", ".join(list_corruptions("available")))
    print("protocols:", ", ".join(list_protocols()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tta`` command; returns the exit code (2 for user errors, 130 when interrupted)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        if args.command == "bench":
            return _bench(args)
        if args.command == "train-source":
            return _train_source(args)
        return _list()
    except (CLIError, ValueError, FileNotFoundError) as err:
        print(f"tta: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
