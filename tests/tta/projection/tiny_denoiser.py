"""A tiny random ``(x_t, t) -> eps`` network standing in for a trained diffusion model in fast tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TinyDenoiser(nn.Module):
    """Two convolutions with a timestep-dependent bias; ``learn_sigma`` adds ``C`` variance channels."""

    def __init__(self, channels: int = 3, *, learn_sigma: bool = False, width: int = 8, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.conv1 = nn.Conv2d(channels, width, 3, padding=1)
            self.conv2 = nn.Conv2d(width, channels * (2 if learn_sigma else 1), 3, padding=1)
            self.time = nn.Linear(1, width)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = self.conv1(x) + self.time(t.float().view(-1, 1) / 1000.0)[:, :, None, None]
        return torch.tanh(self.conv2(torch.relu(h)))
