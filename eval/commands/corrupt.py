"""``tta corrupt``: write a corrupted copy of a clean dataset (CIFAR-10-C .npy or ImageNet-C folders), resumably."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from eval.commands.errors import CLIError
from eval.commands.options import split_csv
from eval.commands.progress import progress_bar
from eval.commands.help import show_defaults
from eval.corruptions import parse_corruptions

if TYPE_CHECKING:
    from eval.datasets.writers import ImageFolderSource, Layout

NAME = "corrupt"
HELP = "write a corrupted copy of a clean dataset (CIFAR-10-C .npy or ImageNet-C folder layout)"
_SUBSETS = ("common", "holdout", "noise", "blur", "weather", "digital", "all")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the flags; each maps 1:1 to an argument of :func:`eval.datasets.writers.write_corrupted`."""
    show_defaults(p)
    p.add_argument("--input", required=True,
                   help="clean data: an ImageFolder directory <root>/<class>/<img>, an images .npy "
                        "(N,H,W,C uint8; labels from --labels), or 'fmnist' (the Fashion-MNIST test split)")
    p.add_argument("--labels", type=Path, default=None,
                   help="labels .npy for an images .npy (default: labels.npy beside it)")
    p.add_argument("--out", type=Path, required=True, help="output folder; existing parts are kept and skipped")
    p.add_argument("--layout", choices=["npy", "folder"], default=None,
                   help="npy: <out>/<corruption>.npy + labels.npy (CIFAR-10-C); folder: "
                        "<out>/<corruption>/<severity>/<class>/<file> (ImageNet-C). Default: folder for an "
                        "ImageFolder input, npy otherwise")
    p.add_argument("--corruptions", default="common",
                   help=f"a subset ({', '.join(_SUBSETS)}) or a comma-separated list")
    p.add_argument("--severities", default="1,2,3,4,5", help="comma-separated severities in 1..5")
    p.add_argument("--size", type=int, default=224,
                   help="ImageFolder input: resize the shorter side to size*256/224 and centre-crop size "
                        "(ImageNet-C's preprocessing); 0 keeps the images as they are")
    p.add_argument("--batch-size", type=int, default=64, help="images corrupted at once")
    p.add_argument("--seed", type=int, default=0, help="seeds the corruptions (per batch)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N clean images")
    p.add_argument("--data-root", type=Path, default=None, help="Fashion-MNIST IDX folder (for --input fmnist)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1")


def _load_arrays(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    if args.input == "fmnist":
        from eval.datasets import load_fashion_mnist

        images, labels = load_fashion_mnist("test", args.data_root)
        return images.permute(0, 2, 3, 1).numpy(), labels.numpy()
    path = Path(args.input)
    labels_path = args.labels or path.with_name("labels.npy")
    if not labels_path.exists():
        raise CLIError(f"labels file {labels_path} not found; pass --labels")
    from eval.datasets.labels import labels_problem

    images, labels = np.load(path), np.load(labels_path)
    problem = labels_problem(labels_path, labels)
    if problem:
        raise CLIError(f"--labels {problem}")
    if images.ndim == 3:
        images = images[..., None]
    return images, labels


def _parse_domains(args: argparse.Namespace) -> tuple[list[int], list[str]]:
    """Return the severities and corruption names of ``--severities`` and ``--corruptions``."""
    try:
        severities = [int(s) for s in split_csv(args.severities)]
    except ValueError:
        raise CLIError(f"--severities expects integers like 5 or 1,3,5, got {args.severities!r}") from None
    try:
        corruptions = parse_corruptions(args.corruptions)
    except ValueError as error:
        raise CLIError(f"--corruptions: {error}") from None
    return severities, corruptions


def _open_source(args: argparse.Namespace) -> tuple[np.ndarray | ImageFolderSource, np.ndarray | None, bool]:
    """Return the clean images (arrays or an image folder, cut to ``--limit``), their labels and whether a folder."""
    from eval.datasets.writers import load_image_folder

    folder_input = args.input != "fmnist" and Path(args.input).is_dir()
    if args.input != "fmnist" and not folder_input and not Path(args.input).is_file():
        raise CLIError(f"--input {args.input} is neither a folder, a .npy file nor 'fmnist'")
    if folder_input:
        folder = load_image_folder(args.input)
        if args.limit is not None:
            folder = type(folder)(folder.root, folder.files[: args.limit], folder.labels[: args.limit], folder.classes)
        return folder, None, True
    images, labels = _load_arrays(args)
    return images[: args.limit], labels[: args.limit], False


def run(args: argparse.Namespace) -> int:
    """Write the corrupted dataset with a progress bar; 130 when interrupted (finished parts are kept)."""
    from eval.datasets.writers import write_corrupted

    severities, corruptions = _parse_domains(args)
    source, labels, folder_input = _open_source(args)
    layout: Layout = args.layout or ("folder" if folder_input else "npy")
    bar = progress_bar("corrupt", "img")
    parts = len(corruptions) * len(set(severities))
    skipped = 0

    def on_start(total: int, done: int) -> None:
        nonlocal skipped
        skipped = done * parts // total if total else 0  # every part holds the same number of images
        bar.reset(total=total)
        bar.update(done)
        if done:
            bar.write(f"resuming: {done} image(s) already written in {args.out}, skipped", file=sys.stderr)

    try:
        written = write_corrupted(source, args.out, layout=layout, corruptions=corruptions,
                                  severities=severities, labels=labels, batch_size=args.batch_size, seed=args.seed,
                                  size=(args.size or None) if folder_input else None, device=args.device,
                                  on_start=on_start, on_progress=bar.update)
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted: finished parts are kept in {args.out}; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        bar.close()
    print(f"{args.out} ({layout} layout): wrote {parts - skipped} part(s) (corruption x severity), skipped "
          f"{skipped} already complete; {len(written)} file(s)/folder(s) in all")
    return 0
