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


def _net(width: int = 8) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, width, 3), torch.nn.BatchNorm2d(width), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(width, 10),
    ).eval()


def _everything(adapter: tta.TTAMethod) -> tuple[dict[str, torch.Tensor], list[object], object]:
    """The module state, optimizer states and reset snapshot, as comparable copies."""
    return clone_state(adapter), [repr(opt.state_dict()) for opt in adapter.optimizers], repr(adapter.reset_point)


def test_refused_load_changes_nothing_even_where_tensors_fit(tmp_path: Path) -> None:
    tta.wrap(_net(8), "tent").save_state(tmp_path / "narrow.pt")
    wide = tta.wrap(_net(16), "tent")  # the BN's num_batches_tracked has the same shape in both
    wide(_batch(0))
    before = _everything(wide)
    with pytest.raises(ValueError, match=r"does not fit this model: .*shape \(8, 3, 3, 3\) float32 in the file"):
        wide.load_state(tmp_path / "narrow.pt")
    assert _everything(wide)[0].keys() == before[0].keys()
    assert state_equal(_everything(wide)[0], before[0]) and _everything(wide)[1:] == before[1:]


@pytest.mark.parametrize(("saved", "loaded", "message"), [
    ({"optimizer": "sgd"}, {}, "state of optimizer SGD; this Tent uses optimizer Adam"),
    ({}, {"optimizer": "sgd"}, "state of optimizer Adam; this Tent uses optimizer SGD"),
    ({}, {"lr": 0.5}, "saved with optimizer settings lr=0.001, this Tent has lr=0.5"),
])
def test_load_refuses_another_optimizer_or_its_settings(
    tmp_path: Path, saved: dict[str, object], loaded: dict[str, object], message: str
) -> None:
    tta.wrap(tiny_classifier(), "tent", **saved).save_state(tmp_path / "s.pt")
    adapter = tta.wrap(tiny_classifier(), "tent", **loaded)
    adapter(_batch(0))
    before = _everything(adapter)
    with pytest.raises(ValueError, match=message):
        adapter.load_state(tmp_path / "s.pt")
    assert state_equal(_everything(adapter)[0], before[0]) and _everything(adapter)[1:] == before[1:]
    assert adapter(_batch(1)).shape == (8, 10)  # still usable, no reset needed


def test_state_written_before_optimizer_settings_were_recorded(tmp_path: Path) -> None:
    adapter = tta.wrap(tiny_classifier(), "tent", optimizer="sgd")
    adapter(_batch(0))
    adapter.save_state(tmp_path / "s.pt")
    record = torch.load(tmp_path / "s.pt", weights_only=True)
    for recorded_later in ("optimizer_settings", "method_settings", "digest"):
        del record[recorded_later]
    torch.save(record, tmp_path / "old.pt")
    same = tta.wrap(tiny_classifier(), "tent", optimizer="sgd")
    same.load_state(tmp_path / "old.pt")  # an older file still loads
    assert state_equal(clone_state(same), clone_state(adapter))
    other = tta.wrap(tiny_classifier(), "tent")  # Adam: torch's load of an SGD state fails half-way
    other(_batch(1))
    before = _everything(other)
    with pytest.raises(ValueError, match="does not fit this Tent .*nothing was changed"):
        other.load_state(tmp_path / "old.pt")  # torch fails half-way: everything is put back
    assert state_equal(_everything(other)[0], before[0]) and _everything(other)[1:] == before[1:]
    assert other(_batch(2)).shape == (8, 10)


def test_incomplete_state_file_is_refused(tmp_path: Path) -> None:
    torch.save({"format": 1, "method": "Tent"}, tmp_path / "hand.pt")
    with pytest.raises(ValueError, match="not a complete adaptation state: it lacks optimizers, module, snapshot"):
        tta.wrap(tiny_classifier(), "tent").load_state(tmp_path / "hand.pt")
    torch.save({"format": 1, "method": "Tent", "optimizers": [{}], "module": [], "snapshot": (None, [])},
               tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a valid adaptation state .module is list"):
        tta.wrap(tiny_classifier(), "tent").load_state(tmp_path / "bad.pt")


def test_save_state_to_a_folder_empty_path_or_under_a_file_names_the_path(tmp_path: Path) -> None:
    adapter = tta.wrap(tiny_classifier(), "norm")
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValueError, match="it is a folder"):
        adapter.save_state(tmp_path)
    with pytest.raises(ValueError, match="empty path"):
        adapter.save_state("")
    with pytest.raises(ValueError, match=r"afile/s.pt'?: .*afile'? is a file, not a folder"):
        adapter.save_state(tmp_path / "afile" / "s.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no temporary file left


def test_state_of_another_dtype_is_refused(tmp_path: Path) -> None:
    tta.wrap(tiny_classifier(), "tent").save_state(tmp_path / "f32.pt")
    half = tta.wrap(tiny_classifier().to(torch.bfloat16), "tent")
    state = clone_state(half)
    with pytest.raises(ValueError, match=r"float32 in the file, shape \(\d+(, \d+)*\) bfloat16 in the model"):
        half.load_state(tmp_path / "f32.pt")
    assert state_equal(clone_state(half), state)


def test_frozen_block_holds_the_lock_so_other_threads_wait() -> None:
    adapter = tta.wrap(tiny_classifier(), "norm", stats="ema")
    finished = threading.Event()

    def other() -> None:
        adapter(_batch(1))
        finished.set()

    with adapter.frozen():
        thread = threading.Thread(target=other)
        thread.start()
        assert not finished.wait(0.3)  # the adapting call waits for the frozen block
        frozen_state = clone_state(adapter)
        adapter(_batch(2))
        assert state_equal(clone_state(adapter), frozen_state)
    thread.join(10)
    assert finished.is_set() and not state_equal(clone_state(adapter), frozen_state)
