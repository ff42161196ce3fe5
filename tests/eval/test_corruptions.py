"""Tests of eval.corruptions: registry, contract, tables, errors and statistics (no reference package)."""

from __future__ import annotations

import colorsys
import io
import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from eval.corruptions import (
    CORRUPTIONS,
    DEFAULT_CORRUPTIONS,
    corrupt,
    get_corruption,
    list_corruptions,
)
from eval.corruptions import _jpeg, _validate
from eval.corruptions._filters import filter2d_reflect101
from eval.corruptions._frost import FROST_TEXTURES, frost_texture
from eval.corruptions._resize import _box_axis
from eval.corruptions.blur import DEFOCUS_BLUR_DISK, _disk_kernel
from eval.corruptions.digital import CONTRAST_FACTOR, JPEG_QUALITY, PIXELATE_SCALE, brightness, pixelate, saturate
from eval.corruptions.noise import GAUSSIAN_NOISE_STD, IMPULSE_NOISE_AMOUNT, SHOT_NOISE_RATE
from eval.corruptions.weather import plasma_fractal

ALL = list_corruptions("all")
STOCHASTIC = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "motion_blur", "snow",
              "frost", "fog", "elastic_transform", "spatter"]
DETERMINISTIC = [name for name in ALL if name not in STOCHASTIC]
# Corruptions whose distance from the clean image grows with severity under both tables.
MONOTONE = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "defocus_blur", "zoom_blur",
            "gaussian_blur", "contrast", "brightness", "jpeg_compression"]
# Corruptions that treat every channel alike, so grey equals each channel of grey-as-RGB.
PER_CHANNEL = ["defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur", "snow", "fog", "brightness",
               "contrast", "elastic_transform", "pixelate"]
SEVERITIES = range(1, 6)


def make_image(channels: int = 3, height: int = 32, width: int = 32, batch: int = 2) -> torch.Tensor:
    """Return a smooth synthetic batch with edges: a gradient, a bright square and a dark disk."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    square = ((yy - 0.3).abs() < 0.15) & ((xx - 0.65).abs() < 0.2)
    disk = (yy - 0.7) ** 2 + (xx - 0.3) ** 2 < 0.04
    base = 0.2 + 0.5 * xx * yy + 0.3 * square.float() - 0.15 * disk.float()
    planes = [base, 0.9 - 0.6 * yy + 0.1 * square.float(), 0.5 + 0.3 * torch.sin(6 * xx) * disk.float()]
    image = torch.stack(planes[:channels]).clamp(0, 1)
    return torch.stack([image.flip(-1) if i % 2 else image for i in range(batch)])


def to_numpy_hwc(x: torch.Tensor) -> np.ndarray:
    """Return image 0 of a batch as an ``(H, W)`` or ``(H, W, 3)`` float64 array."""
    image = x[0].double().permute(1, 2, 0).numpy()
    return image[..., 0] if image.shape[-1] == 1 else image


def from_numpy_hwc(image: np.ndarray) -> torch.Tensor:
    """Return an ``(H, W)`` or ``(H, W, 3)`` array as a ``(1, C, H, W)`` float64 batch."""
    tensor = torch.from_numpy(np.asarray(image, dtype=np.float64))
    return tensor[None, None] if tensor.dim() == 2 else tensor.permute(2, 0, 1)[None]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- registry


def test_list_corruptions_common_is_the_imagenet_c_order() -> None:
    common = list_corruptions("common")
    assert common == [
        "gaussian_noise", "shot_noise", "impulse_noise",
        "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
        "snow", "frost", "fog", "brightness",
        "contrast", "elastic_transform", "pixelate", "jpeg_compression",
    ]  # fmt: skip
    categories = [list_corruptions(s) for s in ("noise", "blur", "weather", "digital")]
    assert [name for category in categories for name in category] == common
    assert list_corruptions("holdout") == ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
    assert list_corruptions("all") == common + list_corruptions("holdout")


def test_list_corruptions_all_are_implemented_and_default_is_common() -> None:
    assert list_corruptions("available") == ALL and list(CORRUPTIONS) == ALL and len(ALL) == 19
    assert list(DEFAULT_CORRUPTIONS) == list_corruptions("common")
    assert all(fn.__name__ == name for name, fn in CORRUPTIONS.items())  # type: ignore[attr-defined]


def test_list_corruptions_rejects_unknown_subset() -> None:
    with pytest.raises(ValueError, match="common"):
        list_corruptions("validation")  # type: ignore[arg-type]


def test_corrupt_rejects_unknown_names_listing_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown corruption 'blurry'.*gaussian_noise.*saturate"):
        corrupt(make_image(), "blurry", 1)
    assert get_corruption("pixelate") is pixelate


# ---------------------------------------------------------------- contract


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", ALL)
def test_corruption_keeps_shape_dtype_and_range(name: str, channels: int) -> None:
    x = make_image(channels, 28, 30, batch=3)
    for severity in SEVERITIES:
        y = corrupt(x, name, severity, generator=seeded(0))
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        assert float(y.min()) >= 0 and float(y.max()) <= 1
        if not (name == "saturate" and channels == 1):  # the reference leaves grey unchanged
            assert not torch.equal(y, x), (name, severity)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_corruptions_keep_other_float_dtypes(dtype: torch.dtype) -> None:
    x = make_image(3).to(dtype)
    for name in ALL:
        y = corrupt(x, name, 3, generator=seeded(0))
        assert y.dtype == dtype and y.shape == x.shape, name
        assert float(y.min()) >= 0 and float(y.max()) <= 1, name


@pytest.mark.parametrize("name", ALL)
def test_corruption_same_generator_gives_same_output(name: str) -> None:
    x = make_image(3)
    first = corrupt(x, name, 4, generator=seeded(7))
    assert torch.equal(first, corrupt(x, name, 4, generator=seeded(7)))
    if name in STOCHASTIC:
        assert not torch.equal(first, corrupt(x, name, 4, generator=seeded(8)))


@pytest.mark.parametrize("name", ALL)
def test_corruption_empty_batch_returns_empty(name: str) -> None:
    y = corrupt(torch.zeros(0, 3, 28, 28), name, 2)
    assert y.shape == (0, 3, 28, 28) and y.dtype == torch.float32


@pytest.mark.parametrize("table", ["imagenet", "cifar"])
@pytest.mark.parametrize("name", MONOTONE)
def test_corruption_distance_grows_with_severity(name: str, table: str) -> None:
    x = make_image(3, 30, 30)
    distances = [float((corrupt(x, name, s, generator=seeded(0), table=table) - x).abs().mean()) for s in SEVERITIES]
    assert all(a <= b + 1e-7 for a, b in itertools.pairwise(distances)), distances
    assert distances[-1] > distances[0]


@pytest.mark.parametrize("name", PER_CHANNEL)
def test_corruption_grayscale_equals_each_channel_of_gray_rgb(name: str) -> None:
    gray = make_image(1)
    for severity in SEVERITIES:
        expected = corrupt(gray, name, severity, generator=seeded(severity))
        rgb = corrupt(gray.expand(-1, 3, -1, -1), name, severity, generator=seeded(severity))
        assert torch.allclose(rgb, expected.expand(-1, 3, -1, -1), atol=1e-6), (name, severity)


def test_corruption_is_batched_per_image() -> None:
    x = make_image(3, batch=4)
    for name in DETERMINISTIC:
        whole = corrupt(x, name, 3)
        single = torch.cat([corrupt(x[i : i + 1], name, 3) for i in range(4)])
        assert torch.allclose(whole, single, atol=1e-6), name


def test_corruption_chunks_large_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    x = make_image(3, batch=5)
    whole = {name: corrupt(x, name, 2, generator=seeded(1)) for name in ("zoom_blur", "fog", "glass_blur")}
    monkeypatch.setattr(_validate, "CHUNK_ELEMENTS", 2 * x[0].numel())  # chunks of 2 images
    assert torch.allclose(corrupt(x, "zoom_blur", 2), whole["zoom_blur"], atol=1e-6)
    for name in ("fog", "glass_blur"):  # reproducible, but the random draws are split differently
        chunked = corrupt(x, name, 2, generator=seeded(1))
        assert torch.equal(chunked, corrupt(x, name, 2, generator=seeded(1)))
        assert chunked.shape == whole[name].shape


def test_corruption_chunks_give_the_unchunked_output_and_check_every_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    x = make_image(3, 40, 36, batch=5)
    whole = {name: corrupt(x, name, 2) for name in ("pixelate", "jpeg_compression", "contrast")}
    monkeypatch.setattr(_validate, "CHUNK_ELEMENTS", 2 * x[0].numel())  # chunks of 2, 2 and 1 images
    for name, expected in whole.items():
        chunked = corrupt(x, name, 2)
        assert chunked.is_contiguous() and torch.allclose(chunked, expected, atol=1e-6), name
    x[4, 1, 3, 3] = float("nan")  # in the last chunk
    with pytest.raises(ValueError, match="NaN or Inf"):
        corrupt(x, "pixelate", 2)


# ---------------------------------------------------------------- tables


def test_auto_table_uses_cifar_constants_up_to_64_pixels() -> None:
    for side, table in ((28, "cifar"), (64, "cifar"), (65, "imagenet")):
        x = make_image(3, side, side + 7, batch=1)
        mean = x.mean(dim=(-2, -1), keepdim=True)
        expected = (x - mean) * CONTRAST_FACTOR.get(table, 1) + mean  # type: ignore[arg-type]
        assert torch.allclose(corrupt(x, "contrast", 1), expected, atol=1e-6), side
    x = make_image(3, 28, 28)
    assert torch.equal(corrupt(x, "contrast", 2, table="imagenet"), corrupt(make_image(3, 28, 28), "contrast", 2,
                                                                             table="imagenet"))
    assert not torch.equal(corrupt(x, "contrast", 2, table="imagenet"), corrupt(x, "contrast", 2))
    with pytest.raises(ValueError, match=r"table must be one of \['auto', 'imagenet', 'cifar'\]"):
        corrupt(x, "contrast", 2, table="tiny")  # type: ignore[arg-type]


# ---------------------------------------------------------------- errors


def test_corrupt_rejects_non_float_and_non_tensor_input() -> None:
    with pytest.raises(TypeError, match=r"dtype torch\.uint8"):
        corrupt(torch.zeros(1, 3, 28, 28, dtype=torch.uint8), "contrast", 1)
    with pytest.raises(TypeError, match="ndarray"):
        corrupt(np.zeros((1, 3, 28, 28)), "contrast", 1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("shape", "message"),
    [((3, 28, 28), r"got shape \(3, 28, 28\)"), ((1, 2, 28, 28), "C = 2"), ((1, 3, 4, 28), "H, W >= 8")],
)
def test_corrupt_rejects_bad_shapes(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        corrupt(torch.rand(shape), "gaussian_noise", 1)


def test_corrupt_rejects_non_finite_and_out_of_range_values() -> None:
    x = make_image(1)
    x[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        corrupt(x, "brightness", 1)
    with pytest.raises(ValueError, match=r"values in \[0, 1\], got \[22\.8\d*, 230\.\d*\]"):
        corrupt(make_image(3) * 255, "brightness", 1)
    with pytest.raises(ValueError, match="values in"):
        corrupt(make_image(3) - 0.5, "glass_blur", 1)
    slightly_over = corrupt(make_image(3) + 5e-4, "contrast", 1)  # within the tolerance: accepted
    assert float(slightly_over.max()) <= 1


@pytest.mark.parametrize("name", list_corruptions("all"))
def test_every_corruption_checks_the_values_of_every_image_and_clamps_round_off(name: str) -> None:
    x = make_image(3, 24, 24, batch=3)
    for bad in (float("nan"), float("inf"), 1.5, -0.2):
        broken = x.clone()
        broken[2, x.shape[1] - 1, 5, 7] = bad  # last image, last channel
        with pytest.raises(ValueError, match=r"NaN or Inf|values in \[0, 1\]"):
            corrupt(broken, name, 2, generator=torch.Generator().manual_seed(0))
    nudged = x.clone()
    nudged[1, 0, 0, 0], nudged[2, -1, -1, -1] = 1 + 5e-4, -5e-4  # round-off within the tolerance
    out = corrupt(nudged, name, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, corrupt(nudged.clamp(0, 1), name, 2, generator=torch.Generator().manual_seed(0)))
    assert 0 <= float(out.min()) and float(out.max()) <= 1


def test_corrupt_rejects_bad_severity_and_generator() -> None:
    x = make_image(3)
    for severity in (0, 6, -1):
        with pytest.raises(ValueError, match=r"severity must be in 1\.\.5"):
            corrupt(x, "frost", severity)
    for not_an_int in (2.0, "2", True):
        with pytest.raises(TypeError, match="severity must be an int"):
            corrupt(x, "gaussian_noise", not_an_int)  # type: ignore[arg-type]
    assert torch.equal(corrupt(x, "contrast", np.int64(2)), corrupt(x, "contrast", 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"torch\.Generator"):
        corrupt(x, "fog", 1, generator=np.random.default_rng(0))  # type: ignore[arg-type]


# ---------------------------------------------------------------- statistics and closed forms


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


# ---------------------------------------------------------------- device


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ALL)
def test_corruption_runs_on_the_input_device(name: str) -> None:
    x = make_image(3)
    x_cuda = x.to("cuda")
    y = corrupt(x_cuda, name, 3, generator=torch.Generator(device="cuda").manual_seed(0))
    assert y.device == x_cuda.device and y.shape == x.shape
    if name in DETERMINISTIC:  # jpeg_compression too: the same libjpeg round trip on the CPU
        assert torch.allclose(y.cpu(), corrupt(x, name, 3), atol=1e-5)
    with pytest.raises(ValueError, match="generator is on cpu"):
        corrupt(x_cuda, name, 3, generator=seeded(0))
