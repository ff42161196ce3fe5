"""Noise schedule of a DDPM: betas, cumulative alphas, respacing, and the closed forms DDA's sampler needs.

All tables are computed in float64 (as guided-diffusion does with numpy) and cast to the input's dtype
when gathered. Timestep indices ``t`` index the (possibly respaced) schedule; ``timesteps`` maps them
to the timesteps the denoiser was trained on.

Reference: Ho et al., "Denoising Diffusion Probabilistic Models", NeurIPS 2020 (arXiv:2006.11239);
Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models", ICML 2021 (arXiv:2102.09672)
for respacing and the learned-range variance.
Adapted from: openai/guided-diffusion ``gaussian_diffusion.py`` and ``respace.py`` (MIT), formulas only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = ["NoiseSchedule", "linear_betas", "space_timesteps"]

FixedVariance = Literal["small", "large"]


def linear_betas(num_steps: int = 1000) -> Tensor:
    """Return the linear beta schedule of Ho et al., scaled to ``num_steps`` (float64).

    ``beta_1 = 1e-4 * 1000 / num_steps`` to ``beta_T = 0.02 * 1000 / num_steps`` (guided-diffusion's
    ``get_named_beta_schedule("linear", T)``), so that any ``T`` keeps the 1000-step schedule's shape.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    scale = 1000.0 / num_steps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)


def space_timesteps(num_steps: int, count: int) -> list[int]:
    """Return ``count`` evenly strided timesteps of ``range(num_steps)``, first and last included.

    Guided-diffusion's ``space_timesteps(T, "count")`` for one section: stride ``(T - 1) / (count - 1)``,
    each index rounded to the nearest integer (``space_timesteps(1000, 100)`` = 0, 10, 20, 30, 40, 50, 61, ..., 999).

    Raises:
        ValueError: if ``count`` is not in ``[1, num_steps]``.
    """
    if not 1 <= count <= num_steps:
        raise ValueError(f"cannot take {count} timesteps out of {num_steps}; expected 1 <= count <= {num_steps}")
    stride = 1.0 if count == 1 else (num_steps - 1) / (count - 1)
    return [round(i * stride) for i in range(count)]


@dataclass(frozen=True)
class NoiseSchedule:
    """A DDPM schedule: ``betas`` (float64, ``(T,)``) and ``timesteps``, the model timestep of each index.

    Build one with :meth:`linear` (optionally respaced) or :meth:`from_betas`; everything else is derived.
    """

    betas: Tensor
    timesteps: Tensor

    def __post_init__(self) -> None:
        if self.betas.dim() != 1 or len(self.betas) == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(self.betas.shape)}")
        if not bool(((self.betas > 0) & (self.betas <= 1)).all()):
            raise ValueError("betas must lie in (0, 1]")
        if self.timesteps.shape != self.betas.shape:
            raise ValueError(f"timesteps {tuple(self.timesteps.shape)} must match betas {tuple(self.betas.shape)}")

    @classmethod
    def from_betas(cls, betas: Tensor) -> NoiseSchedule:
        """Return the schedule of ``betas`` with timesteps ``0 .. T-1``."""
        betas = betas.to(torch.float64)
        return cls(betas, torch.arange(len(betas)))

    @classmethod
    def linear(cls, num_steps: int = 1000, respacing: int | Sequence[int] | None = None) -> NoiseSchedule:
        """Return the linear schedule of ``num_steps``, optionally respaced.

        Args:
            num_steps: Length of the training schedule (1000 for the published models).
            respacing: ``None`` keeps all steps; an int ``k`` keeps ``space_timesteps(num_steps, k)``;
                a sequence keeps exactly those timesteps.
        """
        schedule = cls.from_betas(linear_betas(num_steps))
        if respacing is None:
            return schedule
        kept = space_timesteps(num_steps, respacing) if isinstance(respacing, int) else list(respacing)
        return schedule.respaced(kept)

    def respaced(self, kept: Sequence[int]) -> NoiseSchedule:
        """Return the schedule that visits only ``kept`` timesteps, with betas recomputed from alpha-bar.

        ``beta'_i = 1 - abar[k_i] / abar[k_{i-1}]`` (``abar[k_{-1}] = 1``), so that the cumulative
        products at the kept steps are unchanged (guided-diffusion ``SpacedDiffusion``).

        Raises:
            ValueError: if ``kept`` is empty, unsorted, repeated or out of range.
        """
        kept = sorted(set(int(k) for k in kept))
        if not kept or kept[0] < 0 or kept[-1] >= len(self.betas):
            raise ValueError(f"kept timesteps must be within [0, {len(self.betas) - 1}], got {kept[:3]}...")
        abar = self.alphas_cumprod[kept]
        previous = torch.cat([abar.new_ones(1), abar[:-1]])
        return NoiseSchedule(1.0 - abar / previous, self.timesteps[kept])

    def __len__(self) -> int:
        return len(self.betas)

    @property
    def alphas_cumprod(self) -> Tensor:
        """``abar_t = prod_{s <= t} (1 - beta_s)``."""
        return torch.cumprod(1.0 - self.betas, 0)

    @property
    def alphas_cumprod_prev(self) -> Tensor:
        """``abar_{t-1}``, with ``abar_{-1} = 1``."""
        abar = self.alphas_cumprod
        return torch.cat([abar.new_ones(1), abar[:-1]])

    @property
    def posterior_variance(self) -> Tensor:
        """``beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)``, the variance of ``q(x_{t-1} | x_t, x_0)``."""
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_log_variance_clipped(self) -> Tensor:
        """``log beta~_t`` with ``beta~_0`` (which is 0) replaced by ``beta~_1``, as guided-diffusion does."""
        var = self.posterior_variance
        if len(var) == 1:
            return torch.log(self.betas)
        return torch.log(torch.cat([var[1:2], var[1:]]))

    def _gather(self, table: Tensor, t: Tensor, like: Tensor) -> Tensor:
        values = table.to(t.device)[t].to(like.dtype)
        return values.view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Return ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` (``t``: ``(B,)`` indices)."""
        abar = self.alphas_cumprod
        return self._gather(abar.sqrt(), t, x0) * x0 + self._gather((1.0 - abar).sqrt(), t, x0) * noise

    def predict_x0(self, x_t: Tensor, t: Tensor, eps: Tensor, *, clip: bool = True) -> Tensor:
        """Return ``x0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps``, clipped to ``[-1, 1]`` when ``clip``."""
        abar = self.alphas_cumprod
        x0 = self._gather((1.0 / abar).sqrt(), t, x_t) * x_t - self._gather((1.0 / abar - 1.0).sqrt(), t, x_t) * eps
        return x0.clamp(-1.0, 1.0) if clip else x0

    def posterior_mean(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Return the mean of ``q(x_{t-1} | x_t, x0)``: ``c1 x0 + c2 x_t`` (Ho et al., eq. 7)."""
        abar, abar_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        coef1 = self.betas * abar_prev.sqrt() / (1.0 - abar)
        coef2 = (1.0 - abar_prev) * (1.0 - self.betas).sqrt() / (1.0 - abar)
        return self._gather(coef1, t, x_t) * x0 + self._gather(coef2, t, x_t) * x_t

    def model_log_variance(
        self, t: Tensor, like: Tensor, var_values: Tensor | None = None, *, fixed: FixedVariance = "small"
    ) -> Tensor:
        """Return the log-variance of the reverse step ``p(x_{t-1} | x_t)``.

        With ``var_values`` (a learned-sigma model's extra output channels, in ``[-1, 1]``) it is the
        learned range ``frac * log beta_t + (1 - frac) * log beta~_t`` with ``frac = (v + 1) / 2``
        (Nichol & Dhariwal, eq. 15; guided-diffusion ``LEARNED_RANGE``, as the official DDA sampler uses
        with the 256x256 model). Without it, a fixed variance: ``small`` is the clipped posterior variance
        ``beta~_t``, ``large`` is ``beta_t`` with ``beta~_1`` at ``t = 0`` (guided-diffusion ``FIXED_LARGE``).
        """
        if var_values is not None:
            frac = (var_values + 1.0) / 2.0
            max_log = self._gather(torch.log(self.betas), t, like)
            min_log = self._gather(self.posterior_log_variance_clipped, t, like)
            return frac * max_log + (1.0 - frac) * min_log
        if fixed == "small":
            return self._gather(self.posterior_log_variance_clipped, t, like).expand_as(like)
        if fixed == "large":
            var = self.posterior_variance
            large = torch.cat([var[1:2], self.betas[1:]]) if len(var) > 1 else self.betas
            return self._gather(torch.log(large), t, like).expand_as(like)
        raise ValueError(f"unknown fixed variance {fixed!r}; choose 'small' or 'large'")
