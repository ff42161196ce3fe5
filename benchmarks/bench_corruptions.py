"""Time our batched corruptions against the reference package, per image, and print the ratio.

The reference is bethgelab's ``imagecorruptions`` (the ImageNet-C code as a package), which
corrupts one uint8 ``(H, W, C)`` image at a time. Ours corrupts a float ``(B, C, H, W)`` batch.

Usage::

    python benchmarks/bench_corruptions.py --size 32 --channels 3 --batch 64
    python benchmarks/bench_corruptions.py --device cuda --size 224
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
import types
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from eval.corruptions import corrupt, list_corruptions


def load_reference() -> types.ModuleType | None:
    """Return ``imagecorruptions.corruptions``, or ``None`` when it (or a dependency) is missing."""
    if importlib.util.find_spec("imagecorruptions") is None:
        return None
    if importlib.util.find_spec("pkg_resources") is None:
        # Only its frost images are located through pkg_resources (gone from setuptools >= 81).
        stub = types.ModuleType("pkg_resources")
        stub.resource_filename = lambda _package, path: path  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = stub
    try:
        return importlib.import_module("imagecorruptions.corruptions")
    except ImportError:
        return None


def seconds_per_call(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """Return the median wall time of ``fn`` over ``repeats`` calls, after one warm-up call."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def time_ours(name: str, x: torch.Tensor, repeats: int) -> float:
    """Return seconds per image for our batched corruption."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    generator = torch.Generator(device=x.device).manual_seed(0)
    return seconds_per_call(lambda: corrupt(x, name, 3, generator=generator), repeats, sync) / x.shape[0]


def time_reference(reference: types.ModuleType, name: str, images: Sequence[Image.Image], repeats: int) -> float:
    """Return seconds per image for the reference, one PIL image at a time, output as an array.

    The conversion to an array forces the decode that PIL otherwise defers (jpeg_compression).
    """
    fn = getattr(reference, name)
    return seconds_per_call(lambda: [np.asarray(fn(image, 3)) for image in images], repeats, lambda: None) / len(images)


def main(argv: Sequence[str] | None = None) -> int:
    """Print a per-corruption table of time per image, ours vs the reference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="image height and width")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    x = torch.rand(args.batch, args.channels, args.size, args.size, generator=torch.Generator().manual_seed(0))
    arrays = (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    images = [Image.fromarray(a[..., 0] if args.channels == 1 else a) for a in arrays]
    reference = load_reference()
    x = x.to(args.device)
    print(f"{args.batch} images {args.channels}x{args.size}x{args.size}, severity 3, device {args.device}")
    print(f"{'corruption':<18} {'ours us/img':>12} {'ref us/img':>12} {'speed-up':>9}")
    for name in list_corruptions("available"):
        ours = time_ours(name, x, args.repeats)
        ref = time_reference(reference, name, images, args.repeats) if reference else float("nan")
        print(f"{name:<18} {ours * 1e6:>12.1f} {ref * 1e6:>12.1f} {ref / ours:>8.1f}x")
    if reference is None:
        print("imagecorruptions is not installed: reference columns are nan")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
