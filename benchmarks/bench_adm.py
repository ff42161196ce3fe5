"""Time the ADM UNet (256x256 unconditional configuration) per forward, fp32 and fp16, and check fp16 fidelity.

Weights are random (seeded; the zero-initialized output layers get small random values too, so every
path contributes) since the released checkpoint is not shipped; the cost of a forward does not depend
on the values. Prints, per batch size, the best of ``--repeats`` timed forwards after one warm-up, the
peak memory on CUDA, and the maximum absolute difference of the fp16 model's output from the fp32
model's relative to the fp32 output's largest value. ``--cpu-check`` also compares the device's fp32
output with the CPU's (batch 1). ``--load-check DIR`` writes a full-size checkpoint with ``save_adm``
into DIR and times ``load_adm`` of it onto the device.

Usage::

    python benchmarks/bench_adm.py --device cuda --batches 1,8,32 --cpu-check --load-check /tmp
    python benchmarks/bench_adm.py --device cpu --batches 1 --repeats 1 --precisions fp32
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tta.projection.adm import ADMUNet, load_adm, save_adm
from tta.projection.adm_config import imagenet_256_uncond_config


def random_model(seed: int = 0) -> ADMUNet:
    """The 256x256 unconditional ADM with default init plus small random values in the zero-initialized layers."""
    torch.manual_seed(seed)
    model = ADMUNet(imagenet_256_uncond_config())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


def best_seconds(model: ADMUNet, x: torch.Tensor, t: torch.Tensor, repeats: int) -> float:
    """Fastest of ``repeats`` synchronized forwards after one warm-up."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    with torch.no_grad():
        model(x, t)
        sync()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            model(x, t)
            sync()
            best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cpu-check", action="store_true")
    parser.add_argument("--load-check", type=Path, default=None)
    parser.add_argument("--precisions", default="fp32,fp16", help="fp32, fp16 or both (fp16 on CPU is slow)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    reference = random_model()
    models = {"fp32": random_model().to(device)}
    if "fp16" in args.precisions.split(","):
        models["fp16"] = random_model().to(device).convert_to_fp16()
    gen = torch.Generator().manual_seed(1)
    print(f"device {device}, parameters {sum(p.numel() for p in models['fp32'].parameters()):,}, "
          f"threads {torch.get_num_threads()}")
    print("batch | precision | s/forward | peak GiB (CUDA) | max|diff from fp32| / max|fp32|")
    for batch in (int(b) for b in args.batches.split(",")):
        x = (torch.rand(batch, 3, 256, 256, generator=gen) * 2 - 1).to(device)
        t = torch.randint(0, 1000, (batch,), generator=gen).to(device)
        fp32_out = None
        for precision, model in models.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = best_seconds(model, x, t, args.repeats)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            with torch.no_grad():
                out = model(x, t).float()
            fp32_out = out if fp32_out is None else fp32_out
            rel = ((out - fp32_out).abs().max() / fp32_out.abs().max()).item()
            print(f"{batch} | {precision} | {seconds:.4f} | {peak:.2f} | {rel:.2e}")
    if args.cpu_check and device.type != "cpu":
        x = torch.rand(1, 3, 256, 256, generator=gen) * 2 - 1
        t = torch.tensor([500])
        with torch.no_grad():
            cpu = reference(x, t)
            dev = models["fp32"](x.to(device), t.to(device)).cpu()
        print(f"fp32 {device} vs cpu, batch 1: max|diff| {(dev - cpu).abs().max().item():.2e}, "
              f"max|out| {cpu.abs().max().item():.2e}")
    if args.load_check is not None:
        path = args.load_check / "adm_256_uncond_random.pt"
        save_adm(reference, path)
        start = time.perf_counter()
        loaded = load_adm(path, map_location=device)
        seconds = time.perf_counter() - start
        pairs = zip(loaded.state_dict().values(), reference.state_dict().values())
        same = all(torch.equal(a.cpu(), b) for a, b in pairs)
        size = path.stat().st_size / 2**30
        print(f"load_adm of a {size:.2f} GiB file onto {device}: {seconds:.1f} s, weights equal: {same}")
        path.unlink()


if __name__ == "__main__":
    main()
