"""Noise corruptions of ImageNet-C: gaussian_noise, shot_noise, impulse_noise.

Each follows ``make_imagenet_c.py`` of hendrycks/robustness (``ImageNet-C/create_c``), packaged
unchanged as ``imagecorruptions/corruptions.py`` by bethgelab, with the same severity constants.

Deviations from the reference:
    - Randomness comes from ``torch`` with an explicit ``generator`` instead of numpy's global
      state, so the noise is not bitwise equal to the reference's, only equal in distribution.
    - Inputs and outputs stay float; the reference rounds to uint8 when saving.
"""

from __future__ import annotations

import torch
from torch import Tensor

from eval.corruptions._validate import validated

__all__ = [
    "GAUSSIAN_NOISE_STD",
    "IMPULSE_NOISE_AMOUNT",
    "SHOT_NOISE_RATE",
    "gaussian_noise",
    "impulse_noise",
    "shot_noise",
]

# make_imagenet_c.py, gaussian_noise: standard deviation of the additive noise.
GAUSSIAN_NOISE_STD = (0.08, 0.12, 0.18, 0.26, 0.38)
# make_imagenet_c.py, shot_noise: photons per unit intensity (Poisson rate multiplier).
SHOT_NOISE_RATE = (60, 25, 12, 5, 3)
# make_imagenet_c.py, impulse_noise: skimage random_noise(mode="s&p") amount.
IMPULSE_NOISE_AMOUNT = (0.03, 0.06, 0.09, 0.17, 0.27)


@validated
def gaussian_noise(x: Tensor, severity: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Add zero-mean Gaussian noise with standard deviation ``GAUSSIAN_NOISE_STD[severity - 1]``.

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Source of randomness, on the device of ``x``.

    Returns:
        ``clip(x + N(0, c^2), 0, 1)``, same shape, dtype and device as ``x``.

    Example:
        >>> x = torch.full((2, 1, 28, 28), 0.5)
        >>> gaussian_noise(x, 1, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([2, 1, 28, 28])
    """
    std = GAUSSIAN_NOISE_STD[severity - 1]
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + std * noise


@validated
def shot_noise(x: Tensor, severity: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Replace each value by ``Poisson(x * c) / c`` with ``c = SHOT_NOISE_RATE[severity - 1]``.

    The noise is signal-dependent: its mean is ``x`` and its variance ``x / c``.

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Source of randomness, on the device of ``x``.

    Returns:
        The noisy images clipped to [0, 1], same shape, dtype and device as ``x``.
    """
    rate = SHOT_NOISE_RATE[severity - 1]
    return torch.poisson(x * rate, generator=generator) / rate


@validated
def impulse_noise(x: Tensor, severity: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Set a random fraction of values to 0 or 1 (salt and pepper).

    As skimage's ``random_noise(mode="s&p", amount=a)`` used by the reference: every element
    (each channel of each pixel independently) is replaced with probability
    ``a = IMPULSE_NOISE_AMOUNT[severity - 1]``, by 1 (salt) or 0 (pepper) with equal odds.

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Source of randomness, on the device of ``x``.

    Returns:
        The noisy images, same shape, dtype and device as ``x``.
    """
    amount = IMPULSE_NOISE_AMOUNT[severity - 1]
    flipped = torch.rand(x.shape, generator=generator, device=x.device) < amount
    salted = torch.rand(x.shape, generator=generator, device=x.device) < 0.5
    return torch.where(flipped, salted.to(x.dtype), x)
