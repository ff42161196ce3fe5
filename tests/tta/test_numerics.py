"""Numerics and devices: autocast (bfloat16 on CPU, float16 on CUDA), channels_last, torch.compile, device checks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import tta
from tests.helpers import clone_state, state_equal, tiny_classifier

METHODS: dict[str, dict[str, Any]] = {
    "source": {},
    "norm": {},
    "tent": {},
    "cotta": {"num_augmentations": 2},
    "lame": {},
}


def _batch(seed: int, n: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _buffers_dtype(adapter: nn.Module) -> set[torch.dtype]:
    return {b.dtype for name, b in adapter.named_buffers() if "running" in name or "source_" in name}


@pytest.mark.parametrize("method", list(METHODS))
def test_cpu_bfloat16_autocast_matches_float32(method: str) -> None:
    reference = tta.wrap(tiny_classifier(), method, **METHODS[method])
    adapter = tta.wrap(tiny_classifier(), method, **METHODS[method])
    for seed in range(2):
        expected = reference(_batch(seed))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = adapter(_batch(seed))
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.float(), expected, atol=0.1, rtol=0.05)
    assert _buffers_dtype(adapter) <= {torch.float32}, "statistics stay in the model's precision"
    assert all(p.dtype == torch.float32 for p in adapter.parameters())


def test_bn_statistics_under_bfloat16_autocast_are_accumulated_in_float32() -> None:
    adapter = tta.wrap(tiny_classifier(), "norm", stats="ema", momentum=1.0)
    x = _batch(0, n=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        adapter(x)
        activations = adapter.model[0](x)  # the bfloat16 input of the first BN layer
    assert activations.dtype == torch.bfloat16
    var, mean = torch.var_mean(activations.double(), dim=(0, 2, 3), correction=1)
    bn = adapter.model[1]
    # float32 accumulation: ~1e-7 relative; statistics rounded to bfloat16 would be off by ~1e-3
    torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", list(METHODS))
def test_bfloat16_model_runs_every_method(method: str) -> None:
    adapter = tta.wrap(tiny_classifier().to(torch.bfloat16), method, **METHODS[method])
    out = adapter(_batch(0).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@pytest.mark.parametrize("method", list(METHODS))
def test_channels_last_model_and_input_match_contiguous(method: str) -> None:
    reference = tta.wrap(tiny_classifier(), method, **METHODS[method])
    adapter = tta.wrap(tiny_classifier().to(memory_format=torch.channels_last), method, **METHODS[method])
    for seed in range(2):
        x = _batch(seed)
        torch.testing.assert_close(adapter(x.to(memory_format=torch.channels_last)), reference(x),
                                   atol=1e-5, rtol=1e-5)
    # CoTTA's Adam also steps conv biases ahead of BN, whose gradient is zero up to rounding: Adam turns
    # that rounding noise (which differs with the memory layout) into steps of about lr = 1e-3.
    atol = 3e-3 if method == "cotta" else 1e-5
    ref_state, state = clone_state(reference), clone_state(adapter)
    for name, value in ref_state.items():
        torch.testing.assert_close(state[name], value, atol=atol, rtol=1e-5)


def test_model_on_another_device_than_the_batch_is_a_clear_error() -> None:
    adapter = tta.wrap(tiny_classifier().to("meta"), "norm")
    with pytest.raises(ValueError, match="batch is on cpu but the model is on meta"):
        adapter(_batch(0))


@pytest.mark.parametrize("method", ["source", "norm", "tent", "lame"])
def test_compiled_wrapper_matches_eager(method: str) -> None:
    # aot_eager traces the wrapper (graph breaks at the lock, checks and .item()) and runs autograd
    # through the captured graphs, without code generation, so it stays fast; inductor: see below.
    torch._dynamo.reset()
    reference = tta.wrap(tiny_classifier(), method)
    compiled = torch.compile(tta.wrap(tiny_classifier(), method), backend="aot_eager")
    for seed in range(2):
        torch.testing.assert_close(compiled(_batch(seed)), reference(_batch(seed)), atol=1e-5, rtol=1e-5)
    assert state_equal(clone_state(compiled._orig_mod), clone_state(reference)) or method == "tent"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["norm", "tent", "cotta"])
def test_inductor_compiled_inner_model_matches_eager(method: str) -> None:
    torch._dynamo.reset()
    reference = tta.wrap(tiny_classifier(), method, **METHODS[method])
    adapter = tta.wrap(tiny_classifier(), method, **METHODS[method])
    adapter.model.compile()  # the supported way: compile the network, keep the adaptation logic eager
    for seed in range(3):
        torch.testing.assert_close(adapter(_batch(seed)), reference(_batch(seed)), atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("method", list(METHODS))
def test_cuda_float16_autocast_matches_float32(method: str) -> None:
    reference = tta.wrap(tiny_classifier(), method, **METHODS[method]).cuda()
    adapter = tta.wrap(tiny_classifier(), method, **METHODS[method]).cuda()
    for seed in range(2):
        x = _batch(seed).cuda()
        expected = reference(x)
        with torch.autocast("cuda", dtype=torch.float16):
            out = adapter(x)
        assert out.device.type == "cuda" and torch.isfinite(out).all()
        torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.05)
    assert _buffers_dtype(adapter) <= {torch.float32}


@pytest.mark.gpu
@pytest.mark.parametrize("method", list(METHODS))
def test_cuda_channels_last_matches_cpu(method: str) -> None:
    reference = tta.wrap(tiny_classifier(), method, **METHODS[method])
    adapter = tta.wrap(tiny_classifier(), method, **METHODS[method]).cuda().to(memory_format=torch.channels_last)
    for seed in range(2):
        x = _batch(seed)
        out = adapter(x.cuda().to(memory_format=torch.channels_last))
        torch.testing.assert_close(out.cpu(), reference(x), atol=1e-3, rtol=1e-3)


@pytest.mark.gpu
def test_batch_on_cuda_with_model_on_cpu_is_a_clear_error() -> None:
    adapter = tta.wrap(tiny_classifier(), "tent")
    state = clone_state(adapter)
    with pytest.raises(ValueError, match="batch is on cuda:0 but the model is on cpu"):
        adapter(_batch(0).cuda())
    assert state_equal(clone_state(adapter), state)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("method", ["norm", "tent"])
def test_cuda_inductor_compiled_inner_model_matches_eager(method: str) -> None:
    torch._dynamo.reset()
    reference = tta.wrap(tiny_classifier(), method).cuda()
    adapter = tta.wrap(tiny_classifier(), method).cuda()
    adapter.model.compile()
    for seed in range(3):
        x = _batch(seed).cuda()
        torch.testing.assert_close(adapter(x), reference(x), atol=1e-4, rtol=1e-4)




class _MemoryFormatProbe(nn.Module):
    """Asks for the input's memory format, as cuDNN's convolution kernels do: vmap has no rule for that."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous() if x.is_contiguous(memory_format=torch.channels_last) else x


def test_cotta_falls_back_to_separate_forwards_on_a_real_vmap_error() -> None:
    # The kernel-side query raises torch's own "NYI: querying is_contiguous inside of vmap" (on CPU
    # too), the error CUDA's cuDNN convolutions raise on channels_last input.
    options = {"num_augmentations": 2, "max_images": 64, "confidence_threshold": 1.0}  # all copies in one vmap
    reference = tta.wrap(tiny_classifier(), "cotta", **options)
    expected = [reference(_batch(seed)) for seed in range(2)]
    adapter = tta.wrap(nn.Sequential(_MemoryFormatProbe(), tiny_classifier()), "cotta", **options)
    for seed in range(2):
        torch.testing.assert_close(adapter(_batch(seed)), expected[seed], atol=1e-6, rtol=1e-5)
    assert adapter._vmap_works is False


def test_cotta_falls_back_to_separate_forwards_where_vmap_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    # On CUDA, vmap over cuDNN convolutions of channels_last tensors raises "NYI ... inside of vmap";
    # CoTTA must then forward the augmented copies one by one, with the same result.
    options = {"num_augmentations": 2, "max_images": 64, "confidence_threshold": 1.0}  # all copies in one vmap
    reference = tta.wrap(tiny_classifier(), "cotta", **options)
    expected = [reference(_batch(seed)) for seed in range(2)]

    def no_vmap(*args: object, **kwargs: object) -> object:
        raise RuntimeError("NYI: querying is_contiguous inside of vmap for memory_format other than contiguous")

    monkeypatch.setattr(torch.func, "vmap", no_vmap)
    adapter = tta.wrap(tiny_classifier(), "cotta", **options)
    for seed in range(2):
        torch.testing.assert_close(adapter(_batch(seed)), expected[seed], atol=1e-6, rtol=1e-5)
    assert adapter._vmap_works is False
