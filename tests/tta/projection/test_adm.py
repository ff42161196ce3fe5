"""Tests for the ADM UNet: checkpoint layout of the 256x256 release, forward, fp16, save/load, errors."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from tta.projection._adm_blocks import qkv_attention, timestep_embedding
from tta.projection.adm_config import ADMConfig, imagenet_256_uncond_config
from tta.projection.adm import ADMUNet, load_adm, save_adm

Entry = tuple[str, tuple[int, ...]]


# --- the published 256x256 unconditional architecture, written out from its definition --------------------------


def _norm(prefix: str, ch: int) -> Iterator[Entry]:
    yield f"{prefix}.weight", (ch,)
    yield f"{prefix}.bias", (ch,)


def _resblock(prefix: str, cin: int, cout: int, emb: int) -> Iterator[Entry]:
    """ResBlock with scale-shift norm: norm, 3x3 conv, emb linear, norm, 3x3 conv, 1x1 skip if cin != cout."""
    yield from _norm(f"{prefix}.in_layers.0", cin)
    yield f"{prefix}.in_layers.2.weight", (cout, cin, 3, 3)
    yield f"{prefix}.in_layers.2.bias", (cout,)
    yield f"{prefix}.emb_layers.1.weight", (2 * cout, emb)
    yield f"{prefix}.emb_layers.1.bias", (2 * cout,)
    yield from _norm(f"{prefix}.out_layers.0", cout)
    yield f"{prefix}.out_layers.3.weight", (cout, cout, 3, 3)
    yield f"{prefix}.out_layers.3.bias", (cout,)
    if cin != cout:
        yield f"{prefix}.skip_connection.weight", (cout, cin, 1, 1)
        yield f"{prefix}.skip_connection.bias", (cout,)


def _attention(prefix: str, ch: int) -> Iterator[Entry]:
    """AttentionBlock: norm, qkv Conv1d (3 * ch), proj_out Conv1d."""
    yield from _norm(f"{prefix}.norm", ch)
    yield f"{prefix}.qkv.weight", (3 * ch, ch, 1)
    yield f"{prefix}.qkv.bias", (3 * ch,)
    yield f"{prefix}.proj_out.weight", (ch, ch, 1)
    yield f"{prefix}.proj_out.bias", (ch,)


def expected_256_uncond() -> list[Entry]:
    """Keys and shapes of 256x256_diffusion_uncond.pt from the published architecture.

    256 base channels, multipliers (1, 1, 2, 2, 4, 4) -> feature maps 256, 128, 64, 32, 16, 8 px; two
    residual blocks per level down and three up; attention after each residual block at 32, 16 and 8 px
    and in the middle; residual-block resampling; time embedding 4 x 256; learned sigma -> 6 outputs.
    """
    base, emb, blocks = 256, 1024, 2
    widths = [256, 256, 512, 512, 1024, 1024]
    sizes = [256, 128, 64, 32, 16, 8]
    attention_sizes = {32, 16, 8}
    out: list[Entry] = [
        ("time_embed.0.weight", (emb, base)), ("time_embed.0.bias", (emb,)),
        ("time_embed.2.weight", (emb, emb)), ("time_embed.2.bias", (emb,)),
        ("input_blocks.0.0.weight", (base, 3, 3, 3)), ("input_blocks.0.0.bias", (base,)),
    ]
    skips = [base]  # width of every input block's output, consumed in reverse by the output blocks
    index, ch = 1, base
    for level, (width, size) in enumerate(zip(widths, sizes)):
        for _ in range(blocks):
            out += _resblock(f"input_blocks.{index}.0", ch, width, emb)
            ch = width
            if size in attention_sizes:
                out += _attention(f"input_blocks.{index}.1", ch)
            skips.append(ch)
            index += 1
        if level < len(widths) - 1:
            out += _resblock(f"input_blocks.{index}.0", ch, ch, emb)  # down=True: same width, no skip conv
            skips.append(ch)
            index += 1
    out += _resblock("middle_block.0", ch, ch, emb)
    out += _attention("middle_block.1", ch)
    out += _resblock("middle_block.2", ch, ch, emb)
    index = 0
    for level in reversed(range(len(widths))):
        width, size = widths[level], sizes[level]
        for i in range(blocks + 1):
            out += _resblock(f"output_blocks.{index}.0", ch + skips.pop(), width, emb)
            ch = width
            position = 1
            if size in attention_sizes:
                out += _attention(f"output_blocks.{index}.1", ch)
                position = 2
            if level > 0 and i == blocks:
                out += _resblock(f"output_blocks.{index}.{position}", ch, ch, emb)  # up=True
            index += 1
    assert not skips
    out += _norm("out.0", ch)
    out += [("out.2.weight", (6, ch, 3, 3)), ("out.2.bias", (6,))]
    return out


def test_imagenet_256_uncond_state_dict_matches_published_architecture() -> None:
    with torch.device("meta"):
        model = ADMUNet(imagenet_256_uncond_config())
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    expected = expected_256_uncond()
    assert got == expected
    assert sum(math.prod(shape) for _, shape in expected) == 552_814_086
    assert sum(p.numel() for p in model.parameters()) == 552_814_086
    assert model.config.channel_mult == (1, 1, 2, 2, 4, 4) and model.config.out_channels == 6


def test_default_channel_mult_follows_image_size() -> None:
    assert ADMConfig(image_size=256).channel_mult == (1, 1, 2, 2, 4, 4)
    assert ADMConfig(image_size=64, attention_resolutions=(16, 8)).channel_mult == (1, 2, 3, 4)
    with pytest.raises(ValueError, match="no default channel_mult for image_size 28"):
        ADMConfig(image_size=28)


# --- small models ----------------------------------------------------------------------------------------------


def tiny_config(**overrides: object) -> ADMConfig:
    base: dict[str, object] = dict(
        image_size=16, model_channels=32, channel_mult=(1, 2), attention_resolutions=(8,), num_head_channels=8,
        resblock_updown=True,
    )
    base.update(overrides)
    return ADMConfig(**base)  # type: ignore[arg-type]


def randomized(model: ADMUNet, seed: int = 0) -> ADMUNet:
    """Give every parameter random values (the zero-initialized output layers would make outputs trivial)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def inputs(config: ADMConfig, batch: int = 2, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    size = size or config.image_size
    x = torch.rand(batch, config.in_channels, size, size, generator=gen) * 2 - 1
    t = torch.tensor([3, 870, 500, 0][:batch])
    return x, t


def test_tiny_forward_shape_and_learned_sigma_channels() -> None:
    for learn_sigma, channels in ((True, 6), (False, 3)):
        config = tiny_config(learn_sigma=learn_sigma)
        model = randomized(ADMUNet(config))
        x, t = inputs(config)
        with torch.no_grad():
            y = model(x, t)
        assert config.out_channels == channels
        assert y.shape == (2, channels, 16, 16) and y.dtype == torch.float32
        assert torch.isfinite(y).all() and y.abs().max() > 0


def test_forward_depends_on_timestep_and_scalar_t_broadcasts() -> None:
    config = tiny_config()
    model = randomized(ADMUNet(config))
    x, _ = inputs(config)
    with torch.no_grad():
        y_10 = model(x, torch.tensor([10, 10]))
        y_900 = model(x, torch.tensor([900.0, 900.0]))
        y_scalar = model(x, torch.tensor(10))
    assert not torch.allclose(y_10, y_900)
    torch.testing.assert_close(y_scalar, y_10, rtol=0, atol=0)


def test_forward_is_deterministic_and_batch_independent() -> None:
    config = tiny_config()
    model = randomized(ADMUNet(config))
    x, t = inputs(config, batch=3)
    with torch.no_grad():
        first, second = model(x, t), model(x, t)
        alone = model(x[1:2], t[1:2])
    assert torch.equal(first, second)
    torch.testing.assert_close(alone, first[1:2], rtol=1e-5, atol=1e-6)


def test_dropout_only_in_train_mode() -> None:
    config = tiny_config(dropout=0.5)
    model = randomized(ADMUNet(config))
    x, t = inputs(config)
    with torch.no_grad():
        assert torch.equal(model(x, t), model(x, t))
        model.train()
        torch.manual_seed(0)
        a = model(x, t)
        b = model(x, t)
    assert not torch.equal(a, b)


def test_fp16_blocks_are_half_and_output_is_float32() -> None:
    config = tiny_config()
    reference = randomized(ADMUNet(config))
    model = ADMUNet(config, use_fp16=True)
    model.load_state_dict(reference.state_dict())
    model.eval()
    convs = [m for part in (model.input_blocks, model.middle_block, model.output_blocks) for m in part.modules()
             if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d))]
    assert convs and all(m.weight.dtype == torch.float16 and m.bias.dtype == torch.float16 for m in convs)
    others = [p for name, p in model.named_parameters()
              if not name.startswith(("input_blocks", "middle_block", "output_blocks"))
              or ".norm." in name or "_layers.0." in name or "emb_layers" in name]
    assert others and all(p.dtype == torch.float32 for p in others)  # time embedding, norms, head stay float32
    x, t = inputs(config)
    with torch.no_grad():
        try:
            y = model(x, t)
        except RuntimeError as error:  # float16 convolutions missing on this CPU build; anything else fails
            if "not implemented for 'Half'" not in str(error):
                raise
            pytest.skip(f"float16 ops unavailable on CPU: {error}")
        y_ref = reference(x, t)
    assert y.dtype == torch.float32 and y.shape == y_ref.shape
    assert (y - y_ref).abs().max() < 0.05 * y_ref.abs().max()  # half precision, same function
    model.convert_to_fp32()
    assert all(m.weight.dtype == torch.float32 for m in convs) and not model.use_fp16


@pytest.mark.gpu
def test_fp16_on_cuda_matches_fp32() -> None:
    config = tiny_config()
    reference = randomized(ADMUNet(config)).cuda()
    model = ADMUNet(config)
    model.load_state_dict(reference.state_dict())
    model = model.cuda().convert_to_fp16().eval()
    x, t = inputs(config)
    with torch.no_grad():
        y, y_ref = model(x.cuda(), t.cuda()), reference(x.cuda(), t.cuda())
    assert y.dtype == torch.float32
    assert (y - y_ref).abs().max() < 0.05 * y_ref.abs().max()


def test_save_load_round_trip(tmp_path) -> None:
    config = tiny_config(attention_resolutions=(16, 8), use_new_attention_order=True)
    model = randomized(ADMUNet(config))
    path = tmp_path / "adm.pt"
    save_adm(model, path)
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"model", "config"} and payload["config"] == asdict(config)
    loaded = load_adm(path)
    assert loaded.config == config and not loaded.training
    assert all(p.requires_grad and p.dtype == torch.float32 for p in loaded.parameters())
    x, t = inputs(config)
    with torch.no_grad():
        assert torch.equal(loaded(x, t), model(x, t))
    half = load_adm(path, use_fp16=True)
    assert half.use_fp16 and half.input_blocks[0][0].weight.dtype == torch.float16


def test_load_plain_state_dict_with_explicit_config(tmp_path) -> None:
    config = tiny_config()
    model = randomized(ADMUNet(config))
    path = tmp_path / "plain.pt"
    torch.save(model.state_dict(), path)  # the layout of the official releases
    loaded = load_adm(path, config)
    x, t = inputs(config)
    with torch.no_grad():
        assert torch.equal(loaded(x, t), model(x, t))
    with pytest.raises(ValueError, match="differs from the config passed"):
        save_adm(model, tmp_path / "ours.pt")
        load_adm(tmp_path / "ours.pt", tiny_config(learn_sigma=False))


def test_load_mismatched_state_dict_names_the_keys(tmp_path) -> None:
    config = tiny_config()
    state = ADMUNet(config).state_dict()
    del state["middle_block.1.qkv.bias"]
    state["label_emb.weight"] = torch.zeros(1000, 128)
    state["out.2.weight"] = torch.zeros(3, 32, 3, 3)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        load_adm(path, config)
    message = str(info.value)
    assert "1 missing: middle_block.1.qkv.bias" in message
    assert "1 unexpected: label_emb.weight" in message
    assert "out.2.weight: file (3, 32, 3, 3) vs model (6, 32, 3, 3)" in message
    torch.save({"something": 1}, path)
    with pytest.raises(ValueError, match="expected a state_dict"):
        load_adm(path, config)


def test_missing_checkpoint_says_where_to_get_it(tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_adm(tmp_path / "nowhere" / "256x256_diffusion_uncond.pt")
    message = str(info.value)
    assert "256x256_diffusion_uncond.pt" in message and "openai/guided-diffusion" in message
    assert str(tmp_path / "nowhere") in message


def test_fashion_mnist_sized_model_and_odd_sizes() -> None:
    config = ADMConfig(image_size=28, in_channels=1, model_channels=32, channel_mult=(1, 2, 2),
                       attention_resolutions=(7,), num_head_channels=16, resblock_updown=True)
    assert config.attention_rates == (4,) and config.size_multiple == 4
    model = randomized(ADMUNet(config))
    x, t = inputs(config, batch=2)
    with torch.no_grad():
        y = model(x, t)
    assert y.shape == (2, 2, 28, 28)
    with pytest.raises(ValueError, match="image size 30x30 is not a multiple of 4"):
        model(torch.zeros(1, 1, 30, 30), torch.tensor([1]))
    # 28 -> 14 -> 7 -> 4 would not come back to 7 on the way up
    with pytest.raises(ValueError, match="not divisible by 2 \\*\\* \\(len\\(channel_mult\\) - 1\\) = 8"):
        ADMConfig(image_size=28, model_channels=32, channel_mult=(1, 2, 2, 2), attention_resolutions=(7,))
    with pytest.raises(ValueError, match="attention resolution 5 is not the size of any level"):
        ADMConfig(image_size=28, model_channels=32, channel_mult=(1, 2, 2), attention_resolutions=(5,))


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"model_channels": 48}, ValueError, "multiple of 32"),
        ({"num_head_channels": 12}, ValueError, "num_head_channels 12 does not divide"),
        ({"num_head_channels": -1, "num_heads": 3}, ValueError, "num_heads 3 does not divide"),
        ({"dropout": 1.0}, ValueError, "dropout"),
        ({"learn_sigma": 1}, TypeError, "learn_sigma must be a bool"),
        ({"num_res_blocks": 0}, ValueError, "num_res_blocks must be >= 1"),
    ],
)
def test_config_validation(overrides: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        tiny_config(**overrides)


def test_forward_rejects_bad_inputs() -> None:
    config = tiny_config()
    model = ADMUNet(config)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, H, W\)"):
        model(torch.zeros(1, 1, 16, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"t must have shape \(2,\)"):
        model(torch.zeros(2, 3, 16, 16), torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), torch.tensor([1, 2]))


# --- pure pieces -----------------------------------------------------------------------------------------------


def test_timestep_embedding_hand_computed() -> None:
    # dim 4: half = 2, frequencies 10000 ** (-0 / 2) = 1 and 10000 ** (-1 / 2) = 0.01; cosines first
    emb = timestep_embedding(torch.tensor([0, 1, 250]), 4)
    expected = torch.tensor([
        [1.0, 1.0, 0.0, 0.0],
        [math.cos(1.0), math.cos(0.01), math.sin(1.0), math.sin(0.01)],
        [math.cos(250.0), math.cos(2.5), math.sin(250.0), math.sin(2.5)],
    ])
    torch.testing.assert_close(emb, expected, rtol=1e-5, atol=1e-5)
    odd = timestep_embedding(torch.tensor([2.5]), 5)
    assert odd.shape == (1, 5) and odd[0, -1] == 0
    torch.testing.assert_close(odd[0, :4], timestep_embedding(torch.tensor([2.5]), 4)[0])


@pytest.mark.parametrize("legacy_order", [True, False])
def test_qkv_attention_matches_scaled_dot_product_attention(legacy_order: bool) -> None:
    batch, heads, ch, length = 2, 3, 4, 5
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, ch, length, generator=gen) for _ in range(3))
    if legacy_order:  # channels [head0: q k v, head1: q k v, ...]
        qkv = torch.cat([q, k, v], dim=2).reshape(batch, heads * 3 * ch, length)
    else:  # channels [q: all heads, k: all heads, v: all heads]
        qkv = torch.cat([q.reshape(batch, -1, length), k.reshape(batch, -1, length), v.reshape(batch, -1, length)], 1)
    expected = F.scaled_dot_product_attention(q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3))
    got = qkv_attention(qkv, heads, legacy_order=legacy_order)
    torch.testing.assert_close(got, expected.transpose(2, 3).reshape(batch, heads * ch, length))
