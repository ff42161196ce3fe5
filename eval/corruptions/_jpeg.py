"""The JPEG round trip behind jpeg_compression: libjpeg via torchvision on the CPU, PIL where it is gone.

torchvision's ``encode_jpeg``/``decode_jpeg`` give the same bytes and pixels as the reference's PIL
save and load (checked in the tests) with less per-image overhead; torchvision 0.29 deprecates them
in favour of TorchCodec, so PIL (the reference's codec) takes over where they are gone.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from eval.corruptions._validate import check_range, values_checked

__all__ = ["jpeg_round_trip"]

_Codec = tuple[Callable[..., Tensor], Callable[..., Tensor]]


def jpeg_round_trip(x: Tensor, quality: int) -> Tensor:
    """Return the images of ``x`` (``(B, C, H, W)`` in [0, 1], values unchecked) after a JPEG save and load.

    Values are checked (NaN/Inf, range; round-off clamped) and rounded half to even to uint8.
    On the CPU the batch is split over ``torch.get_num_threads()`` threads (libjpeg releases the
    GIL), as the other corruptions use torch's threads; at one thread it runs in the caller's.
    """
    codec = _torchvision_jpeg()
    if x.device.type == "cpu" and codec is not None:
        return _threaded(x, quality, codec)
    x = values_checked(x, "jpeg_compression")
    decoded = _round_trip_batch(_to_uint8_hwc(x).cpu(), quality, codec)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    for target, image in zip(out, decoded, strict=True):
        target.copy_(image.permute(2, 0, 1))
    return out.div_(255)


def _threaded(x: Tensor, quality: int, codec: _Codec) -> Tensor:
    """Run :func:`_in_cache` on contiguous slices of the batch, one per thread, into one output."""
    out = torch.empty(x.shape, dtype=x.dtype)
    images, targets = x.detach().numpy(), out.numpy()
    workers = min(torch.get_num_threads(), len(images))
    with warnings.catch_warnings():  # each codec call warns of the deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        if workers <= 1:
            _in_cache(images, targets, quality, codec)
            return out
        bounds = np.linspace(0, len(images), workers + 1).astype(int)
        with ThreadPoolExecutor(workers) as pool:
            done = [pool.submit(_in_cache, images[a:b], targets[a:b], quality, codec)
                    for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            for future in done:  # in batch order: the first bad image's error is the one raised
                future.result()
    return out


def _in_cache(images: np.ndarray, targets: np.ndarray, quality: int, codec: _Codec) -> None:
    """One image at a time through checks, rounding, codec and back into ``targets``.

    Each image's float and byte copies stay in the CPU cache between the steps, its values are
    checked there too (no separate pass over the batch), and the conversions run on numpy views
    of the same memory: numpy's float-to-uint8 cast and its strided (de)interleaving loops took
    half the time of torch's at one thread; the pixels are the same.
    """
    encode, decode = codec
    channels, height, width = images.shape[1:]
    scaled = np.empty((channels, height, width), dtype=images.dtype)
    interleaved = np.empty((height, width, channels), dtype=np.uint8)
    frame = torch.from_numpy(interleaved).permute(2, 0, 1)  # the codec's (C, H, W) view: no copy
    for image, target in zip(images, targets):
        np.multiply(image, 255, out=scaled)
        if check_range(float(scaled.min()) / 255, float(scaled.max()) / 255, "jpeg_compression"):
            np.clip(scaled, 0, 255, out=scaled)
        np.rint(scaled, out=scaled)  # round half to even, as torch.round
        for channel in range(channels):
            np.copyto(interleaved[..., channel], scaled[channel], casting="unsafe")
        decoded = decode(encode(frame, quality=quality)).numpy()  # (C, H, W) view of (H, W, C) bytes
        np.divide(decoded, target.dtype.type(255), out=target, dtype=target.dtype)


def _to_uint8_hwc(x: Tensor) -> Tensor:
    """Return ``round(255 x)`` as uint8 ``(B, H, W, C)``, the interleaved layout libjpeg reads.

    The channels are interleaved here, once per batch, rather than by the codec, which copies
    each ``(C, H, W)`` image to ``(H, W, C)`` itself (a slower strided copy).
    """
    pixels = x.mul(255).round_().to(torch.uint8)
    if x.shape[1] == 1:
        return pixels.permute(0, 2, 3, 1)
    return torch.stack(pixels.unbind(1), dim=-1)  # interleaving bytes moves a quarter of the data of floats


def _round_trip_batch(images: Tensor, quality: int, codec: _Codec | None) -> list[Tensor]:
    """Return the uint8 ``(H, W, C)`` images of ``images`` (``(B, H, W, C)``, CPU) after a JPEG encode and decode."""
    if codec is None:
        return [_pil_round_trip(image, quality) for image in images]
    encode, decode = codec
    with warnings.catch_warnings():  # each call warns of the deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        # (C, H, W) views of the interleaved images: the codec's own (H, W, C) copy is a no-op.
        decoded = decode(encode(list(images.permute(0, 3, 1, 2)), quality=quality))
    return [image.permute(1, 2, 0) for image in decoded]


@functools.cache
def _torchvision_jpeg() -> _Codec | None:
    """Return torchvision's ``(encode_jpeg, decode_jpeg)``, or ``None`` where it no longer has them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import decode_jpeg, encode_jpeg
    except (ImportError, AttributeError):
        return None
    return encode_jpeg, decode_jpeg


def _pil_round_trip(image: Tensor, quality: int) -> Tensor:
    """Return one uint8 ``(H, W, C)`` image after a JPEG save and load with PIL, as the reference does."""
    array = image.numpy()
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return torch.from_numpy(np.asarray(decoded).reshape(array.shape).copy())
