"""Tests of eval.corruptions: contract, registry, errors, statistics and reference comparisons."""

from __future__ import annotations

import colorsys
import importlib
import importlib.util
import io
import itertools
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from eval.corruptions import (
    CORRUPTIONS,
    DEFAULT_CORRUPTIONS,
    corrupt,
    defocus_blur,
    get_corruption,
    list_corruptions,
)
from eval.corruptions.blur import DEFOCUS_BLUR_DISK, _disk_kernel, _filter2d_reflect101
from eval.corruptions.digital import JPEG_QUALITY, PIXELATE_SCALE, brightness, jpeg_compression, pixelate
from eval.corruptions.noise import GAUSSIAN_NOISE_STD, IMPULSE_NOISE_AMOUNT, SHOT_NOISE_RATE

AVAILABLE = list_corruptions("available")
NOISE = ["gaussian_noise", "shot_noise", "impulse_noise"]
DETERMINISTIC = [name for name in AVAILABLE if name not in NOISE]
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


def test_list_corruptions_available_matches_registry_and_default() -> None:
    assert list(DEFAULT_CORRUPTIONS) == AVAILABLE
    assert list(CORRUPTIONS) == AVAILABLE
    assert [name for name in list_corruptions("all") if name in CORRUPTIONS] == AVAILABLE
    assert all(fn.__name__ == name for name, fn in CORRUPTIONS.items())  # type: ignore[attr-defined]
    assert len(AVAILABLE) == 8


def test_list_corruptions_rejects_unknown_subset() -> None:
    with pytest.raises(ValueError, match="common"):
        list_corruptions("validation")  # type: ignore[arg-type]


def test_corrupt_rejects_unknown_and_unimplemented_names() -> None:
    x = make_image()
    with pytest.raises(ValueError, match=r"unknown corruption 'blurry'.*gaussian_noise"):
        corrupt(x, "blurry", 1)
    with pytest.raises(ValueError, match=r"'fog' is not implemented yet.*jpeg_compression"):
        corrupt(x, "fog", 1)
    assert get_corruption("pixelate") is pixelate


# ---------------------------------------------------------------- contract


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", AVAILABLE)
def test_corruption_keeps_shape_dtype_and_range(name: str, channels: int) -> None:
    x = make_image(channels, 28, 30, batch=3)
    for severity in SEVERITIES:
        y = corrupt(x, name, severity, generator=seeded(0))
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        assert float(y.min()) >= 0 and float(y.max()) <= 1
        assert not torch.equal(y, x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_corruptions_keep_other_float_dtypes(dtype: torch.dtype) -> None:
    x = make_image(3).to(dtype)
    for name in AVAILABLE:
        y = corrupt(x, name, 3, generator=seeded(0))
        assert y.dtype == dtype and y.shape == x.shape
        assert float(y.min()) >= 0 and float(y.max()) <= 1


@pytest.mark.parametrize("name", AVAILABLE)
def test_corruption_same_generator_gives_same_output(name: str) -> None:
    x = make_image(3)
    first = corrupt(x, name, 4, generator=seeded(7))
    assert torch.equal(first, corrupt(x, name, 4, generator=seeded(7)))
    if name in NOISE:
        assert not torch.equal(first, corrupt(x, name, 4, generator=seeded(8)))


@pytest.mark.parametrize("name", AVAILABLE)
def test_corruption_empty_batch_returns_empty(name: str) -> None:
    x = torch.zeros(0, 3, 28, 28)
    y = corrupt(x, name, 2)
    assert y.shape == (0, 3, 28, 28) and y.dtype == x.dtype


@pytest.mark.parametrize("name", AVAILABLE)
def test_corruption_distance_grows_with_severity(name: str) -> None:
    # 30x30: at 28 or 32 some pixelate levels shrink by an integer factor (28 -> 14, 32 -> 16),
    # which the box filter undoes more faithfully than the next, milder, non-integer level.
    x = make_image(3, 30, 30)
    distances = [float((corrupt(x, name, s, generator=seeded(0)) - x).abs().mean()) for s in SEVERITIES]
    assert all(a <= b + 1e-7 for a, b in itertools.pairwise(distances)), distances
    assert distances[-1] > distances[0]


@pytest.mark.parametrize("name", ["defocus_blur", "brightness", "contrast", "pixelate"])
def test_corruption_grayscale_equals_each_channel_of_gray_rgb(name: str) -> None:
    gray = make_image(1)
    for severity in SEVERITIES:
        expected = corrupt(gray, name, severity)
        assert torch.allclose(corrupt(gray.expand(-1, 3, -1, -1), name, severity), expected.expand(-1, 3, -1, -1))


def test_corruption_is_batched_per_image() -> None:
    x = make_image(3, batch=4)
    for name in DETERMINISTIC:
        whole = corrupt(x, name, 3)
        single = torch.cat([corrupt(x[i : i + 1], name, 3) for i in range(4)])
        assert torch.allclose(whole, single, atol=1e-6), name


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
        corrupt(make_image(3) - 0.5, "brightness", 1)
    slightly_over = corrupt(make_image(3) + 5e-4, "contrast", 1)  # within the tolerance: accepted
    assert float(slightly_over.max()) <= 1


def test_corrupt_rejects_bad_severity_and_generator() -> None:
    x = make_image(3)
    for severity in (0, 6, -1):
        with pytest.raises(ValueError, match=r"severity must be in 1\.\.5"):
            corrupt(x, "gaussian_noise", severity)
    for not_an_int in (2.0, "2", True):
        with pytest.raises(TypeError, match="severity must be an int"):
            corrupt(x, "gaussian_noise", not_an_int)  # type: ignore[arg-type]
    assert torch.equal(corrupt(x, "contrast", np.int64(2)), corrupt(x, "contrast", 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"torch\.Generator"):
        corrupt(x, "gaussian_noise", 1, generator=np.random.default_rng(0))  # type: ignore[arg-type]


# ---------------------------------------------------------------- noise statistics


def test_gaussian_noise_has_the_table_standard_deviation() -> None:
    x = torch.full((8, 3, 32, 32), 0.5)
    for severity in (1, 2):  # 0.5 +- 4 std stays inside [0, 1], so clipping is negligible
        noise = corrupt(x, "gaussian_noise", severity, generator=seeded(severity)) - x
        assert abs(float(noise.mean())) < 0.003
        assert float(noise.std()) == pytest.approx(GAUSSIAN_NOISE_STD[severity - 1], rel=0.02)


def test_shot_noise_is_poisson_with_mean_x() -> None:
    x = torch.full((8, 3, 32, 32), 0.3)
    for severity in (1, 2, 3):
        rate = SHOT_NOISE_RATE[severity - 1]
        y = corrupt(x, "shot_noise", severity, generator=seeded(severity))
        assert float(y.mean()) == pytest.approx(0.3, abs=0.004)
        assert float(y.var()) == pytest.approx(0.3 / rate, rel=0.05)
        assert torch.allclose(y * rate, (y * rate).round(), atol=1e-4)


def test_impulse_noise_flips_the_table_fraction_to_salt_or_pepper() -> None:
    x = torch.full((8, 3, 32, 32), 0.5)
    for severity in SEVERITIES:
        y = corrupt(x, "impulse_noise", severity, generator=seeded(severity))
        flipped = y != 0.5
        assert float(flipped.float().mean()) == pytest.approx(IMPULSE_NOISE_AMOUNT[severity - 1], abs=0.006)
        assert set(y[flipped].unique().tolist()) <= {0.0, 1.0}
        assert float((y[flipped] == 1).float().mean()) == pytest.approx(0.5, abs=0.05)
    per_channel = corrupt(x, "impulse_noise", 5, generator=seeded(0)) != 0.5
    assert not torch.equal(per_channel[:, 0], per_channel[:, 1])


# ---------------------------------------------------------------- reference comparisons (numpy / PIL)


def test_defocus_blur_kernel_is_a_normalised_symmetric_disk() -> None:
    for (radius, alias_blur), size in zip(DEFOCUS_BLUR_DISK, (17, 17, 17, 17, 21), strict=True):
        kernel = _disk_kernel(radius, alias_blur)
        assert kernel.shape == (size, size)
        # Radii 8 and 10 touch the grid edge, where the reflect-101 anti-aliasing adds ~1% mass.
        assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-12 if radius < 8 else 0.015)
        assert torch.allclose(kernel, kernel.flip(0)) and torch.allclose(kernel, kernel.T)
    radius3 = _disk_kernel(3, 0.1)  # sigma 0.1 leaves the aliased disk untouched
    assert int((radius3 > 1e-9).sum()) == 29 and float(radius3.max()) == pytest.approx(1 / 29)


def test_defocus_blur_filter_matches_numpy_reflect101_correlation() -> None:
    rng = np.random.default_rng(0)
    image, kernel = rng.random((9, 11)), rng.random((21, 21))
    padded = np.pad(image, 10, mode="reflect")  # numpy's "reflect" is OpenCV's reflect-101
    expected = np.array([[np.sum(padded[i : i + 21, j : j + 21] * kernel) for j in range(11)] for i in range(9)])
    ours = _filter2d_reflect101(torch.from_numpy(image)[None, None], torch.from_numpy(kernel))[0, 0]
    assert np.allclose(ours.numpy(), expected, atol=1e-10)


def test_brightness_matches_an_explicit_hsv_round_trip() -> None:
    x = make_image(3, 16, 16, batch=1)
    x[0, :, 0, :4] = 0.0  # black pixels turn gray
    pixels = to_numpy_hwc(x).reshape(-1, 3)
    for severity, shift in zip(SEVERITIES, (0.1, 0.2, 0.3, 0.4, 0.5), strict=True):
        hsv = [colorsys.rgb_to_hsv(*p) for p in pixels]
        expected = np.array([colorsys.hsv_to_rgb(h, s, min(v + shift, 1.0)) for h, s, v in hsv])
        ours = to_numpy_hwc(brightness(x.double(), severity)).reshape(-1, 3)
        assert np.allclose(ours, expected, atol=1e-12)


@pytest.mark.parametrize("channels", [1, 3])
def test_pixelate_matches_pil_box_resize(channels: int) -> None:
    x = make_image(channels, 28, 30, batch=1)
    image_u8 = np.round(to_numpy_hwc(x) * 255).astype(np.uint8)
    x_u8 = from_numpy_hwc(image_u8 / 255.0)
    for severity, scale in zip(SEVERITIES, PIXELATE_SCALE, strict=True):
        small = Image.fromarray(image_u8).resize((int(30 * scale), int(28 * scale)), Image.Resampling.BOX)
        expected = np.asarray(small.resize((30, 28), Image.Resampling.BOX), dtype=np.float64)
        ours = to_numpy_hwc(pixelate(x_u8, severity)) * 255
        assert np.abs(ours - expected).max() <= 1.0 + 1e-9  # PIL rounds to uint8 after each pass


def test_pixelate_matches_pil_float_box_resize_exactly() -> None:
    image = to_numpy_hwc(make_image(1, 29, 33, batch=1)).astype(np.float32)
    for severity, scale in zip(SEVERITIES, PIXELATE_SCALE, strict=True):
        small = Image.fromarray(image, mode="F").resize((int(33 * scale), int(29 * scale)), Image.Resampling.BOX)
        expected = np.asarray(small.resize((33, 29), Image.Resampling.BOX))
        ours = pixelate(torch.from_numpy(image)[None, None], severity)[0, 0].numpy()
        assert np.abs(ours - expected).max() < 1e-6


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_compression_matches_pil_save_and_load(channels: int) -> None:
    image_u8 = np.round(to_numpy_hwc(make_image(channels, 32, 32, batch=1)) * 255).astype(np.uint8)
    x_u8 = from_numpy_hwc(image_u8 / 255.0)
    for severity, quality in zip(SEVERITIES, JPEG_QUALITY, strict=True):
        buffer = io.BytesIO()
        Image.fromarray(image_u8).save(buffer, "JPEG", quality=quality)
        expected = np.asarray(Image.open(buffer), dtype=np.float64)
        ours = to_numpy_hwc(jpeg_compression(x_u8, severity)) * 255
        assert np.abs(ours - expected).max() < 1e-6


# ---------------------------------------------------------------- reference packages (optional)


@pytest.fixture(scope="module")
def reference() -> types.ModuleType:
    """Return bethgelab's ``imagecorruptions.corruptions`` module, or skip when it is not installed."""
    for package in ("imagecorruptions", "cv2", "skimage", "scipy"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (reference comparison)")
    with pytest.MonkeyPatch.context() as patch:
        if importlib.util.find_spec("pkg_resources") is None:
            # imagecorruptions imports pkg_resources (gone from setuptools >= 81) only to locate
            # its frost images, which the compared corruptions never read.
            stub = types.ModuleType("pkg_resources")
            stub.resource_filename = lambda _package, path: path  # type: ignore[attr-defined]
            patch.setitem(sys.modules, "pkg_resources", stub)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # its scipy.ndimage.interpolation import
            return importlib.import_module("imagecorruptions.corruptions")


def test_disk_kernel_matches_opencv_reference(reference: types.ModuleType) -> None:
    for radius, alias_blur in ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)):
        expected = reference.disk(radius=radius, alias_blur=alias_blur)
        assert np.abs(_disk_kernel(radius, alias_blur).numpy() - expected).max() < 1e-7


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_corruption_matches_imagecorruptions(reference: types.ModuleType, name: str) -> None:
    x = make_image(3, 32, 32, batch=1)
    for channels in (1, 3):
        image_u8 = np.round(to_numpy_hwc(x[:, :channels]) * 255).astype(np.uint8)
        x_u8 = from_numpy_hwc(image_u8 / 255.0)
        for severity in SEVERITIES:
            expected = np.asarray(getattr(reference, name)(Image.fromarray(image_u8), severity), dtype=np.float64)
            ours = to_numpy_hwc(corrupt(x_u8, name, severity)) * 255
            assert np.abs(ours - expected).max() <= 1.0 + 1e-6, (name, channels, severity)


def test_defocus_blur_matches_opencv_filter2d(reference: types.ModuleType) -> None:
    cv2 = pytest.importorskip("cv2")
    image = to_numpy_hwc(make_image(3, 28, 28, batch=1))
    for radius, alias_blur in ((3, 0.1), (10, 0.5)):
        kernel = reference.disk(radius=radius, alias_blur=alias_blur)
        expected = np.stack([cv2.filter2D(image[..., c], -1, kernel) for c in range(3)], axis=-1).clip(0, 1)
        severity = 1 if radius == 3 else 5
        assert np.abs(to_numpy_hwc(defocus_blur(from_numpy_hwc(image), severity)) - expected).max() < 1e-6


# ---------------------------------------------------------------- device


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", AVAILABLE)
def test_corruption_runs_on_the_input_device(name: str) -> None:
    x = make_image(3)
    x_cuda = x.to("cuda")
    y = corrupt(x_cuda, name, 3, generator=torch.Generator(device="cuda").manual_seed(0))
    assert y.device == x_cuda.device and y.shape == x.shape
    if name in DETERMINISTIC:
        assert torch.allclose(y.cpu(), corrupt(x, name, 3), atol=1e-5)
    with pytest.raises(ValueError, match="generator is on cpu"):
        corrupt(x_cuda, name, 3, generator=seeded(0))
