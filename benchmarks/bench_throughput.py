"""Images/second of plain inference, norm and tent on the same model and batch, with ratios.

Plain inference is the deployed model under ``torch.inference_mode()``; "official structure" rows
run the same computation the way Tent's official code does (BN layers switched to train mode). Each method is timed on
the same batch after warm-up, in interleaved rounds; each row is the best round (the least disturbed
by other work on the machine). The ratio is method throughput / plain throughput (1.0 = free).

Usage:
    python benchmarks/bench_throughput.py                      # shipped Fashion-MNIST model, batch 128
    python benchmarks/bench_throughput.py --model resnet50 --image-size 224 --batch-size 64 --device cuda
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch
from torch import nn

import tta
from timing import add_timing_arguments, best_of, build_model  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def reference_norm(model: nn.Module) -> Callable[[torch.Tensor], object]:
    """Return Tent's ``norm`` baseline as its official code does it: BatchNorm layers in train mode."""
    ref = copy.deepcopy(model)
    for module in ref.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()

    def step(x: torch.Tensor) -> object:
        with torch.no_grad():
            return ref(x)

    return step


def reference_tent(model: nn.Module) -> Callable[[torch.Tensor], object]:
    """Return Tent as its official code structures it (train mode, stats dropped, Adam 1e-3, one step)."""
    ref = copy.deepcopy(model).train()
    ref.requires_grad_(False)
    params = []
    for module in ref.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.requires_grad_(True)
            module.track_running_stats, module.running_mean, module.running_var = False, None, None
            params += [module.weight, module.bias]
    optimizer = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999))

    def step(x: torch.Tensor) -> object:
        with torch.enable_grad():
            logits = ref(x)
            (-(logits.softmax(1) * logits.log_softmax(1)).sum(1)).mean(0).backward()
            optimizer.step()
            optimizer.zero_grad()
        return logits

    return step


def main() -> None:
    """Print one table: method, images/s, ratio to plain inference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_arguments(parser, repeats=10, rounds=5, warmup=3)
    args = parser.parse_args()

    model, channels = build_model(args.model)
    model = model.to(args.device)
    x = torch.rand(args.batch_size, channels, args.image_size, args.image_size, device=args.device)

    def plain(batch: torch.Tensor) -> object:
        with torch.inference_mode():
            return model(batch)

    steps: dict[str, Callable[[torch.Tensor], object]] = {"plain inference": plain}
    steps.update({m: tta.wrap(model, m).to(args.device) for m in ("source", "norm", "tent")})
    steps["norm, official structure"] = reference_norm(model)
    steps["tent, official structure"] = reference_tent(model)
    rows = list(best_of(steps, x, args).items())
    base = rows[0][1]
    print(f"model={args.model} batch={args.batch_size} size={args.image_size} device={args.device} "
          f"threads={torch.get_num_threads()} torch={torch.__version__}")
    print("| method | images/s | ratio to plain |\n|---|---:|---:|")
    for name, ips in rows:
        print(f"| {name} | {ips:,.0f} | {ips / base:.2f} |")


if __name__ == "__main__":
    main()
