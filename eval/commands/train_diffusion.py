"""``tta train-diffusion``: train the small Fashion-MNIST DDPM that DDA projects with, resumable."""

from __future__ import annotations

import argparse
from pathlib import Path

from eval.commands.progress import progress_bar
from eval.commands.help import show_defaults
from eval.commands.paths import check_not_shipped

NAME = "train-diffusion"
HELP = "train the small Fashion-MNIST diffusion model (DDPM) used by DDA"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add flags mapping 1:1 to :func:`eval.training.diffusion.train_diffusion`."""
    show_defaults(p)
    p.add_argument("--steps", type=int, default=20000, help="optimizer steps in total")
    p.add_argument("--batch-size", type=int, default=128, help="training images per step")
    p.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate")
    p.add_argument("--ema-decay", type=float, default=0.999, help="decay of the shipped weight average")
    p.add_argument("--model-channels", type=int, default=32, help="base width of the UNet (multiple of 32)")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights, batches and noise")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between resumable checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from OUT.train, the last checkpoint")
    p.add_argument("--full-precision", action="store_true", help="store float32 weights (default: float16)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1")
    p.add_argument("--data-root", type=Path, default=None, help="Fashion-MNIST IDX folder")
    p.add_argument("--out", type=Path, default=Path("fmnist_ddpm.pt"),
                   help="checkpoint to write (the shipped one in eval/assets only with --overwrite-shipped)")
    p.add_argument("--overwrite-shipped", action="store_true",
                   help="allow --out to replace the checkpoint shipped in eval/assets")


def run(args: argparse.Namespace) -> int:
    """Train (or resume), write the checkpoint, print its final loss."""
    from eval.bench.spec import check_seed
    from eval.training.diffusion import resume_path, train_diffusion

    check_seed(args.seed)
    check_not_shipped(args.out, "--out", overwrite_shipped=args.overwrite_shipped)

    with progress_bar("train-diffusion", "step") as bar:

        def progress(step: int, total: int, loss: float) -> None:
            if bar.total != total:
                bar.reset(total=total)
                bar.update(step - 1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.update(step - bar.n)

        summary = train_diffusion(
            args.out, data_root=args.data_root, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
            ema_decay=args.ema_decay, model_channels=args.model_channels, seed=args.seed,
            checkpoint_every=args.checkpoint_every, resume=args.resume, half=not args.full_precision,
            device=args.device, progress=progress,
        )
    loss = float(summary["final_loss"])  # type: ignore[arg-type]
    print(f"wrote {summary['out']} after {summary['steps_done']} steps: mean loss of the last steps "
          f"{loss:.4f} (training state kept in {resume_path(args.out)})")
    return 0
