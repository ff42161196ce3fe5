"""Train the small Fashion-MNIST DDPM that DDA projects with by default (``tta train-diffusion``).

A denoising diffusion probabilistic model (Ho et al., NeurIPS 2020, arXiv:2006.11239): our ADM UNet
(:class:`tta.projection.adm.ADMUNet`) with a small configuration for 28x28 grayscale images predicts
the noise ``eps`` of ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` at a uniformly drawn
``t`` of the 1000-step linear schedule, trained with the plain MSE ("simple") loss. Without learned
sigma (enough for a small model, whose reverse steps then use the fixed posterior variance) and
without dropout (so that every random draw comes from one CPU generator and ``--resume`` is exact).
An exponential moving average of the weights is what gets shipped, as in DDPM.

The training state (weights, EMA, optimizer, step, generator) is checkpointed atomically every
``checkpoint_every`` steps; ``resume=True`` continues from it and, on the same device and build,
reaches the same weights as an uninterrupted run.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from eval.datasets.fashion_mnist import load_fashion_mnist
from tta.files import atomic_torch_save, read_torch_file
from tta.projection.adm_config import ADMConfig
from tta.projection.adm import ADMUNet
from tta.projection.schedule import NoiseSchedule

__all__ = [
    "DEFAULT_DIFFUSION_CHECKPOINT",
    "ProgressFn",
    "diffusion_loss",
    "fmnist_ddpm_config",
    "resume_path",
    "train_diffusion",
]

DEFAULT_DIFFUSION_CHECKPOINT = Path(__file__).parents[1] / "assets" / "fmnist_ddpm.pt"
"""The shipped Fashion-MNIST diffusion model (``{"model", "config", ...}``, readable by ``load_adm``)."""

ProgressFn = Callable[[int, int, float], None]
"""Called after each optimizer step with ``(step, total_steps, loss)``; ``step`` counts from 1."""

NUM_DIFFUSION_STEPS = 1000
_WARMUP_STEPS = 200
_GRAD_CLIP = 1.0


def fmnist_ddpm_config(model_channels: int = 32) -> ADMConfig:
    """Return the small ADM configuration for 28x28x1 images: 3 levels (28, 14, 7 px), attention at 7 px."""
    return ADMConfig(
        image_size=28, in_channels=1, model_channels=model_channels, num_res_blocks=2, attention_resolutions=(7,),
        dropout=0.0, channel_mult=(1, 2, 2), num_heads=4, use_scale_shift_norm=True, resblock_updown=False,
        learn_sigma=False,
    )  # fmt: skip


def resume_path(out: str | os.PathLike[str]) -> Path:
    """Return where the resumable training state of ``out`` lives: ``<out>.train``, beside it."""
    out = Path(out)
    return out.with_name(out.name + ".train")


def diffusion_loss(model: nn.Module, x0: Tensor, t: Tensor, noise: Tensor, schedule: NoiseSchedule) -> Tensor:
    """Return the DDPM "simple" loss: mean squared error between ``noise`` and the model's prediction at ``x_t``."""
    x_t = schedule.q_sample(x0, t, noise)
    return nn.functional.mse_loss(model(x_t, schedule.timesteps.to(t.device)[t]), noise)


def _draw_batch(images: Tensor, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Draw images (with random horizontal flips), timesteps and noise, all from ``generator`` on CPU."""
    index = torch.randint(0, len(images), (batch_size,), generator=generator)
    x0 = images[index].float() / 127.5 - 1.0
    flip = torch.rand(batch_size, generator=generator) < 0.5
    x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
    t = torch.randint(0, NUM_DIFFUSION_STEPS, (batch_size,), generator=generator)
    return x0, t, torch.randn(x0.shape, generator=generator)


def _new_state(config: ADMConfig, *, seed: int, lr: float, device: torch.device) -> dict[str, Any]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ADMUNet(config)
    model = model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    return {"model": model, "ema": ema, "optimizer": optimizer, "step": 0,
            "generator": torch.Generator().manual_seed(seed)}  # fmt: skip


def _save_state(path: Path, state: dict[str, Any], train_config: dict[str, Any]) -> None:
    atomic_torch_save({
        "model": state["model"].state_dict(), "ema": state["ema"].state_dict(),
        "optimizer": state["optimizer"].state_dict(), "step": state["step"],
        "generator": state["generator"].get_state(), "train_config": train_config,
    }, path)  # fmt: skip


def _load_state(path: Path, state: dict[str, Any], train_config: dict[str, Any], device: torch.device) -> None:
    saved = read_torch_file(path, map_location=device, what="diffusion training state")
    if not isinstance(saved, dict) or not isinstance(saved.get("train_config"), dict):
        raise ValueError(f"{path} is not a diffusion training state; remove it or rerun without --resume")
    differing = {k: (saved["train_config"].get(k), v) for k, v in train_config.items()
                 if k not in ("steps", "device", "data_root") and saved["train_config"].get(k) != v}  # fmt: skip
    if differing:
        raise ValueError(f"{path} was written with other settings (saved, now): {differing}; "
                         "rerun with the same settings or without --resume")  # fmt: skip
    state["model"].load_state_dict(saved["model"])
    state["ema"].load_state_dict(saved["ema"])
    state["optimizer"].load_state_dict(saved["optimizer"])
    state["step"] = int(saved["step"])
    state["generator"].set_state(saved["generator"].cpu())


def _train_step(state: dict[str, Any], images: Tensor, schedule: NoiseSchedule, cfg: dict[str, Any]) -> float:
    model, optimizer, device = state["model"], state["optimizer"], next(state["model"].parameters()).device
    x0, t, noise = (v.to(device) for v in _draw_batch(images, cfg["batch_size"], state["generator"]))
    for group in optimizer.param_groups:
        group["lr"] = cfg["lr"] * min(1.0, (state["step"] + 1) / _WARMUP_STEPS)
    loss = diffusion_loss(model, x0, t, noise, schedule)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]  # Tensor.backward is unannotated in torch
    nn.utils.clip_grad_norm_(model.parameters(), _GRAD_CLIP)
    optimizer.step()
    with torch.no_grad():
        for ema_p, p in zip(state["ema"].parameters(), model.parameters()):
            ema_p.lerp_(p, 1.0 - cfg["ema_decay"])
    state["step"] += 1
    return float(loss.item())


def train_diffusion(
    out: str | os.PathLike[str],
    *,
    data_root: str | os.PathLike[str] | None = None,
    steps: int = 20000,
    batch_size: int = 128,
    lr: float = 2e-4,
    ema_decay: float = 0.999,
    model_channels: int = 32,
    seed: int = 0,
    checkpoint_every: int = 500,
    resume: bool = False,
    half: bool = True,
    device: str | torch.device = "cpu",
    progress: ProgressFn | None = None,
    stop_after: int | None = None,
) -> dict[str, object]:
    """Train the Fashion-MNIST DDPM and write the EMA weights to ``out`` (``load_adm`` reads it).

    Args:
        out: Final checkpoint, ``{"model", "config", "schedule", "train_config", "torch_version"}``.
        data_root: Folder of the Fashion-MNIST IDX files (the train split is used).
        steps: Optimizer steps in total (AdamW, ``lr`` after a 200-step linear warm-up, gradient
            norm clipped at 1).
        batch_size: Images per step, drawn with replacement.
        lr: Learning rate.
        ema_decay: Decay of the weights' moving average that is shipped.
        model_channels: Base width of :func:`fmnist_ddpm_config`.
        seed: Seeds the initialisation and every random draw.
        checkpoint_every: Steps between atomic writes of the training state to :func:`resume_path`.
        resume: Continue from :func:`resume_path` (``out`` + ``.train``) if it exists.
        half: Store the shipped weights in float16 (half the size; loaded back as float32).
        device: Where to train (``cpu``, ``cuda``).
        progress: Called after every step with ``(step, steps, loss)``.
        stop_after: Stop (with a checkpoint) once this many steps are done, as an interruption would.

    Returns:
        ``steps_done``, ``final_loss`` (mean over the last 100 steps), ``num_parameters``,
        ``train_config``, ``out`` (``None`` when stopped early).

    Raises:
        ValueError: for arguments out of range, or a resume file written with other settings.
    """
    if steps < 1 or batch_size < 1 or checkpoint_every < 1 or not lr > 0 or not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"need steps, batch_size, checkpoint_every >= 1, lr > 0 and ema_decay in [0, 1); got "
                         f"{steps}, {batch_size}, {checkpoint_every}, {lr}, {ema_decay}")  # fmt: skip
    device = torch.device(device)
    config = fmnist_ddpm_config(model_channels)
    train_config = {"steps": steps, "batch_size": batch_size, "lr": lr, "ema_decay": ema_decay, "seed": seed,
                    "model_channels": model_channels, "warmup_steps": _WARMUP_STEPS, "grad_clip": _GRAD_CLIP,
                    "optimizer": "adamw", "augmentation": "horizontal_flip", "loss": "eps_mse",
                    "device": str(device), "data_root": None if data_root is None else str(data_root)}  # fmt: skip
    images = load_fashion_mnist("train", data_root)[0]
    schedule = NoiseSchedule.linear(NUM_DIFFUSION_STEPS)
    state = _new_state(config, seed=seed, lr=lr, device=device)
    checkpoint = resume_path(out)
    if resume and checkpoint.is_file():
        _load_state(checkpoint, state, train_config, device)
    losses: list[float] = []
    last = min(steps, stop_after) if stop_after is not None else steps
    while state["step"] < last:
        losses = (losses + [_train_step(state, images, schedule, train_config)])[-100:]
        if progress is not None:
            progress(state["step"], steps, losses[-1])
        if state["step"] % checkpoint_every == 0 or state["step"] == last:
            _save_state(checkpoint, state, train_config)
    final_loss = sum(losses) / len(losses) if losses else float("nan")
    written = None
    if state["step"] >= steps:
        ema_state = state["ema"].state_dict()
        weights = {k: (v.half() if half and v.is_floating_point() else v).cpu() for k, v in ema_state.items()}
        written = str(atomic_torch_save({
            "model": weights, "config": asdict(config),
            "schedule": {"kind": "linear", "num_steps": NUM_DIFFUSION_STEPS},
            "train_config": train_config, "final_loss": final_loss, "torch_version": str(torch.__version__),
        }, out))  # fmt: skip
    return {"steps_done": state["step"], "final_loss": final_loss, "out": written, "train_config": train_config,
            "num_parameters": sum(p.numel() for p in state["model"].parameters())}  # fmt: skip
