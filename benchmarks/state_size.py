"""Size and write time of a saved adaptation state: full, and relative to the source model.

Each method wraps a fresh torchvision model (random weights: the sizes do not depend on the values),
adapts one batch, then saves its state both ways; the script prints both file sizes, their ratio and
the best-of-``--repeats`` write times. This is what `tta bench` writes at each domain boundary of a
resumable stream (relative), next to a full state (what a periodic production checkpoint writes).

Usage:
    python benchmarks/state_size.py --model resnet50 --methods norm,tent,cotta
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torchvision

import tta
from tta.guard import CollapseGuard


def _write(adapter: tta.TTAMethod | CollapseGuard, path: Path, relative: bool, repeats: int) -> tuple[float, float]:
    """Return (size in MB, best write time in s) of ``adapter``'s state written ``repeats`` times to ``path``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        adapter.save_state(path, relative_to_source=relative)
        best = min(best, time.perf_counter() - start)
    return path.stat().st_size / 2**20, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", help="a torchvision classification model name")
    parser.add_argument("--methods", default="norm,tent,cotta", help="comma-separated method names")
    parser.add_argument("--image-size", type=int, default=64, help="side of the one adapted batch's images")
    parser.add_argument("--repeats", type=int, default=3, help="writes per variant; the best time is printed")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.rand(4, 3, args.image_size, args.image_size)
    print(f"{args.model}, one adapted batch; sizes in MB, best of {args.repeats} writes")
    print(f"{'method':8} {'full MB':>9} {'full s':>7} {'relative MB':>12} {'relative s':>11} {'ratio':>7}")
    with tempfile.TemporaryDirectory() as folder:
        for method in args.methods.split(","):
            adapter = tta.wrap(torchvision.models.get_model(args.model).eval(), method)
            adapter(x)
            full = _write(adapter, Path(folder) / "full.pt", False, args.repeats)
            relative = _write(adapter, Path(folder) / "relative.pt", True, args.repeats)
            print(f"{method:8} {full[0]:9.1f} {full[1]:7.2f} {relative[0]:12.1f} {relative[1]:11.2f} "
                  f"{full[0] / relative[0]:6.1f}x")


if __name__ == "__main__":
    main()
