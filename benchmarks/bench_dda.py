"""DDA on Fashion-MNIST-C: source vs norm vs DDA vs DDA + norm error on a fixed subset per corruption.

Each domain is the first ``--n`` test images, corrupted at ``--severity`` with a fixed generator
(seed 0, on CPU, so every device sees the same pixels). Each batch is projected once per DDA setting,
and the predictions are combined with the same functions ``tta.methods.dda.DDA`` composes
(``softmax(model(x))``, ``softmax(model(projector(x)))``, :func:`ensemble_probabilities`), so one
projection scores every row: ``source``, ``norm`` (test-batch BN statistics), ``projected`` (the
projected image alone), ``dda`` (official ``sum`` ensemble) and ``dda+norm``. ``clean`` is included
as a sanity check of the denoiser (projection should not hurt clean images much).

Examples::

    python benchmarks/bench_dda.py --corruptions holdout --scales 0,1,2,4,6 --start-steps 20,50 --guidance-norm image --device cuda
    python benchmarks/bench_dda.py --corruptions common --scales 2 --guidance-norm image --device cuda
    python benchmarks/bench_dda.py --timing-only --timing-images 20 --denoise-check --n 200  # CPU s/image
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tta  # noqa: E402
from eval.corruptions import corrupt, list_corruptions  # noqa: E402
from eval.datasets.fashion_mnist import load_fashion_mnist  # noqa: E402
from eval.training.diffusion import DEFAULT_DIFFUSION_CHECKPOINT  # noqa: E402
from eval.models.source import load_source_model  # noqa: E402
from tta.methods.dda import ensemble_probabilities  # noqa: E402
from tta.projection import DiffusionProjector, NoiseSchedule, load_denoiser  # noqa: E402


def build_domains(
    n: int, severity: int, subset: str, data_root: str | None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Return ``{domain: (images in [0, 1], labels)}``: clean plus each corruption of the first ``n`` test images."""
    images, labels = load_fashion_mnist("test", data_root)
    x, y = images[:n].float() / 255.0, labels[:n]
    domains = {"clean": (x, y)}
    subsets = ("common", "holdout", "noise", "blur", "weather", "digital", "all")
    names = list_corruptions(subset) if subset in subsets else subset.split(",")  # type: ignore[arg-type]
    for name in names:
        domains[name] = (corrupt(x, name, severity, generator=torch.Generator().manual_seed(0)), y)
    return domains


@torch.no_grad()
def score_domain(model: torch.nn.Module, norm: torch.nn.Module, projector: DiffusionProjector | None,
                 x: torch.Tensor, y: torch.Tensor, *, batch_size: int, device: str) -> dict[str, float]:
    """Return the error (%) of every row on one domain; ``projector=None`` scores source and norm only."""
    wrong: dict[str, int] = {}
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
        p_src, p_norm = model(xb).softmax(1), norm(xb).softmax(1)
        rows = {"source": p_src, "norm": p_norm}
        if projector is not None:
            generator = torch.Generator(device=device).manual_seed(start)
            projected = projector(xb, generator=generator)
            q_src, q_norm = model(projected).softmax(1), norm(projected).softmax(1)
            rows.update(projected=q_src, dda=ensemble_probabilities(p_src, q_src, "sum"),
                        dda_entropy=ensemble_probabilities(p_src, q_src, "entropy"),
                        dda_norm=ensemble_probabilities(p_norm, q_norm, "sum"))
        for name, probs in rows.items():
            wrong[name] = wrong.get(name, 0) + int((probs.argmax(1) != yb).sum())
    return {name: 100.0 * count / len(x) for name, count in wrong.items()}


def time_projection(projector: DiffusionProjector, x: torch.Tensor, rounds: int = 2) -> float:
    """Return the best-of-``rounds`` seconds per image of projecting ``x`` (on its device)."""
    best = float("inf")
    for seed in range(rounds):
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        projector(x, generator=torch.Generator(device=x.device).manual_seed(seed))
        if x.is_cuda:
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / len(x))
    return best


@torch.no_grad()
def denoising_psnr(denoiser: torch.nn.Module, x: torch.Tensor, timesteps: list[int], seed: int = 0) -> dict[int, float]:
    """Return the PSNR (dB, images in [-1, 1]) of the one-step ``x0`` prediction from ``x_t`` at each timestep."""
    schedule = NoiseSchedule.linear(1000)
    x = x * 2.0 - 1.0
    generator = torch.Generator(device=x.device).manual_seed(seed)
    psnr = {}
    for step in timesteps:
        t = torch.full((len(x),), step, device=x.device)
        x_t = schedule.q_sample(x, t, torch.randn(x.shape, generator=generator, device=x.device))
        x0 = schedule.predict_x0(x_t, t, denoiser(x_t, t).eps)
        psnr[step] = float(10 * torch.log10(4.0 / ((x0 - x) ** 2).mean()))
    return psnr


def _markdown(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = []
    for setting, domains in results.items():
        rows = list(next(iter(domains.values())))
        lines += [f"\n#### {setting}\n", "| domain | " + " | ".join(rows) + " |", "|---" * (len(rows) + 1) + "|"]
        for domain, errors in domains.items():
            lines.append(f"| {domain} | " + " | ".join(f"{errors[r]:.1f}" for r in rows) + " |")
        corrupted = [d for d in domains if d != "clean"]
        if corrupted:
            means = {r: sum(domains[d][r] for d in corrupted) / len(corrupted) for r in rows}
            lines.append("| **mean (corrupted)** | " + " | ".join(f"**{means[r]:.1f}**" for r in rows) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, score every DDA setting on every domain, print markdown tables (and JSON with --json)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500, help="first N test images per domain")
    p.add_argument("--severity", type=int, default=5)
    p.add_argument("--corruptions", default="common", help="subset (common, holdout, noise, all) or comma-separated names")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--device", default="cpu")
    p.add_argument("--denoiser", type=Path, default=DEFAULT_DIFFUSION_CHECKPOINT)
    p.add_argument("--scales", default="6", help="comma-separated guidance scales, one setting each")
    p.add_argument("--guidance-norm", default="batch", choices=["batch", "image"])
    p.add_argument("--chunk-size", type=int, default=None, help="images projected together (default: the batch)")
    p.add_argument("--start-steps", default="50", help="comma-separated N (respaced step noised to), one setting each")
    p.add_argument("--low-pass", type=int, default=4, help="D of the low-pass filter")
    p.add_argument("--timing-images", type=int, default=8, help="images timed for seconds per image (0: none)")
    p.add_argument("--timing-only", action="store_true", help="only time the projection (and --denoise-check)")
    p.add_argument("--denoise-check", action="store_true",
                   help="print the PSNR of one-step denoising of the clean images at t = 50, 250, 500, 750")
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    device = args.device
    denoiser = load_denoiser(args.denoiser, map_location=device)
    schedule = NoiseSchedule.linear(1000, respacing=100)

    def projector(scale: float, start_step: int) -> DiffusionProjector:
        return DiffusionProjector(denoiser, schedule, start_step=start_step, low_pass_factor=args.low_pass,
                                  guidance_scale=scale, guidance_norm=args.guidance_norm, chunk_size=args.chunk_size)

    scales = [float(s) for s in args.scales.split(",")]
    start_steps = [int(n) for n in args.start_steps.split(",")]
    report: dict[str, object] = {"command": " ".join(sys.argv), "device": device, "n": args.n,
                                 "torch": torch.__version__, "threads": torch.get_num_threads()}
    domains = build_domains(args.n, args.severity, args.corruptions, args.data_root)
    if args.timing_images:
        x = domains["clean"][0][: args.timing_images].to(device)
        report["seconds_per_image"] = time_projection(projector(scales[0], start_steps[0]), x)
        print(f"projection: {report['seconds_per_image']:.3f} s per image on {device} "
              f"(N={start_steps[0]}, batch of {len(x)}, best of 2, {torch.get_num_threads()} threads)")
    if args.denoise_check:
        report["denoising_psnr"] = denoising_psnr(denoiser, domains["clean"][0].to(device), [50, 250, 500, 750])
        print("one-step denoising PSNR (dB) of clean images by timestep:",
              {t: round(v, 1) for t, v in report["denoising_psnr"].items()})  # type: ignore[union-attr]
    if args.timing_only:
        return 0
    model = load_source_model(map_location=device)
    norm = tta.wrap(model, "norm")
    results: dict[str, dict[str, dict[str, float]]] = {}
    for start_step, scale in [(n, s) for n in start_steps for s in scales]:
        setting = (f"scale={scale:g} norm={args.guidance_norm} N={start_step} D={args.low_pass} "
                   f"chunk={args.chunk_size or args.batch_size}")
        results[setting] = {}
        for name, (x, y) in domains.items():
            results[setting][name] = score_domain(model, norm, projector(scale, start_step), x, y,
                                                  batch_size=args.batch_size, device=device)
            print(setting, name, {k: round(v, 1) for k, v in results[setting][name].items()}, flush=True)
    report["results"] = results
    print(_markdown(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
