"""Speed of CoTTA and LAME relative to plain inference, and of our CoTTA against the official loop structure.

Two tables from one run on the same model and batch:

1. images/second of plain inference (``torch.inference_mode()``), ``source``, ``lame`` and ``cotta``
   (when the anchor is confident, and when it is not, i.e. with the 32-copy augmentation pass),
   with the ratio to plain inference;
2. our ``cotta`` against a faithful re-statement of the official ``forward_and_adapt`` (qinenergy/cotta
   ``cifar/cotta.py``): 32 separate augment-and-forward calls, each through the full torchvision
   pipeline (blur over the whole padded image, then crop), a per-parameter EMA loop and per-parameter
   restore masks. Both take the same random draws, so their outputs are compared as well.

Each row is the best of interleaved rounds (the least disturbed by other work on the machine).

Usage:
    python benchmarks/bench_cotta_lame.py                            # shipped Fashion-MNIST model, batch 128
    python benchmarks/bench_cotta_lame.py --model resnet50 --image-size 224 --batch-size 64 --device cuda
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torchvision.transforms.functional as TF
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode

import tta
from tta.augment import AugmentParams, sample_augment_params
from tta.methods.cotta import CoTTA
from timing import add_timing_arguments, best_of, build_model  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def official_augment(x: Tensor, p: AugmentParams, generator: torch.Generator, noise_std: float = 0.005) -> Tensor:
    """The official transform chain on one copy, step by step, with the draws ``p``."""
    h, w = x.shape[-2:]
    out = x.clamp(0.0, 1.0)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue,
           lambda img, f: TF.adjust_gamma(img.clamp(1e-8, 1.0), f)]
    for op in p.order:
        out = ops[op](out, p.factors[op])
    out = TF.pad(out, [w // 2, h // 2], padding_mode="edge")
    out = TF.affine(out, angle=p.angle, translate=list(p.translate), scale=p.scale, shear=[0.0, 0.0],
                    interpolation=InterpolationMode.BILINEAR, fill=[0.0] * out.shape[-3])
    out = TF.gaussian_blur(out, [5, 5], [p.sigma, p.sigma])
    out = TF.center_crop(out, [h, w])
    if p.flip:
        out = TF.hflip(out)
    return (out + torch.randn(out.shape, generator=generator, device=out.device) * noise_std).clamp(0.0, 1.0)


class OfficialLoopCoTTA:
    """CoTTA's official step structure on the modules of a :class:`CoTTA` (which it updates in place).

    ``always_augment`` runs the 32 augmented forwards on every batch, used or not, as the CIFAR code
    does; otherwise only when the anchor is unsure (the ImageNet code).
    """

    def __init__(self, adapter: CoTTA, *, always_augment: bool = True) -> None:
        self.a, self.always_augment = adapter, always_augment

    @torch.enable_grad()
    def __call__(self, x: Tensor) -> Tensor:
        a = self.a
        cpu_gen, device_gen = a.step_generators(x.device)
        outputs = a.model(x)
        with torch.no_grad():
            anchor_prob = a.anchor(x).softmax(1).max(1)[0]
            standard_ema = a.teacher(x)
            unsure = bool(anchor_prob.mean(0) < a.confidence_threshold)
            if unsure or self.always_augment:
                draws = sample_augment_params(a.num_augmentations, *x.shape[-2:], cpu_gen)
                outputs_emas = [a.teacher(official_augment(x, p, device_gen)) for p in draws]
            outputs_ema = torch.stack(outputs_emas).mean(0) if unsure else standard_ema
        loss = -(outputs_ema.softmax(1) * outputs.log_softmax(1)).sum(1).mean(0)
        loss.backward()
        a.optimizer.step()
        a.optimizer.zero_grad()
        with torch.no_grad():
            for ema_param, param in zip(a.teacher.parameters(), a.model.parameters()):
                ema_param.data[:] = a.ema_momentum * ema_param[:].data[:] + (1 - a.ema_momentum) * param[:].data[:]
            for param, source in zip([p for p, _ in a._restored], a._sources):
                mask = (torch.rand(param.shape, generator=device_gen, device=param.device) < a.restore_prob).float()
                param.data = source * mask + param * (1.0 - mask)
        a.step_count += 1
        return outputs_ema


def fidelity(model: nn.Module, x: Tensor, batches: int, max_images: int | None) -> float:
    """Return the largest |difference| of outputs, ours vs the official loop, over ``batches`` steps."""
    ours = tta.wrap(model, "cotta", confidence_threshold=2.0, max_images=max_images).to(x.device)
    reference = OfficialLoopCoTTA(tta.wrap(model, "cotta", confidence_threshold=2.0).to(x.device),
                                  always_augment=False)
    worst = 0.0
    for i in range(batches):
        batch = (x + 0.05 * i).clamp(0, 1)
        worst = max(worst, (ours(batch) - reference(batch)).abs().max().item())
    return worst


def main() -> None:
    """Print the two tables and the fidelity check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_arguments(parser, repeats=2, rounds=3, warmup=1)
    parser.add_argument("--max-images", type=int, default=None, help="CoTTA's max_images (None: its default)")
    args = parser.parse_args()

    model, channels = build_model(args.model)
    model = model.to(args.device)
    x = torch.rand(args.batch_size, channels, args.image_size, args.image_size,
                   generator=torch.Generator().manual_seed(0)).to(args.device)

    def plain(batch: Tensor) -> object:
        with torch.inference_mode():
            return model(batch)

    def cotta(threshold: float) -> CoTTA:
        return tta.wrap(model, "cotta", confidence_threshold=threshold, max_images=args.max_images).to(args.device)

    steps: dict[str, Callable[[Tensor], object]] = {
        "plain inference": plain,
        "source": tta.wrap(model, "source").to(args.device),
        "lame": tta.wrap(model, "lame").to(args.device),
        "cotta, anchor confident": cotta(0.0),
        "official loop (CIFAR code), anchor confident": OfficialLoopCoTTA(cotta(0.0)),
        "cotta, anchor unsure (32 copies)": cotta(2.0),
        "official loop, anchor unsure (32 copies)": OfficialLoopCoTTA(cotta(2.0)),
    }
    best = best_of(steps, x, args)
    base = best["plain inference"]
    print(f"model={args.model} batch={args.batch_size} size={args.image_size} device={args.device} "
          f"threads={torch.get_num_threads()} max_images={args.max_images} torch={torch.__version__}")
    print("| method | images/s | ratio to plain |\n|---|---:|---:|")
    for name, ips in best.items():
        print(f"| {name} | {ips:,.1f} | {ips / base:.3f} |")
    for case, ours, official in [
        ("anchor confident", "cotta, anchor confident", "official loop (CIFAR code), anchor confident"),
        ("anchor unsure", "cotta, anchor unsure (32 copies)", "official loop, anchor unsure (32 copies)"),
    ]:
        print(f"our cotta / official loop structure, {case}: {best[ours] / best[official]:.2f}x the throughput")
    print(f"largest |output difference| over 3 steps: {fidelity(model, x, 3, args.max_images):.2e}")


if __name__ == "__main__":
    main()
