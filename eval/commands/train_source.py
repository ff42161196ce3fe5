"""``tta train-source``: train the Fashion-MNIST source model on CPU and write its checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from eval.commands.progress import progress_bar
from eval.commands.help import show_defaults
from eval.commands.paths import check_not_shipped

NAME = "train-source"
HELP = "train the Fashion-MNIST source model on CPU"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add flags mapping 1:1 to :func:`eval.training.source_model.train_source` (the defaults made the shipped checkpoint)."""
    show_defaults(p)
    p.add_argument("--epochs", type=int, default=10, help="training epochs")
    p.add_argument("--batch-size", type=int, default=128, help="training images per step")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights and the batch order")
    p.add_argument("--width", type=int, default=16, help="channels of the first ResNet stage")
    p.add_argument("--data-root", type=Path, default=None, help="Fashion-MNIST IDX folder")
    p.add_argument("--out", type=Path, default=Path("fmnist_resnet.pt"),
                   help="checkpoint to write (the shipped one in eval/assets only with --overwrite-shipped)")
    p.add_argument("--overwrite-shipped", action="store_true",
                   help="allow --out to replace the checkpoint shipped in eval/assets")


def run(args: argparse.Namespace) -> int:
    """Train, write the checkpoint, print its clean test accuracy."""
    from eval.bench.spec import check_seed
    from eval.training.source_model import train_source

    check_seed(args.seed)
    check_not_shipped(args.out, "--out", overwrite_shipped=args.overwrite_shipped)

    with progress_bar("train-source", "step") as bar:

        def progress(step: int, total: int, loss: float) -> None:
            if bar.total != total:
                bar.reset(total=total)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.update(step - bar.n)

        summary = train_source(args.out, data_root=args.data_root, epochs=args.epochs, batch_size=args.batch_size,
                               lr=args.lr, seed=args.seed, width=args.width, progress=progress)
    print(f"wrote {args.out}: clean test accuracy {100 * summary['clean_test_accuracy']:.2f}%")
    return 0
