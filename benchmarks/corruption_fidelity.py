"""Compare our corruptions with the reference package ``imagecorruptions``, per corruption and severity.

Both corrupt the same clean photographs (scikit-image's bundled sample images, centre-cropped
and resized to ``--size``), with the ImageNet-C constants (``table="imagenet"``; the reference
package has no CIFAR-10-C variant). Deterministic corruptions are compared pixel by pixel: the
mean and maximum absolute difference in 0..255 units. Stochastic ones cannot agree pixel by
pixel (different random numbers), so their statistics are compared, averaged over images and
draws:

- ``|y-x|``: mean absolute change from the clean image (how strong the corruption is);
- ``shift``: mean of ``y - x`` (brightness shift);
- ``grad``: mean absolute gradient of ``y`` over that of ``x`` (below 1: blur; above 1: noise,
  the blur spectrum's summary).

Usage::

    python benchmarks/corruption_fidelity.py --size 224 --images 6 > fidelity.md

It prints a markdown table (docs/corruptions.md holds one run). Needs the ``dev`` extra
(imagecorruptions, scikit-image, scipy, opencv-python); see benchmarks/imagecorruptions_compat.py
for the compatibility patches applied to imagecorruptions 1.1.2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imagecorruptions_compat import load_reference  # noqa: E402

from eval.corruptions import corrupt, list_corruptions  # noqa: E402

DETERMINISTIC = ("defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression",
                 "gaussian_blur", "saturate")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "colorwheel",
          "retina")
# Corruptions whose statistics vary much from draw to draw (texture choice, fractal, blob layout,
# angle) get more draws.
EXTRA_DRAWS = {"frost": 8, "fog": 8, "spatter": 4, "motion_blur": 4}
NOTES = {
    "elastic_transform": "imagecorruptions' elastic differs from ImageNet-C's (no affine step, other constants)",
    "frost": "our textures (reference sizes, colour mean/std, roughness)",
    "glass_blur": "exact for the reference's own offsets (tests)",
    "motion_blur": "exact for the same angle (tests)",
    "spatter": "exact distance transform (see spatter)",
}


def clean_images(size: int, count: int) -> np.ndarray:
    """Return ``count`` uint8 ``(size, size, 3)`` centre crops of scikit-image's sample photographs."""
    import skimage.data

    images = []
    for name in PHOTOS[:count]:
        photo = getattr(skimage.data, name)()
        side = min(photo.shape[:2])
        top, left = (photo.shape[0] - side) // 2, (photo.shape[1] - side) // 2
        crop = Image.fromarray(photo[top : top + side, left : left + side, :3])
        images.append(np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC)))
    return np.stack(images)


def statistics(clean: np.ndarray, corrupted: np.ndarray) -> tuple[float, float, float]:
    """Return (mean |y - x|, mean(y - x), gradient ratio) in 0..255 units over a stack of images."""
    x, y = clean.astype(np.float64), corrupted.astype(np.float64)

    def gradient(a: np.ndarray) -> float:
        return float(np.abs(np.diff(a, axis=1)).mean() + np.abs(np.diff(a, axis=2)).mean())

    return float(np.abs(y - x).mean()), float((y - x).mean()), gradient(y) / gradient(x)


def ours(images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255
    y = corrupt(x, name, severity, generator=torch.Generator().manual_seed(seed), table="imagenet")
    return np.round(y.permute(0, 2, 3, 1).numpy() * 255).clip(0, 255)


def reference_output(reference: object, images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    np.random.seed(seed)
    fn = getattr(reference, name)
    return np.stack([np.round(np.asarray(fn(Image.fromarray(image), severity), dtype=np.float64)).clip(0, 255)
                     for image in images])


def rows(reference: object, images: np.ndarray, names: Sequence[str], draws: int) -> Iterator[str]:
    """Yield one markdown row per corruption and severity."""
    for name in names:
        for severity in range(1, 6):
            if name in DETERMINISTIC:
                diff = np.abs(ours(images, name, severity, 0) - reference_output(reference, images, name, severity, 0))
                ref_stats = statistics(images, reference_output(reference, images, name, severity, 0))
                yield (f"| {name} | {severity} | exact | {diff.mean():.3f} (max {diff.max():.0f}) | "
                       f"{ref_stats[0]:.2f} | | | |")
                continue
            count = draws * EXTRA_DRAWS.get(name, 1)
            mine = np.mean([statistics(images, ours(images, name, severity, d)) for d in range(count)], axis=0)
            ref = np.mean([statistics(images, reference_output(reference, images, name, severity, d))
                           for d in range(count)], axis=0)
            gap = abs(mine[0] - ref[0]) / max(ref[0], 1e-9) * 100
            yield (f"| {name} | {severity} | stats | {gap:.1f}% | {ref[0]:.2f} / {mine[0]:.2f} | "
                   f"{ref[1]:+.2f} / {mine[1]:+.2f} | {ref[2]:.3f} / {mine[2]:.3f} | {NOTES.get(name, '')} |")


def main(argv: Sequence[str] | None = None) -> int:
    """Print the fidelity table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=6, help=f"how many of {len(PHOTOS)} photographs")
    parser.add_argument("--draws", type=int, default=2, help="random draws per stochastic corruption")
    parser.add_argument("--corruptions", default="all", help="a subset name or a comma-separated list")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    reference = load_reference()
    if reference is None:
        print("imagecorruptions (or scikit-image/scipy/opencv) is not installed: pip install -e .[dev]")
        return 1
    try:
        names = list_corruptions(args.corruptions)  # type: ignore[arg-type]
    except ValueError:
        names = args.corruptions.split(",")
    images = clean_images(args.size, args.images)
    start = time.perf_counter()
    print(f"{len(images)} photographs at {args.size}x{args.size}, ImageNet-C constants, "
          f"{args.draws} draw(s) per stochastic cell (times {EXTRA_DRAWS}); values in 0..255 units\n")
    print("| corruption | severity | compared | mean abs diff (exact) or gap in abs change (stats) "
          "| abs change ref / ours | shift ref / ours | grad ratio ref / ours | note |")
    print("|---|---|---|---|---|---|---|---|")
    for line in rows(reference, images, names, args.draws):
        print(line, flush=True)
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
