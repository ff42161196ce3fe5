"""Saved states are checked before they load: damaged files, code-carrying pickles and other method settings are refused."""

from __future__ import annotations

import functools
import logging
import os
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import tta
from tests.helpers import build_method, tiny_classifier
from tta.files import read_torch_file
from tta.checkpoint import resume

METHODS = tta.list_methods()
# Flips per file: many for one method with every kind of state (parameters, buffers, Adam), fewer for the rest.
FLIPS = {"tent": 200}
OTHER_FLIPS = 30
REFUSED = "damaged|not a readable adaptation state"


def _wrap(method: str, **options: Any) -> tta.TTAMethod:
    return build_method(method, **options)  # a fresh tiny model, and a fresh supply of each need


def _batch(seed: int) -> torch.Tensor:
    return torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _adapted(method: str) -> tta.TTAMethod:
    adapter = _wrap(method)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # CoTTA draws its augmentations
        for seed in range(2):
            adapter(_batch(seed))
    return adapter


@functools.cache
def _saved(method: str, relative: bool) -> tuple[bytes, tuple[object, ...]]:
    """The file of a state saved after two adapted batches, and that state (adapted once per module: CoTTA is slow)."""
    adapter = _adapted(method)
    with tempfile.TemporaryDirectory() as folder:
        adapter.save_state(Path(folder) / "state.pt", relative_to_source=relative)
        return (Path(folder) / "state.pt").read_bytes(), _everything(adapter)


def _same(a: object, b: object) -> bool:
    """Whether ``a`` and ``b`` are equal bit for bit: tensors by dtype, shape and bytes; containers item by item."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _everything(adapter: tta.TTAMethod) -> tuple[object, ...]:
    """Copies of all an adapter's state: module tensors, optimizer states and settings, and the reset snapshot."""
    module = {k: v.detach().clone() for k, v in adapter.state_dict().items()}
    optimizers = [_copied(opt.state_dict()) for opt in adapter.optimizers]
    return module, optimizers, _copied(adapter.reset_point)


def _copied(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copied(v) for v in value)
    return value


def _load_or_refuse(target: tta.TTAMethod, path: Path, original: tuple[object, ...]) -> str:
    """Load ``path`` into ``target``: a refusal must change nothing, a load must give ``original`` exactly."""
    before = _everything(target)
    try:
        target.load_state(path)
    except ValueError as error:
        message = str(error)
        assert "\n" not in message and re.search(REFUSED, message), message
        assert _same(_everything(target), before), f"a refused load changed the adapter: {message}"
        return "refused"
    assert _same(_everything(target), original), f"{path.name} loaded different values silently"
    return "identical"


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
@pytest.mark.parametrize("method", METHODS)
def test_flipped_bits_are_refused_or_load_identical_values(tmp_path: Path, method: str, relative: bool) -> None:
    data, original = _saved(method, relative)
    target = _wrap(method)
    rng = random.Random(f"{method}-{relative}")
    outcomes = []
    for _ in range(FLIPS.get(method, OTHER_FLIPS)):
        position, bit = rng.randrange(len(data)), rng.randrange(8)
        damaged = bytearray(data)
        damaged[position] ^= 1 << bit
        (tmp_path / "flipped.pt").write_bytes(bytes(damaged))
        outcomes.append(_load_or_refuse(target, tmp_path / "flipped.pt", original))
    assert "refused" in outcomes


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
@pytest.mark.parametrize("method", METHODS)
def test_truncated_files_are_refused(tmp_path: Path, method: str, relative: bool) -> None:
    data, _ = _saved(method, relative)
    target = _wrap(method)
    before = _everything(target)
    for length in (0, 1, 64, len(data) // 4, len(data) // 2, len(data) - 512, len(data) - 22, len(data) - 1):
        (tmp_path / "cut.pt").write_bytes(data[:length])
        with pytest.raises(ValueError, match=REFUSED) as info:
            target.load_state(tmp_path / "cut.pt")
        assert "\n" not in str(info.value)
    assert _same(_everything(target), before)


def test_a_changed_value_with_a_valid_layout_is_refused_as_damaged(tmp_path: Path) -> None:
    adapter = _adapted("tent")
    adapter.save_state(tmp_path / "s.pt")
    record = torch.load(tmp_path / "s.pt", weights_only=True)
    record["snapshot"][0]["model.1.source_mean"][0] += 1.0  # a frozen statistic that no shape check can see
    torch.save(record, tmp_path / "edited.pt")
    target = _wrap("tent")
    before = _everything(target)
    with pytest.raises(ValueError, match="is damaged"):
        target.load_state(tmp_path / "edited.pt")
    assert _same(_everything(target), before)


class _RunsCode:
    """An object whose unpickling would call ``os.system``."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, ("echo loaded >&2",)


@pytest.mark.parametrize("reader", ["load_state", "resume", "read_torch_file"])
def test_a_pickle_that_runs_code_is_refused_without_advice_to_run_it(tmp_path: Path, reader: str) -> None:
    torch.save({"format": 1, "method": "Tent", "payload": _RunsCode()}, tmp_path / "evil.pt")
    adapter = _wrap("tent")
    readers: dict[str, Callable[[Path], object]] = {
        "load_state": adapter.load_state, "resume": lambda path: resume(adapter, path),
        "read_torch_file": lambda path: read_torch_file(path, what="weights file"),
    }
    read = readers[reader]
    with pytest.raises(ValueError, match="code or objects") as info:
        read(tmp_path / "evil.pt")
    message = str(info.value)
    assert "weights_only" not in message and "trust" not in message and "\n" not in message, message
    assert "system" in message  # names what was refused


def test_a_state_of_other_method_settings_is_refused_naming_them(tmp_path: Path) -> None:
    _wrap("norm", stats="batch").save_state(tmp_path / "batch.pt")
    ema = _wrap("norm", stats="ema")
    ema(_batch(0))
    before = _everything(ema)
    with pytest.raises(ValueError, match=r"method settings .*stats='batch'.*this Norm has .*stats='ema'") as info:
        ema.load_state(tmp_path / "batch.pt")
    assert "\n" not in str(info.value)
    assert _same(_everything(ema), before)


@pytest.mark.parametrize(("method", "saved", "loaded"), [
    ("tent", {"stats": "batch"}, {"stats": "ema"}),
    ("tent", {"steps": 1}, {"steps": 2}),
    ("cotta", {"restore_prob": 0.01}, {"restore_prob": 0.0}),
    ("lame", {"knn": 5}, {"knn": 3}),
    ("dda", {"ensemble": "sum"}, {"ensemble": "original"}),
    ("dda", {"guidance_scale": 6.0}, {"guidance_scale": 3.0}),
])
def test_other_method_options_are_refused(
    tmp_path: Path, method: str, saved: dict[str, object], loaded: dict[str, object]
) -> None:
    _wrap(method, **saved).save_state(tmp_path / "s.pt", relative_to_source=True)
    name = next(iter(saved))
    with pytest.raises(ValueError, match=f"method settings .*{name}"):
        _wrap(method, **loaded).load_state(tmp_path / "s.pt")


@pytest.mark.parametrize(("method", "options"), [
    ("tent", {"lr": 1e-3}), ("norm", {"stats": "ema", "momentum": 0.05}), ("cotta", {}), ("dda", {"seed": 3}),
])
def test_the_same_method_settings_load(tmp_path: Path, method: str, options: dict[str, object]) -> None:
    adapter = _wrap(method, **options)
    adapter(_batch(0))
    adapter.save_state(tmp_path / "s.pt")
    other = _wrap(method, **options)
    other.load_state(tmp_path / "s.pt")
    assert _same(_everything(other), _everything(adapter))


def test_settings_toggled_while_frozen_are_not_settings(tmp_path: Path) -> None:
    adapter = _adapted("norm")
    with adapter.frozen():  # statistics updates are switched off inside the block
        adapter.save_state(tmp_path / "s.pt")
    _wrap("norm").load_state(tmp_path / "s.pt")


def test_a_state_without_digest_or_method_settings_still_loads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    adapter = _adapted("norm")
    adapter.save_state(tmp_path / "s.pt")
    record = torch.load(tmp_path / "s.pt", weights_only=True)
    for key in ("digest", "method_settings"):
        record.pop(key, None)
    torch.save(record, tmp_path / "old.pt")  # as an older version wrote it
    other = _wrap("norm")
    with caplog.at_level(logging.WARNING, logger="tta.state"):
        other.load_state(tmp_path / "old.pt")
    assert _same(_everything(other), _everything(adapter))
    assert "no integrity digest" in caplog.text


def test_a_periodic_checkpoint_with_a_flipped_weight_bit_is_not_resumed(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    adapter = tta.wrap(tiny_classifier(), "tent", checkpoint=path, checkpoint_every=2)
    for seed in range(2):
        adapter(_batch(seed))
    data = bytearray(path.read_bytes())
    frozen_weight = adapter.state_dict()["model.0.weight"].numpy().tobytes()  # a frozen conv weight
    start = data.find(frozen_weight)
    assert start >= 0
    data[start + len(frozen_weight) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="is damaged"):
        tta.wrap(tiny_classifier(), "tent", resume=path)
