"""Tests of eval.corruptions: registry, contract and tables (no reference package).

Input errors are tested in test_corruption_errors.py, each corruption's statistics and closed forms in
test_corruption_formulas.py; both use the synthetic images and helpers defined here.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from eval.corruptions import (
    CORRUPTIONS,
    DEFAULT_CORRUPTIONS,
    corrupt,
    get_corruption,
    list_corruptions,
)
from eval.corruptions import _validate
from eval.corruptions.digital import CONTRAST_FACTOR, pixelate

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
