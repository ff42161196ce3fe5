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
import time
from collections.abc import Callable

import torch
from torch import nn

import tta


def build_model(name: str) -> tuple[nn.Module, int]:
    """Return (model in eval mode, input channels): the shipped Fashion-MNIST model or a torchvision one."""
    if name == "fmnist":
        from eval.models import load_source_model

        return load_source_model(), 1
    import torchvision

    return getattr(torchvision.models, name)(num_classes=1000).eval(), 3


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


def images_per_second(step: Callable[[torch.Tensor], object], x: torch.Tensor, repeats: int, warmup: int) -> float:
    """Return the throughput of ``step(x)`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        step(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return repeats * x.shape[0] / (time.perf_counter() - start)


def main() -> None:
    """Print one table: method, images/s, ratio to plain inference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fmnist", help="'fmnist' or a torchvision model name")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=10, help="calls per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the best is kept")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
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
    best = dict.fromkeys(steps, 0.0)
    for _ in range(args.rounds):
        for name, step in steps.items():
            best[name] = max(best[name], images_per_second(step, x, args.repeats, args.warmup))
    rows = list(best.items())
    base = rows[0][1]
    print(f"model={args.model} batch={args.batch_size} size={args.image_size} device={args.device} "
          f"threads={torch.get_num_threads()} torch={torch.__version__}")
    print("| method | images/s | ratio to plain |\n|---|---:|---:|")
    for name, ips in rows:
        print(f"| {name} | {ips:,.0f} | {ips / base:.2f} |")


if __name__ == "__main__":
    main()
