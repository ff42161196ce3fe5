"""Images/second on CPU of PyTorch eager vs onnxruntime, for the plain and the adaptive graph, with ratios.

Plain: the deployed model (eager under ``torch.inference_mode()``; ONNX: the ``frozen`` export).
Adaptive: test-time BatchNorm statistics (eager: ``tta.wrap(model, "norm")``; ONNX: the ``adaptive``
export, statistics computed inside the graph). Both runtimes get the same number of threads. Every
configuration is timed in interleaved rounds in one run; each row keeps the best round (the least
disturbed by other work on the machine). ``ort / eager`` > 1 means onnxruntime is faster.

``--export-times`` instead times ``tta.export_onnx`` itself (export and onnxruntime check) with the
``dynamo`` and the ``torchscript`` exporter, for both modes, on the models named (torchvision ones with
random weights at 64x64, the size of the export parity tests; the shipped model at 28x28), best of
``--rounds`` interleaved rounds.

Usage:
    python benchmarks/bench_onnx.py                                 # shipped Fashion-MNIST model
    python benchmarks/bench_onnx.py --model resnet18 --image-size 64 --batch-sizes 1,16
    python benchmarks/bench_onnx.py --export-times fmnist,resnet18,mobilenet_v3_small
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

import tta
from tta.onnx.edge import EdgeSession

Step = Callable[[torch.Tensor], object]


def build_model(name: str) -> tuple[nn.Module, int]:
    """Return (model in eval mode, input channels): the shipped Fashion-MNIST model or a torchvision one."""
    if name == "fmnist":
        from eval.models.source import load_source_model

        return load_source_model(), 1
    import torchvision

    return getattr(torchvision.models, name)(num_classes=1000).eval(), 3


def images_per_second(step: Step, x: torch.Tensor, seconds: float) -> float:
    """Return the throughput of ``step(x)`` over at least ``seconds`` (and at least 3 calls)."""
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        step(x)
        calls += 1
    return calls * x.shape[0] / (time.perf_counter() - start)


def onnx_step(model: nn.Module, example: torch.Tensor, mode: str, threads: int) -> Step:
    """Export ``model`` in ``mode`` (verified) and return a step running it in onnxruntime."""
    buffer = io.BytesIO()
    tta.export_onnx(model, buffer, example, mode=mode)  # type: ignore[arg-type]
    session = EdgeSession(buffer.getvalue(), intra_op_threads=threads)
    return lambda x: session(x.numpy())


def build_steps(model: nn.Module, example: torch.Tensor, threads: int) -> dict[tuple[str, str], Step]:
    """Return the four configurations: (graph, runtime) -> step."""
    adaptive = tta.wrap(model, "norm")

    def plain(x: torch.Tensor) -> object:
        with torch.inference_mode():
            return model(x)

    return {
        ("plain", "eager"): plain,
        ("plain", "onnxruntime"): onnx_step(model, example, "frozen", threads),
        ("adaptive", "eager"): adaptive,
        ("adaptive", "onnxruntime"): onnx_step(model, example, "adaptive", threads),
    }


def export_seconds(model: nn.Module, example: torch.Tensor, mode: str, exporter: str) -> float:
    """Return the wall time of one verified ``tta.export_onnx`` call into memory."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the dynamo exporter prints its progress
        tta.export_onnx(model, io.BytesIO(), example, mode=mode, exporter=exporter)  # type: ignore[arg-type]
    return time.perf_counter() - start


def print_export_times(names: list[str], rounds: int) -> None:
    """Print the best-of-``rounds`` export time of each model and mode with both exporters, and their ratio."""
    exporters = ("dynamo", "torchscript")
    print(f"threads={torch.get_num_threads()} torch={torch.__version__} rounds={rounds}")
    print("| model | input | mode | dynamo s | torchscript s | dynamo / torchscript |\n|---|---|---|--:|--:|--:|")
    ratios = []
    for name in names:
        model, channels = build_model(name)
        size = 28 if name == "fmnist" else 64  # tests/tta/test_export.py's shapes
        example = torch.rand(4, channels, size, size, generator=torch.Generator().manual_seed(0))
        for mode in ("frozen", "adaptive"):
            best = {e: float("inf") for e in exporters}
            for _ in range(rounds):
                for exporter in exporters:
                    best[exporter] = min(best[exporter], export_seconds(model, example, mode, exporter))
            ratios.append(best["dynamo"] / best["torchscript"])
            print(f"| {name} | {channels}x{size}x{size} | {mode} | {best['dynamo']:.2f} | {best['torchscript']:.2f} "
                  f"| {ratios[-1]:.1f} |")
    print(f"dynamo / torchscript export time: {min(ratios):.1f}-{max(ratios):.1f}x")


def main() -> None:
    """Print one table: graph, batch, eager and onnxruntime images/s, and their ratio (or the export times)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fmnist", help="'fmnist' or a torchvision model name")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--threads", type=int, default=2, help="threads for both runtimes")
    parser.add_argument("--seconds", type=float, default=0.5, help="time per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best is kept")
    parser.add_argument("--export-times", metavar="MODELS", default=None,
                        help="comma-separated models: time the two exporters on them instead")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.export_times is not None:
        print_export_times(args.export_times.split(","), args.rounds)
        return
    model, channels = build_model(args.model)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    shape = (channels, args.image_size, args.image_size)
    steps = build_steps(model, torch.rand(8, *shape), args.threads)
    inputs = {b: torch.rand(b, *shape) for b in batch_sizes}
    for step in steps.values():  # warm-up
        for x in inputs.values():
            step(x)
    best: dict[tuple[str, str, int], float] = {}
    for _ in range(args.rounds):
        for (graph, runtime), step in steps.items():
            for b, x in inputs.items():
                key = (graph, runtime, b)
                best[key] = max(best.get(key, 0.0), images_per_second(step, x, args.seconds))
    import onnxruntime

    print(f"model={args.model} size={args.image_size} threads={args.threads} torch={torch.__version__} "
          f"onnxruntime={onnxruntime.__version__} numpy={np.__version__}")
    print("| graph | batch | eager images/s | onnxruntime images/s | ort / eager |\n|---|---:|---:|---:|---:|")
    for graph in ("plain", "adaptive"):
        for b in batch_sizes:
            eager, ort = best[(graph, "eager", b)], best[(graph, "onnxruntime", b)]
            print(f"| {graph} | {b} | {eager:,.0f} | {ort:,.0f} | {ort / eager:.2f} |")
    for b in batch_sizes:
        cost = {r: best[("adaptive", r, b)] / best[("plain", r, b)] for r in ("eager", "onnxruntime")}
        print(f"batch {b}: adaptive / plain throughput: eager {cost['eager']:.2f}, "
              f"onnxruntime {cost['onnxruntime']:.2f}")


if __name__ == "__main__":
    main()
