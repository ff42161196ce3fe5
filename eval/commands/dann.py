"""``tta dann``: domain-adversarial fine-tuning of the source model toward an unlabeled target domain."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tta.files import write_text_atomically
from eval.commands.errors import CLIError
from eval.commands.options import split_csv
from eval.commands.progress import progress_bar
from eval.commands.help import show_defaults
from eval.models.source import DEFAULT_CHECKPOINT

NAME = "dann"
HELP = "adapt the source model to an unlabeled target domain with DANN (gradient reversal)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add flags mapping to :class:`tta.da.FitConfig` and :func:`eval.training.da_experiment.compare_arms`."""
    show_defaults(p)
    p.add_argument("--source", default="fashion-mnist", choices=["fashion-mnist"], help="labeled source data")
    p.add_argument("--target", required=True,
                   help="unlabeled target: a corruption of the training images (gaussian_noise...) or an image folder")
    p.add_argument("--severity", type=int, default=5, help="corruption severity 1..5")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="source model checkpoint to adapt")
    p.add_argument("--out", type=Path, default=Path("results") / "dann.pt",
                   help="adapted checkpoint (same format as the source; `tta bench --checkpoint` scores it)")
    p.add_argument("--epochs", type=int, default=4, help="training epochs")
    p.add_argument("--steps-per-epoch", type=int, default=100, help="optimizer steps per epoch")
    p.add_argument("--batch-size", type=int, default=64, help="source images per step, and as many target images")
    p.add_argument("--lr", type=float, default=0.01, help="initial learning rate μ0 of the paper's annealing")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay")
    p.add_argument("--gamma", type=float, default=10.0, help="steepness γ of the reversal schedule")
    p.add_argument("--trainable", default="all", choices=["all", "norm", "last"], help="what trains in the classifier")
    p.add_argument("--last-blocks", type=int, default=1, help="blocks that train with --trainable last")
    p.add_argument("--hidden", default="1024,1024", help="hidden widths of the domain discriminator")
    p.add_argument("--target-limit", type=int, default=16384, help="number of unlabeled target images")
    p.add_argument("--seed", type=int, default=0, help="seeds shuffling and dropout")
    p.add_argument("--data-root", type=Path, default=None, help="Fashion-MNIST IDX folder")
    p.add_argument("--compare", action="store_true",
                   help="also train source-only and DANN with λ=0 with the same budget, and compare")
    p.add_argument("--report", type=Path, default=None, help="write every arm's scores and history as JSON")


def _config(args: argparse.Namespace) -> Any:
    from tta.da import FitConfig

    return FitConfig(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, lr=args.lr,
                     weight_decay=args.weight_decay, gamma=args.gamma, trainable=args.trainable,
                     last_blocks=args.last_blocks, seed=args.seed)


def _hidden(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(width) for width in split_csv(text))
    except ValueError:
        raise CLIError(f"--hidden expects comma-separated integers like 1024,1024, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    """Train (resuming from ``<out>.fit`` if present), write the checkpoint, print the scores."""
    from eval.bench.spec import check_seed
    from eval.corruptions import list_corruptions

    check_seed(args.seed)
    is_folder = Path(args.target).is_dir()
    if not is_folder and args.target not in list_corruptions("available"):
        raise CLIError(f"--target {args.target!r} is neither a folder nor a corruption; "
                       f"choose one of {list_corruptions('available')} or an image folder")
    arms = ("source_only", "dann_lambda0", "dann") if args.compare else ("dann",)
    try:
        reports = _train(args, arms, is_folder)
    except KeyboardInterrupt:
        print(f"interrupted: finished epochs are kept in {args.out}.fit (and next to it for other arms); "
              f"rerun the same command to resume", file=sys.stderr)
        return 130
    _print_scores(args, reports, is_folder)
    return 0


def _train(args: argparse.Namespace, arms: tuple[Any, ...], is_folder: bool) -> list[Any]:
    from eval.training.da_experiment import compare_arms

    with progress_bar("dann", "step") as bar:

        def progress(state: Any) -> None:
            if bar.total != state.total_steps:
                bar.reset(total=state.total_steps)
            bar.set_postfix(task=f"{state.task_loss:.3f}", disc_acc=f"{state.domain_accuracy:.2f}",
                            lam=f"{state.scale:.2f}", refresh=False)
            bar.update(state.step - bar.n)

        return compare_arms(arms, target=args.target, severity=args.severity, out=args.out,
                            config=_config(args), target_limit=args.target_limit, evaluate=not is_folder,
                            on_arm=lambda arm: bar.set_description(f"dann [{arm}]"),
                            source_checkpoint=args.checkpoint, batch_size=args.batch_size,
                            hidden=_hidden(args.hidden), data_root=args.data_root, progress=progress)


def _print_scores(args: argparse.Namespace, reports: list[Any], is_folder: bool) -> None:
    from eval.training.da_experiment import evaluate_checkpoint, reports_markdown

    source_error = None if is_folder else evaluate_checkpoint(args.checkpoint, args.target, args.severity,
                                                              data_root=args.data_root)
    print(f"target {args.target}" + ("" if is_folder else f"-{args.severity} (held-out test images)"))
    print(reports_markdown(reports, source_error))
    print(f"wrote {args.out}; score it with `tta bench --checkpoint {args.out} --methods source`", file=sys.stderr)
    if args.report is not None:
        payload = {"source_error": source_error, "arms": [r.to_dict() for r in reports]}
        write_text_atomically(args.report, json.dumps(payload, indent=1, default=float))
