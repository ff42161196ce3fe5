"""Tests of each corruption's statistics and closed forms: table constants, kernels and PIL/numpy equivalents."""

from __future__ import annotations

import colorsys
import io
import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from eval.corruptions import _jpeg, corrupt
from eval.corruptions._filters import filter2d_reflect101
from eval.corruptions._frost import FROST_TEXTURES, frost_texture
from eval.corruptions._resize import _box_axis
from eval.corruptions.blur import DEFOCUS_BLUR_DISK, _disk_kernel
from eval.corruptions.digital import JPEG_QUALITY, PIXELATE_SCALE, brightness, pixelate, saturate
from eval.corruptions.noise import GAUSSIAN_NOISE_STD, IMPULSE_NOISE_AMOUNT, SHOT_NOISE_RATE
from eval.corruptions.weather import plasma_fractal
from tests.eval.test_corruptions import SEVERITIES, from_numpy_hwc, make_image, seeded, to_numpy_hwc


def test_gaussian_noise_has_the_table_standard_deviation() -> None:
    x = torch.full((8, 3, 32, 32), 0.5)
    for table in ("imagenet", "cifar"):
        for severity in (1, 2):  # 0.5 +- 4 std stays inside [0, 1], so clipping is negligible
            noise = corrupt(x, "gaussian_noise", severity, generator=seeded(severity), table=table) - x
            assert abs(float(noise.mean())) < 0.003
            assert float(noise.std()) == pytest.approx(GAUSSIAN_NOISE_STD.get(table, severity), rel=0.02)


def test_shot_noise_is_poisson_with_mean_x() -> None:
    x = torch.full((8, 3, 32, 32), 0.3)
    for severity in (1, 2, 3):
        rate = SHOT_NOISE_RATE.imagenet[severity - 1]
        y = corrupt(x, "shot_noise", severity, generator=seeded(severity), table="imagenet")
        assert float(y.mean()) == pytest.approx(0.3, abs=0.004)
        assert float(y.var()) == pytest.approx(0.3 / rate, rel=0.05)
        assert torch.allclose(y * rate, (y * rate).round(), atol=1e-4)


def test_impulse_noise_flips_the_table_fraction_to_salt_or_pepper() -> None:
    x = torch.full((8, 3, 32, 32), 0.5)
    for severity in SEVERITIES:
        y = corrupt(x, "impulse_noise", severity, generator=seeded(severity), table="imagenet")
        flipped = y != 0.5
        assert float(flipped.float().mean()) == pytest.approx(IMPULSE_NOISE_AMOUNT.imagenet[severity - 1], abs=0.006)
        assert set(y[flipped].unique().tolist()) <= {0.0, 1.0}
        assert float((y[flipped] == 1).float().mean()) == pytest.approx(0.5, abs=0.05)


def test_speckle_noise_scales_with_the_signal() -> None:
    x = torch.cat([torch.full((4, 3, 32, 32), 0.2), torch.full((4, 3, 32, 32), 0.4)])
    noise = corrupt(x, "speckle_noise", 1, generator=seeded(0), table="imagenet") - x
    assert float(noise[4:].std() / noise[:4].std()) == pytest.approx(2.0, rel=0.05)
    assert float(noise[:4].std()) == pytest.approx(0.2 * 0.15, rel=0.05)


def test_defocus_blur_kernel_is_a_normalised_symmetric_disk() -> None:
    for (radius, alias_blur), size in zip(DEFOCUS_BLUR_DISK.imagenet, (17, 17, 17, 17, 21), strict=True):
        kernel = _disk_kernel(radius, alias_blur)
        assert kernel.shape == (size, size)
        # Radii 8 and 10 touch the grid edge, where the reflect-101 anti-aliasing adds ~1% mass.
        assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-12 if radius < 8 else 0.015)
        assert torch.allclose(kernel, kernel.flip(0)) and torch.allclose(kernel, kernel.T)
    radius3 = _disk_kernel(3, 0.1)  # sigma 0.1 leaves the aliased disk untouched
    assert int((radius3 > 1e-9).sum()) == 29 and float(radius3.max()) == pytest.approx(1 / 29)


def test_filter2d_matches_numpy_reflect101_correlation() -> None:
    rng = np.random.default_rng(0)
    image, kernel = rng.random((9, 11)), rng.random((21, 21))
    padded = np.pad(image, 10, mode="reflect")  # numpy's "reflect" is OpenCV's reflect-101
    expected = np.array([[np.sum(padded[i : i + 21, j : j + 21] * kernel) for j in range(11)] for i in range(9)])
    ours = filter2d_reflect101(torch.from_numpy(image)[None, None], torch.from_numpy(kernel))[0, 0]
    assert np.allclose(ours.numpy(), expected, atol=1e-10)


@pytest.mark.parametrize("name", ["brightness", "saturate"])
def test_hsv_corruptions_match_an_explicit_hsv_round_trip(name: str) -> None:
    x = make_image(3, 16, 16, batch=1)
    x[0, :, 0, :4] = 0.0  # black pixels
    x[0, :, 1, :4] = 0.6  # grey pixels: hue 0
    pixels = to_numpy_hwc(x).reshape(-1, 3)
    fn = brightness if name == "brightness" else saturate
    for severity in SEVERITIES:
        ours = to_numpy_hwc(fn(x.double(), severity, table="imagenet")).reshape(-1, 3)
        hsv = [list(colorsys.rgb_to_hsv(*p)) for p in pixels]
        for h_s_v in hsv:
            if name == "brightness":
                h_s_v[2] = min(h_s_v[2] + 0.1 * severity, 1.0)
            else:
                gain, offset = ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))[severity - 1]
                h_s_v[1] = min(max(h_s_v[1] * gain + offset, 0.0), 1.0)
        expected = np.array([colorsys.hsv_to_rgb(*h_s_v) for h_s_v in hsv])
        assert np.allclose(ours, expected, atol=1e-12), severity


@pytest.mark.parametrize("channels", [1, 3])
def test_pixelate_matches_pil_box_resize(channels: int) -> None:
    x = make_image(channels, 28, 30, batch=1)
    image_u8 = np.round(to_numpy_hwc(x) * 255).astype(np.uint8)
    x_u8 = from_numpy_hwc(image_u8 / 255.0)
    for table in ("imagenet", "cifar"):
        for severity, scale in zip(SEVERITIES, getattr(PIXELATE_SCALE, table), strict=True):
            small = Image.fromarray(image_u8).resize((int(30 * scale), int(28 * scale)), Image.Resampling.BOX)
            expected = np.asarray(small.resize((30, 28), Image.Resampling.BOX), dtype=np.float64)
            ours = to_numpy_hwc(pixelate(x_u8, severity, table=table)) * 255
            assert np.abs(ours - expected).max() <= 1.0 + 1e-9  # PIL rounds to uint8 after each pass


@pytest.mark.parametrize(("height", "width"), [(13, 17), (30, 41), (224, 224)])
def test_pixelate_equals_pil_box_resize_of_float_images(height: int, width: int) -> None:
    # Pillow resizes float ("F") images with the same BOX windows and no uint8 rounding, so the
    # two agree to float precision; 13 -> 6 skips a pixel and 30 -> 28 (CIFAR severity 1) has
    # two windows sharing one, which takes the window-sum path for the rows.
    assert not _box_axis(30, 28, torch.device("cpu")).disjoint
    x = torch.rand(1, 1, height, width, generator=seeded(0), dtype=torch.float64)
    image = Image.fromarray(x[0, 0].numpy().astype(np.float32))
    for table in ("imagenet", "cifar"):
        for severity, scale in zip(SEVERITIES, getattr(PIXELATE_SCALE, table), strict=True):
            small = image.resize((int(width * scale), int(height * scale)), Image.Resampling.BOX)
            expected = np.asarray(small.resize((width, height), Image.Resampling.BOX), dtype=np.float64)
            ours = pixelate(x, severity, table=table)[0, 0].numpy()
            assert np.abs(ours - expected).max() < 1e-6, (table, severity)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("height", "width"), [(32, 32), (37, 29)])
def test_jpeg_compression_matches_pil_save_and_load(channels: int, height: int, width: int) -> None:
    batch = make_image(channels, height, width, batch=2)
    batch_u8 = np.round(batch.double().permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    x_u8 = torch.from_numpy(batch_u8 / 255.0).permute(0, 3, 1, 2)
    for severity, quality in zip(SEVERITIES, JPEG_QUALITY.cifar, strict=True):
        ours = corrupt(x_u8, "jpeg_compression", severity).permute(0, 2, 3, 1).numpy() * 255
        for image_u8, image_ours in zip(batch_u8, ours, strict=True):
            buffer = io.BytesIO()
            Image.fromarray(image_u8[..., 0] if channels == 1 else image_u8).save(buffer, "JPEG", quality=quality)
            expected = np.asarray(Image.open(buffer), dtype=np.float64).reshape(image_u8.shape)
            assert np.abs(image_ours - expected).max() < 1e-6, severity


def test_jpeg_compression_over_threads_equals_one_thread_and_raises_the_first_bad_image() -> None:
    x = make_image(3, 40, 36, batch=7)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = corrupt(x, "jpeg_compression", 3)
        torch.set_num_threads(3)  # slices of 2, 2 and 3 images
        assert torch.equal(corrupt(x, "jpeg_compression", 3), single)
        x[6, 0, 1, 1], x[3, 2, 2, 2] = float("nan"), 1.5  # the third and the second slice
        with pytest.raises(ValueError, match=r"got \[\d.*, 1\.5\]"):
            corrupt(x, "jpeg_compression", 3)
    finally:
        torch.set_num_threads(threads)


def test_jpeg_compression_falls_back_to_pil_where_torchvision_has_no_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    x = make_image(3, 37, 29, batch=3)
    with_torchvision = corrupt(x, "jpeg_compression", 4)
    monkeypatch.setattr(_jpeg, "_torchvision_jpeg", lambda: None)
    assert torch.equal(corrupt(x, "jpeg_compression", 4), with_torchvision)


def test_plasma_fractal_spans_zero_to_one_and_smooths_with_decay() -> None:
    rough = plasma_fractal(8, 64, 1.4, generator=seeded(0))
    smooth = plasma_fractal(8, 64, 3.0, generator=seeded(0))
    assert rough.shape == (8, 64, 64)
    assert torch.equal(rough.amin(dim=(1, 2)), torch.zeros(8)) and torch.equal(rough.amax(dim=(1, 2)), torch.ones(8))
    def roughness(t: torch.Tensor) -> float:
        return float((t[:, :, 1:] - t[:, :, :-1]).abs().mean())
    assert roughness(smooth) < roughness(rough)
    with pytest.raises(ValueError, match="power of two"):
        plasma_fractal(1, 48, 2.0)


def test_frost_textures_are_deterministic_with_the_reference_statistics() -> None:
    texture = frost_texture(1, 0.2)  # the CIFAR-10-C rendering; the full size is 5x larger
    height, width, mean, std = FROST_TEXTURES[1]
    assert texture.shape == (3, round(height * 0.2), round(width * 0.2)) and texture.dtype == torch.float32
    assert torch.allclose(texture.mean(dim=(1, 2)), torch.tensor(mean), atol=0.01)
    assert torch.allclose(texture.std(dim=(1, 2)), torch.tensor(std), atol=0.01)
    frost_texture.cache_clear()
    assert torch.equal(frost_texture(1, 0.2), texture)
    assert not torch.equal(frost_texture(2, 0.2), texture)  # same statistics, another pattern


def test_glass_blur_copies_from_up_left_neighbours_at_max_delta_one() -> None:
    # CIFAR severity 1: sigma 0.05 (no blur), max_delta 1: offsets in {-1, 0}, so no chains.
    values = (torch.randperm(255, generator=seeded(0)).double() + 0.5) / 255  # distinct after truncation
    x = values.view(1, 1, 15, 17)
    y = corrupt(x, "glass_blur", 1, generator=seeded(3), table="cifar")[0, 0]
    truncated = torch.floor(x[0, 0] * 255) / 255
    for row, col in itertools.product(range(15), range(17)):
        if 2 <= row <= 14 and 2 <= col <= 16:
            window = truncated[row - 1 : row + 1, col - 1 : col + 1]
            assert bool((window == y[row, col]).any()), (row, col)
        else:  # row/column 0 and 1 are never visited
            assert y[row, col] == truncated[row, col]
    assert not torch.equal(y, truncated)
