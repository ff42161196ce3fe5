"""Comparisons of eval.corruptions with the reference package imagecorruptions (the ``dev`` extra).

Deterministic corruptions must agree pixel for pixel (within uint8 rounding); the random ones
agree exactly where the same random numbers can be fed to both (glass blur's offsets, motion
blur's angle, elastic's resampling) and in distribution otherwise. The package is loaded through
``benchmarks/imagecorruptions_compat.py``, which patches it for current numpy and scikit-image.
"""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval.corruptions import corrupt
from eval.corruptions._filters import box3_reflect101, filter2d_reflect101, motion_blur_lines
from eval.corruptions.blur import DEFOCUS_BLUR_DISK, GLASS_BLUR, _apply_moves, _disk_kernel
from eval.corruptions.digital import _sample
from eval.corruptions.spatter import _EMBOSS, _canny, _distance_to, _equalize_histogram
from tests.eval.test_corruptions import from_numpy_hwc, make_image, to_numpy_hwc

COMPAT = Path(__file__).resolve().parents[2] / "benchmarks" / "imagecorruptions_compat.py"
DETERMINISTIC = ["defocus_blur", "zoom_blur", "gaussian_blur", "brightness", "contrast", "saturate", "pixelate",
                 "jpeg_compression"]


@pytest.fixture(scope="module")
def reference() -> types.ModuleType:
    """Return the patched ``imagecorruptions.corruptions`` module, or skip when it is not installed."""
    if importlib.util.find_spec("imagecorruptions") is None:  # importing it needs the patches below
        pytest.skip("imagecorruptions is not installed (pip install -e .[dev])")
    spec = importlib.util.spec_from_file_location("imagecorruptions_compat", COMPAT)
    assert spec is not None and spec.loader is not None
    compat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compat)
    module = compat.load_reference()
    if module is None:
        pytest.skip("imagecorruptions' dependencies (opencv-python, scikit-image, scipy) are missing")
    return module


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """Return a 48x48 uint8 RGB photograph (scikit-image's astronaut), for statistics with real texture."""
    data = pytest.importorskip("skimage.data")
    return np.asarray(Image.fromarray(data.astronaut()[40:340, 100:400]).resize((48, 48), Image.Resampling.BICUBIC))


def test_disk_kernel_matches_opencv_reference(reference: types.ModuleType) -> None:
    for radius, alias_blur in DEFOCUS_BLUR_DISK.imagenet + DEFOCUS_BLUR_DISK.cifar:
        expected = reference.disk(radius=radius, alias_blur=alias_blur)
        assert np.abs(_disk_kernel(radius, alias_blur).numpy() - expected).max() < 1e-7


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_corruption_matches_imagecorruptions(reference: types.ModuleType, name: str) -> None:
    x = make_image(3, 32, 32, batch=1)
    for channels in (1, 3):
        image_u8 = np.round(to_numpy_hwc(x[:, :channels]) * 255).astype(np.uint8)
        x_u8 = from_numpy_hwc(image_u8 / 255.0)
        for severity in range(1, 6):
            expected = np.asarray(getattr(reference, name)(Image.fromarray(image_u8), severity), dtype=np.float64)
            ours = to_numpy_hwc(corrupt(x_u8, name, severity, table="imagenet")) * 255
            assert np.abs(ours - expected).max() <= 1.0 + 1e-4, (name, channels, severity)


def test_glass_blur_matches_reference_given_the_same_offsets(reference: types.ModuleType) -> None:
    from eval.corruptions._filters import gaussian_filter

    height, width = 14, 17
    image = (np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8)
    for severity in range(1, 6):
        sigma, delta, iterations = GLASS_BLUR.imagenet[severity - 1]
        np.random.seed(severity)
        expected = np.clip(reference.glass_blur(Image.fromarray(image), severity), 0, 255)
        np.random.seed(severity)  # replay its draws: (dx, dy) per visited pixel, reverse raster order
        x = torch.floor(gaussian_filter(from_numpy_hwc(image / 255.0), sigma) * 255) / 255
        for _ in range(iterations):
            dy = np.zeros((height - 2 * delta, width - 2 * delta), dtype=np.int64)
            dx = np.zeros_like(dy)
            for row in range(height - delta, delta, -1):
                for col in range(width - delta, delta, -1):
                    dx[row - delta - 1, col - delta - 1], dy[row - delta - 1, col - delta - 1] = np.random.randint(
                        -delta, delta, size=(2,))
            x = _apply_moves(x, delta, torch.from_numpy(dy)[None], torch.from_numpy(dx)[None])
        ours = to_numpy_hwc(gaussian_filter(x, sigma)) * 255
        assert np.abs(ours - expected).max() < 1e-6, severity


def test_motion_blur_lines_match_reference(reference: types.ModuleType) -> None:
    image = (np.random.default_rng(1).random((30, 41, 3)) * 255).astype(np.uint8)
    for radius, sigma, angle in ((10, 3, 30.0), (15, 12, -44.0), (20, 15, 7.5), (6, 1, -120.0)):
        for array in (image, image[..., 0]):  # RGB adds shifted views; one channel goes through the FFT
            expected = reference._motion_blur(array, radius=radius, sigma=sigma, angle=angle)
            ours = motion_blur_lines(from_numpy_hwc(array), radius, sigma, torch.tensor([angle]))
            assert np.abs(to_numpy_hwc(ours) - expected).max() < 1e-4, (angle, array.ndim)


def test_elastic_resampling_matches_opencv_and_scipy(reference: types.ModuleType) -> None:
    cv2 = pytest.importorskip("cv2")
    ndimage = pytest.importorskip("scipy.ndimage")
    image = to_numpy_hwc(make_image(1, 24, 28, batch=1)).astype(np.float32)
    rng = np.random.default_rng(2)
    matrix = np.array([[1.02, 0.05, -1.5], [-0.04, 0.97, 2.0]], dtype=np.float64)
    expected = cv2.warpAffine(image, matrix, (28, 24), borderMode=cv2.BORDER_REFLECT_101)
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    rows, cols = np.mgrid[0:24, 0:28].astype(np.float64)
    src_x = inverse[0, 0] * cols + inverse[0, 1] * rows + inverse[0, 2]
    src_y = inverse[1, 0] * cols + inverse[1, 1] * rows + inverse[1, 2]
    x = torch.from_numpy(image.astype(np.float64))[None, None]
    warped = _sample(x, torch.from_numpy(src_x)[None], torch.from_numpy(src_y)[None], align_corners=True)
    assert np.abs(warped[0, 0].numpy() - expected).max() < 0.01  # OpenCV rounds coordinates to 1/32 pixel
    dy, dx = rng.uniform(-3, 3, size=(2, 24, 28))
    expected = ndimage.map_coordinates(image.astype(np.float64), (rows + dy, cols + dx), order=1, mode="reflect")
    moved = _sample(x, torch.from_numpy(cols + dx)[None], torch.from_numpy(rows + dy)[None], align_corners=False)
    assert np.abs(moved[0, 0].numpy() - expected).max() < 1e-9


def test_spatter_steps_match_opencv(reference: types.ModuleType) -> None:
    cv2 = pytest.importorskip("cv2")
    from skimage.filters import gaussian

    rng = np.random.default_rng(3)
    layer = gaussian(rng.normal(0.65, 0.3, size=(48, 48)), sigma=2)
    layer[layer < 0.68] = 0
    levels = (layer * 255).astype(np.uint8)
    edges = cv2.Canny(levels, 50, 150) > 0
    ours_edges = _canny(torch.from_numpy(levels.astype(np.float64))[None, None], low=50.0, high=150.0)[0, 0].numpy()
    assert (ours_edges != edges).mean() < 0.01
    distance = cv2.threshold(cv2.distanceTransform((~edges).astype(np.uint8) * 255, cv2.DIST_L2, 5), 20, 20,
                             cv2.THRESH_TRUNC)[1]
    ours_distance = _distance_to(torch.from_numpy(edges)[None, None], cap=20)[0, 0].numpy()
    assert np.abs(ours_distance - distance).max() < 0.4  # OpenCV's 5x5 mask approximates the Euclidean distance
    blurred = cv2.blur(distance, (3, 3)).astype(np.uint8)
    ours_blurred = torch.floor(box3_reflect101(torch.from_numpy(distance.astype(np.float64))[None, None]))
    assert np.abs(ours_blurred[0, 0].numpy() - blurred).max() <= 1
    equalised = cv2.equalizeHist(blurred)
    ours_equalised = _equalize_histogram(torch.from_numpy(blurred.astype(np.float64))[None, None])
    assert np.array_equal(ours_equalised[0, 0].numpy(), equalised)
    embossed = cv2.filter2D(equalised, cv2.CV_8U, np.array(_EMBOSS))
    ours_embossed = filter2d_reflect101(torch.from_numpy(equalised.astype(np.float64))[None, None],
                                        torch.tensor(_EMBOSS, dtype=torch.float64)).round().clamp(0, 255)
    assert np.array_equal(ours_embossed[0, 0].numpy(), embossed)


@pytest.mark.parametrize(
    ("name", "tolerance"),
    [("gaussian_noise", 0.03), ("shot_noise", 0.03), ("impulse_noise", 0.05), ("speckle_noise", 0.03),
     ("glass_blur", 0.1), ("motion_blur", 0.15), ("snow", 0.1), ("fog", 0.15), ("spatter", 0.3)],
)
def test_stochastic_corruption_changes_images_as_much_as_reference(
    reference: types.ModuleType, photo: np.ndarray, name: str, tolerance: float
) -> None:
    draws, severity = 6, 3
    np.random.seed(0)
    fn = getattr(reference, name)
    theirs = np.mean([np.abs(np.asarray(fn(Image.fromarray(photo), severity), dtype=np.float64) - photo).mean()
                      for _ in range(draws)])
    x = from_numpy_hwc(photo / 255.0).expand(draws, -1, -1, -1)
    ours = float((corrupt(x, name, severity, generator=torch.Generator().manual_seed(0), table="imagenet") - x)
                 .abs().mean()) * 255
    assert ours == pytest.approx(theirs, rel=tolerance), (ours, theirs)
