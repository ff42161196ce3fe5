"""Noise corruptions of ImageNet-C: gaussian_noise, shot_noise, impulse_noise, speckle_noise.

Each follows ``make_imagenet_c.py`` of hendrycks/robustness (``ImageNet-C/create_c``), packaged
unchanged as ``imagecorruptions/corruptions.py`` by bethgelab, with the same severity constants;
images of at most 64 pixels use the CIFAR-10-C constants of ``make_cifar_c.py`` (see
:mod:`eval.corruptions._tables`).

Deviations from the reference:
    - Randomness comes from an explicit ``torch.Generator`` instead of numpy's global state, so
      the noise is not bitwise equal to the reference's, only equal in distribution (shot_noise
      on the CPU samples with numpy's Poisson sampler seeded from that generator, for speed).
    - Inputs and outputs stay float; the reference rounds to uint8 when saving.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from eval.corruptions._tables import ResolvedTable, SeverityTable
from eval.corruptions._validate import validated

__all__ = [
    "GAUSSIAN_NOISE_STD",
    "IMPULSE_NOISE_AMOUNT",
    "SHOT_NOISE_RATE",
    "SPECKLE_NOISE_STD",
    "gaussian_noise",
    "impulse_noise",
    "shot_noise",
    "speckle_noise",
]

# gaussian_noise in make_imagenet_c.py / make_cifar_c.py: standard deviation of the additive noise.
GAUSSIAN_NOISE_STD = SeverityTable(imagenet=(0.08, 0.12, 0.18, 0.26, 0.38), cifar=(0.04, 0.06, 0.08, 0.09, 0.10))
# shot_noise in make_imagenet_c.py / make_cifar_c.py: photons per unit intensity (Poisson rate).
SHOT_NOISE_RATE = SeverityTable(imagenet=(60, 25, 12, 5, 3), cifar=(500, 250, 100, 75, 50))
# impulse_noise in make_imagenet_c.py / make_cifar_c.py: skimage random_noise(mode="s&p") amount.
IMPULSE_NOISE_AMOUNT = SeverityTable(imagenet=(0.03, 0.06, 0.09, 0.17, 0.27), cifar=(0.01, 0.02, 0.03, 0.05, 0.07))
# speckle_noise in make_imagenet_c.py / make_cifar_c.py: std of the multiplicative noise.
SPECKLE_NOISE_STD = SeverityTable(imagenet=(0.15, 0.2, 0.35, 0.45, 0.6), cifar=(0.06, 0.1, 0.12, 0.16, 0.2))


@validated
def gaussian_noise(x: Tensor, severity: int, *, generator: torch.Generator | None, table: ResolvedTable) -> Tensor:
    """Add zero-mean Gaussian noise with the table's standard deviation ``c``.

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Source of randomness, on the device of ``x``.
        table: ``"auto"`` (CIFAR-10-C constants up to 64 px, else ImageNet-C), ``"imagenet"``
            or ``"cifar"``.

    Returns:
        ``clip(x + N(0, c^2), 0, 1)``, same shape, dtype and device as ``x``.

    Example:
        >>> x = torch.full((2, 1, 28, 28), 0.5)
        >>> gaussian_noise(x, 1, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([2, 1, 28, 28])
    """
    std = GAUSSIAN_NOISE_STD.get(table, severity)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + std * noise


@validated
def shot_noise(x: Tensor, severity: int, *, generator: torch.Generator | None, table: ResolvedTable) -> Tensor:
    """Replace each value by ``Poisson(x * c) / c`` with the table's photon rate ``c``.

    The noise is signal-dependent: its mean is ``x`` and its variance ``x / c``.

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Source of randomness, on the device of ``x``.

    Returns:
        The noisy images clipped to [0, 1], same shape, dtype and device as ``x``.
    """
    rate = SHOT_NOISE_RATE.get(table, severity)
    return _poisson(x * rate, generator) / rate


def _poisson(rate: Tensor, generator: torch.Generator | None) -> Tensor:
    """Draw ``Poisson(rate)`` counts; on the CPU with numpy's sampler, seeded from ``generator``.

    ``torch.poisson`` draws one value at a time on the CPU and is 2-3 times slower than numpy's
    vectorised sampler, so CPU tensors take a 63-bit seed from ``generator`` and sample with
    ``numpy.random.default_rng(seed).poisson``: deterministic under ``generator`` all the same.
    Other devices use ``torch.poisson``.
    """
    if rate.device.type != "cpu":
        return torch.poisson(rate, generator=generator)
    seed = int(torch.randint(0, 2**63 - 1, (), generator=generator))
    counts = np.random.default_rng(seed).poisson(rate.detach().numpy().astype(np.float64, copy=False))
    return torch.from_numpy(counts).to(rate.dtype)


@validated
def impulse_noise(x: Tensor, severity: int, *, generator: torch.Generator | None, table: ResolvedTable) -> Tensor:
    """Set a random fraction of values to 0 or 1 (salt and pepper).

    As skimage's ``random_noise(mode="s&p", amount=a)`` used by the reference: every element
    (each channel of each pixel independently) is replaced with probability
    ``a`` from ``IMPULSE_NOISE_AMOUNT``, by 1 (salt) or 0 (pepper) with equal odds.

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Source of randomness, on the device of ``x``.

    Returns:
        The noisy images, same shape, dtype and device as ``x``.
    """
    amount = IMPULSE_NOISE_AMOUNT.get(table, severity)
    # One uniform per value: below amount/2 salt, between amount/2 and amount pepper.
    uniform = torch.rand(x.shape, generator=generator, device=x.device)
    return torch.where(uniform < amount, (uniform < amount / 2).to(x.dtype), x)


@validated
def speckle_noise(x: Tensor, severity: int, *, generator: torch.Generator | None, table: ResolvedTable) -> Tensor:
    """Add multiplicative Gaussian noise: ``x + x * N(0, c^2)`` with ``c`` from ``SPECKLE_NOISE_STD``.

    A held-out corruption: the noise grows with the signal, unlike gaussian_noise.

    Args:
        x: Images in [0, 1], shape ``(B, C, H, W)`` with ``C`` 1 or 3.
        severity: ImageNet-C level, 1..5.
        generator: Source of randomness, on the device of ``x``.
        table: ``"auto"``, ``"imagenet"`` or ``"cifar"`` (see :mod:`eval.corruptions._tables`).

    Returns:
        The noisy images clipped to [0, 1], same shape, dtype and device as ``x``.
    """
    std = SPECKLE_NOISE_STD.get(table, severity)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + x * (std * noise)

