"""Time our batched corruptions against the reference package, per image, and print the ratio.

The reference is bethgelab's ``imagecorruptions`` 1.1.2 (the ImageNet-C code as a package,
patched for current numpy/scikit-image by ``imagecorruptions_compat.py``), which corrupts one
uint8 ``(H, W, C)`` PIL image at a time. Ours corrupts a float ``(B, C, H, W)`` batch. Both use
the ImageNet-C constants at every size (``table="imagenet"``), so both do the same work; both
run on the CPU with the thread count given (``--threads``, default 1, also applied to OpenCV).
Each row is the fastest of ``--repeats`` timed calls after one warm-up call, ours and the
reference alternating, at severity 3 (the reference's output is converted to an array, which
forces the decode that PIL otherwise defers for jpeg_compression).
The last line per size is the time to corrupt one image with all 15 benchmark corruptions.

Usage::

    python benchmarks/bench_corruptions.py --sizes 32,224 --batch 64 --ref-images 4
    python benchmarks/bench_corruptions.py --device cuda --sizes 224 --no-reference
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imagecorruptions_compat import load_reference  # noqa: E402

from eval.corruptions import corrupt, list_corruptions, parse_corruptions  # noqa: E402

SEVERITY = 3


def paired_seconds(ours: Callable[[], object], reference: Callable[[], object] | None, repeats: int,
                   sync: Callable[[], None]) -> tuple[float, float]:
    """Return the fastest wall time of each function over ``repeats`` alternating calls (after a warm-up).

    The calls alternate so that both sides see the same load on a shared machine, and the
    minimum is kept: the slower calls measure the neighbours, not the code.
    """
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    for fn, key in ((ours, "ours"), (reference, "reference")):
        if fn is not None:
            fn()
            sync()
    for _ in range(repeats):
        for fn, key in ((ours, "ours"), (reference, "reference")):
            if fn is None:
                continue
            start = time.perf_counter()
            fn()
            sync()
            times[key].append(time.perf_counter() - start)
    return min(times["ours"]), min(times["reference"], default=float("nan"))


def bench_size(size: int, args: argparse.Namespace, reference: object | None) -> None:
    """Print the table of one image size."""
    x = torch.rand(args.batch, args.channels, size, size, generator=torch.Generator().manual_seed(0))
    arrays = (x[: args.ref_images].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    images = [Image.fromarray(a[..., 0] if args.channels == 1 else a) for a in arrays]
    x = x.to(args.device)
    print(f"\n### {size}x{size}: {args.batch} images per call (ours), {len(images)} (reference), "
          f"severity {SEVERITY}, {args.threads} thread(s), device {args.device}\n")
    print("| corruption | ours ms/img | reference ms/img | speed-up |")
    print("|---|---:|---:|---:|")
    totals = {"ours": 0.0, "ref": 0.0}
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for name in args.corruptions:
        generator = torch.Generator(device=x.device).manual_seed(0)
        run_ours = lambda: corrupt(x, name, SEVERITY, generator=generator, table="imagenet")  # noqa: E731
        fn = getattr(reference, name) if reference else None
        run_reference = (lambda: [np.asarray(fn(image, SEVERITY)) for image in images]) if fn else None  # noqa: E731
        ours, ref = paired_seconds(run_ours, run_reference, args.repeats, sync)
        ours, ref = ours / x.shape[0], ref / len(images)
        if name in list_corruptions("common"):
            totals["ours"] += ours
            totals["ref"] += ref
        print(f"| {name} | {ours * 1e3:.3f} | {ref * 1e3:.2f} | {ref / ours:.1f}x |", flush=True)
    if set(list_corruptions("common")) <= set(args.corruptions):
        print(f"| **all 15 common, one image** | **{totals['ours'] * 1e3:.2f}** | **{totals['ref'] * 1e3:.1f}** | "
              f"**{totals['ref'] / totals['ours']:.1f}x** |")


def main(argv: Sequence[str] | None = None) -> int:
    """Print per-size tables of time per image, ours vs the reference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,224", help="comma-separated image sides")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--batch", type=int, default=64, help="images per call of ours")
    parser.add_argument("--ref-images", type=int, default=4, help="images per timed call of the reference")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed calls of each side")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--corruptions", default="all",
                        help="a subset name (all, common, noise, ...) or comma-separated corruption names")
    args = parser.parse_args(argv)
    args.corruptions = parse_corruptions(args.corruptions)
    torch.set_num_threads(args.threads)
    reference = None if args.no_reference else load_reference()
    if reference is not None:
        import cv2

        cv2.setNumThreads(args.threads)
    elif not args.no_reference:
        print("imagecorruptions is not installed (pip install -e .[dev]): reference columns are nan")
    print(f"torch {torch.__version__}, {args.threads} thread(s); reference: imagecorruptions"
          f"{'' if reference else ' (not run)'}")
    for size in (int(s) for s in args.sizes.split(",")):
        bench_size(size, args, reference)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
