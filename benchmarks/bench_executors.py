"""Wall time of one small benchmark grid with each executor on this machine, in one run.

Each round runs the same grid into a fresh results store with every executor asked for, one after
another: ``local`` (every unit in this process, one after another, with all torch threads),
``processes`` (``--jobs`` spawned worker processes with ``--threads-per-job`` torch threads each,
started by the first round and kept up for the next, as within one ``tta bench`` run) and ``ray`` (one task per unit on a Ray
instance this script starts, ``--ray-cpus`` CPUs, ``--cpus-per-cell`` each; skipped when Ray is not
installed). Rounds are interleaved and the best of each is kept; the first round of each executor is
printed apart (workers importing torch), and so is the Ray start-up. The stores of all executors
are checked to hold the same errors.

The local executor's CPU time is printed next to its wall time, with the machine's load average:
on a machine shared with other work, a run of several processes gets a larger share of the cores
than one process, so read the ratios together with the load.

Usage:
    python benchmarks/bench_executors.py --rounds 3 --executors local,processes,ray
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from eval.bench.spec import BenchSpec
from eval.bench.driver import run_bench
from eval.bench.executors import Executor, LocalExecutor
from eval.bench.executors.processes import ProcessExecutor
from eval.bench.executors.ray_executor import RayExecutor, import_ray
from eval.results.store import ResultsStore
from eval.models.suites import SuiteSpec


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
    """Time the grid with each executor and print the table of best times and their ratio to local."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="source,norm,tent")
    parser.add_argument("--corruptions", default="gaussian_noise,shot_noise,defocus_blur,contrast")
    parser.add_argument("--severity", type=int, default=5)
    parser.add_argument("--limit", type=int, default=2000, help="test images per domain")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--executors", default="local,processes,ray")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes: worker processes")
    parser.add_argument("--threads-per-job", type=int, default=1, help="processes: torch threads per worker")
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the Ray instance")
    parser.add_argument("--cpus-per-cell", type=float, default=1.0, help="ray: CPUs each task reserves")
    parser.add_argument("--data-root", type=Path, default=None, help="Fashion-MNIST IDX folder")
    args = parser.parse_args()

    spec = BenchSpec(methods=tuple(args.methods.split(",")), corruptions=tuple(args.corruptions.split(",")),
                     severities=(args.severity,), limit=args.limit, batch_size=args.batch_size,
                     suite=SuiteSpec(data_root=args.data_root))
    executors, ray, ray_start = build_executors(args)
    best = dict.fromkeys(executors, float("inf"))
    first: dict[str, float] = {}
    local_cpu = 0.0
    load_before = os.getloadavg()[0]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for round_ in range(args.rounds):
                errors, line = {}, []
                for name, executor in executors.items():
                    seconds, cpu, errors[name] = timed_sweep(spec, executor, Path(tmp), name)
                    first.setdefault(name, seconds)
                    if name == "local" and seconds < best[name]:
                        local_cpu = cpu
                    best[name] = min(best[name], seconds)
                    line.append(f"{name} {seconds:.2f} s")
                if len({tuple(sorted(e.items())) for e in errors.values()}) != 1:
                    raise RuntimeError(f"the executors disagree: {errors}")
                print(f"round {round_ + 1}: " + ", ".join(line), flush=True)
    finally:
        for executor in executors.values():
            executor.close()
        if ray is not None:
            ray.shutdown()
    print_table(args, spec, best, first, local_cpu, ray, ray_start, load_before)


def build_executors(args: argparse.Namespace) -> tuple[dict[str, Executor], Any, float]:
    """Return the executors asked for, the ray module (or None) and the Ray start-up seconds."""
    executors: dict[str, Executor] = {}
    ray, ray_start = None, 0.0
    for name in args.executors.split(","):
        if name == "local":
            executors[name] = LocalExecutor()
        elif name == "processes":
            executors[name] = ProcessExecutor(jobs=args.jobs, threads_per_job=args.threads_per_job)
        elif name == "ray":
            try:
                ray = import_ray()
            except ImportError as error:
                print(f"ray skipped: {error}")
                continue
            start = time.perf_counter()
            ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
            ray_start = time.perf_counter() - start
            executors[name] = RayExecutor(cpus_per_unit=args.cpus_per_cell)
        else:
            raise SystemExit(f"unknown executor {name!r}; choose from local, processes, ray")
    return executors, ray, ray_start


def print_table(args: argparse.Namespace, spec: BenchSpec, best: dict[str, float], first: dict[str, float],
                local_cpu: float, ray: Any, ray_start: float, load_before: float) -> None:
    """Print the grid's description and the table of best (and first-round) wall times."""
    units = len(spec.methods) * len(spec.domains)
    print(f"\ngrid: {units} cells ({args.methods} x {args.corruptions}, severity {args.severity}), "
          f"{args.limit} images each, batch {args.batch_size}; {os.cpu_count()} CPU cores, "
          f"torch threads {torch.get_num_threads()} (local); processes: {args.jobs} x {args.threads_per_job} "
          f"thread(s); " + (f"Ray {ray.__version__} with {args.ray_cpus} CPUs, {args.cpus_per_cell:g} per task; "
                            if ray is not None else "") +
          f"best of {args.rounds} rounds; 1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    reference = best.get("local")
    print("| executor | best wall time (s) | first round (s) | local / this |")
    print("|:--|--:|--:|--:|")
    for name, seconds in best.items():
        label = f"local (in-process; {local_cpu:.1f} s of CPU)" if name == "local" else name
        ratio = f"{reference / seconds:.2f}" if reference else ""
        print(f"| {label} | {seconds:.2f} | {first[name]:.2f} | {ratio} |")
    if ray is not None:
        print(f"| ray start-up alone (ray.init) | {ray_start:.2f} | | |")


if __name__ == "__main__":
    main()
