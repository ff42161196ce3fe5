"""Adaptation state: save -> new process -> load gives identical next outputs; concurrency is serialized."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import tta
from tests.helpers import clone_state, state_equal, tiny_classifier

_CHILD = """
import sys, torch, tta
from tests.helpers import tiny_classifier
adapter = tta.wrap(tiny_classifier(), "tent")
adapter.load_state(sys.argv[1])
x = torch.load(sys.argv[2])
torch.save(adapter(x), sys.argv[3])
"""


def _batch(seed: int) -> torch.Tensor:
    return torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_saved_state_gives_identical_next_outputs_in_a_new_process(tmp_path: Path) -> None:
    adapter = tta.wrap(tiny_classifier(), "tent")
    for seed in range(3):
        adapter(_batch(seed))
    adapter.save_state(tmp_path / "state.pt")
    x = _batch(99)
    torch.save(x, tmp_path / "x.pt")
    expected = adapter(x)
    code = f"import sys; sys.path.insert(0, {str(Path.cwd())!r})\n" + _CHILD
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "state.pt"), str(tmp_path / "x.pt"),
                    str(tmp_path / "out.pt")], check=True, capture_output=True)
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)


def test_loaded_state_resets_to_the_same_source(tmp_path: Path) -> None:
    adapter = tta.wrap(tiny_classifier(), "norm", stats="ema")
    source_state = clone_state(adapter)
    adapter(_batch(1))
    adapter.save_state(tmp_path / "s.pt")
    other = tta.wrap(tiny_classifier(), "norm", stats="ema")
    other.load_state(tmp_path / "s.pt")
    assert state_equal(clone_state(other), clone_state(adapter))
    other.reset()
    assert state_equal(clone_state(other), source_state)


def test_foreign_damaged_and_mismatched_files_are_refused(tmp_path: Path) -> None:
    adapter = tta.wrap(tiny_classifier(), "tent")
    adapter.save_state(tmp_path / "tent.pt")
    state = clone_state(adapter)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable adaptation state"):
        adapter.load_state(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="state of Tent, not of Norm"):
        tta.wrap(tiny_classifier(), "norm").load_state(tmp_path / "tent.pt")
    with pytest.raises(ValueError, match="does not fit"):
        tta.wrap(tiny_classifier(num_classes=3), "tent").load_state(tmp_path / "tent.pt")
    with pytest.raises(FileNotFoundError):
        adapter.load_state(tmp_path / "absent.pt")
    assert state_equal(clone_state(adapter), state)


@pytest.mark.parametrize("method", ["norm", "tent", "cotta"])
def test_state_relative_to_source_restores_the_same_adapter_from_a_smaller_file(tmp_path: Path, method: str) -> None:
    adapter = tta.wrap(tiny_classifier(), method)
    for seed in range(3):
        adapter(_batch(seed))
    adapter.save_state(tmp_path / "full.pt")
    adapter.save_state(tmp_path / "relative.pt", relative_to_source=True)
    assert (tmp_path / "relative.pt").stat().st_size < 0.6 * (tmp_path / "full.pt").stat().st_size
    other = tta.wrap(tiny_classifier(), method)
    other.load_state(tmp_path / "relative.pt")
    assert state_equal(clone_state(other), clone_state(adapter))
    outputs = []
    for wrapper in (adapter, other):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # CoTTA draws its augmentations
            outputs.append(wrapper(_batch(99)))
    assert torch.equal(outputs[0], outputs[1])  # the next adaptation step too
    other.reset()
    assert state_equal(clone_state(other), clone_state(tta.wrap(tiny_classifier(), method)))


def test_state_relative_to_source_is_refused_by_another_source(tmp_path: Path) -> None:
    adapter = tta.wrap(tiny_classifier(), "tent")
    adapter(_batch(0))
    adapter.save_state(tmp_path / "relative.pt", relative_to_source=True)
    other_source = tiny_classifier()
    with torch.no_grad():
        other_source[0].weight.add_(1e-3)  # the same architecture, other weights
    other = tta.wrap(other_source, "tent")
    state = clone_state(other)
    with pytest.raises(ValueError, match="saved relative to another source model"):
        other.load_state(tmp_path / "relative.pt")
    assert state_equal(clone_state(other), state)  # nothing changed


def test_threads_hammering_one_wrapper_are_serialized() -> None:
    adapter = tta.wrap(tiny_classifier(), "tent")
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(5):
                out = adapter(_batch(seed * 10 + i))
                assert out.shape == (8, 10) and torch.isfinite(out).all()
        except BaseException as error:  # noqa: BLE001 - collected and re-raised in the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    steps = {int(s["step"]) for s in adapter.optimizer.state_dict()["state"].values()}
    assert steps == {30}, "every call made exactly one optimizer step on every parameter"
