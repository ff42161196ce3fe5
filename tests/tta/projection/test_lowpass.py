"""Tests for tta.projection.lowpass: the antialiased cubic resize against hand-computed weights."""

from __future__ import annotations

import torch

from tta.projection.lowpass import cubic_kernel, low_pass, low_pass_matrix, resize_matrix

# Keys' cubic (a = -0.5) at distances 0.25, 0.75, 1.25, 1.75
K025, K075, K125, K175 = 0.8671875, 0.2265625, -0.0703125, -0.0234375


def test_cubic_kernel_values() -> None:
    x = torch.tensor([0.0, 0.25, 0.75, 1.0, 1.25, 1.75, 2.0, 2.5], dtype=torch.float64)
    expected = torch.tensor([1.0, K025, K075, 0.0, K125, K175, 0.0, 0.0], dtype=torch.float64)
    assert torch.allclose(cubic_kernel(x), expected)


def test_upsample_by_two_weights_by_hand_with_zero_padding() -> None:
    # out pixel 0 sits at input coordinate -0.25: taps -2..1 weigh K175, K075, K025, K125 (sum 1);
    # taps -2 and -1 read zero padding, so the row keeps only K025 and K125 (border attenuated).
    expected = torch.tensor([[K025, K125], [K025, K075], [K075, K025], [K125, K025]], dtype=torch.float64)
    assert torch.allclose(resize_matrix(2, 4, 2.0), expected)


def test_antialiased_downsample_by_two_by_hand() -> None:
    # out pixel 0 sits at 0.5; the kernel is stretched to 0.5 * cubic(0.5 * d) over 8 taps
    row = 0.5 * torch.tensor([K025, K025, K075, K125], dtype=torch.float64)
    expected = torch.stack([row, row.flip(0)])
    assert torch.allclose(resize_matrix(4, 2, 0.5), expected)


def test_low_pass_is_the_separable_matrix_product_and_differentiable() -> None:
    x = torch.randn(2, 3, 28, 20, dtype=torch.float64, requires_grad=True)
    out = low_pass(x, 4)
    rows, cols = low_pass_matrix(28, 4), low_pass_matrix(20, 4)
    assert torch.allclose(out, rows @ x @ cols.T)
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert low_pass(x, 1) is x
    assert low_pass(x.float(), 4).dtype == torch.float32


def test_low_pass_keeps_smooth_content_and_removes_fine_detail() -> None:
    ramp = torch.linspace(-1, 1, 28).view(1, 1, 1, 28).expand(1, 1, 28, 28)
    interior = (slice(None), slice(None), slice(6, -6), slice(6, -6))
    assert (low_pass(ramp, 4) - ramp)[interior].abs().max() < 0.03
    checker = (torch.arange(28).view(-1, 1) + torch.arange(28)).remainder(2).float().view(1, 1, 28, 28) * 2 - 1
    assert low_pass(checker, 4)[interior].abs().max() < 0.05
