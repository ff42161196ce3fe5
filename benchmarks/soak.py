"""Soak test: a long continual Fashion-MNIST-C stream through one wrapper; error, throughput and memory over time.

The stream cycles through the corruptions (severity 5) until ``--images`` images were seen, in
batches of ``--batch-size``. Every ``--report-every`` images it prints the window's error, the
images/second of the window and the process's resident memory (Linux /proc), so a leak shows as
growth. Run it with ``--production`` to put the collapse guard in front.

Usage:
    python benchmarks/soak.py --method tent --images 100000
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import time

import torch

import tta
from eval.corruptions import DEFAULT_CORRUPTIONS
from eval.datasets import CorruptedView, load_fashion_mnist
from eval.models.source import load_source_model


def resident_mib() -> float:
    """Return the current resident set size of this process in MiB (Linux)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    """Run the stream and print one line per report window, then a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="tent")
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--report-every", type=int, default=10_000)
    parser.add_argument("--production", action="store_true", help="wrap with the collapse guard")
    args = parser.parse_args()

    images, labels = load_fashion_mnist("test")
    adapter = tta.wrap(load_source_model(), args.method, production=args.production)
    views = [CorruptedView(images, labels, c, 5, batch_size=args.batch_size, seed=0) for c in DEFAULT_CORRUPTIONS]
    batches = itertools.chain.from_iterable(itertools.cycle(views))
    print(f"method={args.method} production={args.production} batch={args.batch_size} "
          f"threads={torch.get_num_threads()} torch={torch.__version__}")
    print("| images | window error (%) | images/s | RSS (MiB) |\n|--:|--:|--:|--:|")
    seen, wrong, window_start, window_seen, first_rss = 0, 0, time.perf_counter(), 0, resident_mib()
    for x, y in batches:
        wrong += int((adapter(x).argmax(1) != y).sum())
        seen += len(y)
        window_seen += len(y)
        if window_seen >= args.report_every or seen >= args.images:
            elapsed = time.perf_counter() - window_start
            print(f"| {seen} | {100 * wrong / window_seen:.1f} | {window_seen / elapsed:,.0f} | {resident_mib():.0f} |")
            wrong, window_seen, window_start = 0, 0, time.perf_counter()
        if seen >= args.images:
            break
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"RSS first window start {first_rss:.0f} MiB, end {resident_mib():.0f} MiB, peak {peak:.0f} MiB")


if __name__ == "__main__":
    main()
