"""Wall time of one small benchmark grid with the local executor vs Ray on this machine, in one run.

Each round runs the same grid into a fresh results store, first with the local executor (every unit
in this process, one after another), then with the Ray executor on a Ray instance this script starts
(``--ray-cpus`` CPUs, one task per unit reserving ``--cpus-per-cell``). Rounds are interleaved and the
best of each is kept; the Ray start-up (``ray.init``) and the first, cold round (workers importing
torch) are printed apart. The stores of both executors are checked to hold the same errors.

The local executor's CPU time is printed next to its wall time, with the machine's load average:
on a machine shared with other work, a run of several processes (Ray's workers) gets a larger share
of the cores than one process, so read the ratio together with the load.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/bench_executors.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from eval.bench import BenchSpec, run_bench
from eval.executors import Executor, LocalExecutor
from eval.executors.ray_executor import RayExecutor, import_ray
from eval.results import ResultsStore
from eval.suites import SuiteSpec


def timed_sweep(spec: BenchSpec, executor: Executor, folder: Path,
                name: str) -> tuple[float, float, dict[str, float]]:
    """Return the wall time and this process's CPU time of the grid into a new store, and each cell's error."""
    path = folder / f"{name}.sqlite"
    path.unlink(missing_ok=True)
    with ResultsStore(path) as store:
        start, cpu = time.perf_counter(), time.process_time()
        results = run_bench(spec, store, executor=executor)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return seconds, cpu, {f"{r.key.method}/{r.key.domain}": r.error for r in results}


def main() -> None:
    """Time the grid with both executors and print the table of best times and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="source,norm,tent")
    parser.add_argument("--corruptions", default="gaussian_noise,shot_noise,defocus_blur,contrast")
    parser.add_argument("--severity", type=int, default=5)
    parser.add_argument("--limit", type=int, default=2000, help="test images per domain")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the Ray instance")
    parser.add_argument("--cpus-per-cell", type=float, default=1.0)
    parser.add_argument("--data-root", type=Path, default=None, help="Fashion-MNIST IDX folder")
    args = parser.parse_args()

    spec = BenchSpec(methods=tuple(args.methods.split(",")), corruptions=tuple(args.corruptions.split(",")),
                     severities=(args.severity,), limit=args.limit, batch_size=args.batch_size,
                     suite=SuiteSpec(data_root=args.data_root))
    ray = import_ray()
    start = time.perf_counter()
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - start
    local, remote = LocalExecutor(), RayExecutor(cpus_per_unit=args.cpus_per_cell)
    best = {"local": float("inf"), "ray": float("inf")}
    cold, local_cpu = 0.0, 0.0
    load_before = os.getloadavg()[0]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for round_ in range(args.rounds):
                local_s, cpu_s, local_errors = timed_sweep(spec, local, Path(tmp), "local")
                ray_s, _, ray_errors = timed_sweep(spec, remote, Path(tmp), "ray")
                if local_errors != ray_errors:
                    raise RuntimeError(f"the executors disagree: {local_errors} vs {ray_errors}")
                cold = ray_s if round_ == 0 else cold
                if local_s < best["local"]:
                    best["local"], local_cpu = local_s, cpu_s
                best["ray"] = min(best["ray"], ray_s)
                print(f"round {round_ + 1}: local {local_s:.2f} s (cpu {cpu_s:.2f} s), ray {ray_s:.2f} s", flush=True)
    finally:
        ray.shutdown()

    units = len(spec.methods) * len(spec.domains)
    print(f"\ngrid: {units} cells ({args.methods} x {args.corruptions}, severity {args.severity}), "
          f"{args.limit} images each, batch {args.batch_size}; {os.cpu_count()} CPU cores, "
          f"torch threads {torch.get_num_threads()}, Ray {ray.__version__} with {args.ray_cpus} CPUs, "
          f"{args.cpus_per_cell:g} per task; best of {args.rounds} rounds; "
          f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print("| executor | wall time (s) | local / this |")
    print("|:--|--:|--:|")
    print(f"| local (in-process; {local_cpu:.1f} s of CPU) | {best['local']:.2f} | 1.00 |")
    print(f"| ray (warm workers) | {best['ray']:.2f} | {best['local'] / best['ray']:.2f} |")
    print(f"| ray, first round (workers start) | {cold:.2f} | {best['local'] / cold:.2f} |")
    print(f"| ray start-up alone (ray.init) | {ray_start:.2f} | |")


if __name__ == "__main__":
    main()
