"""Periodic checkpoints: written every N adapted batches, atomically, and resumed after a restart."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

import tta
import tta.files
from tests.helpers import clone_state, state_equal, tiny_classifier
from tta.checkpoint import PeriodicCheckpoint, resume
from tta.guard import CollapseGuard


def _batch(seed: int) -> torch.Tensor:
    return torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_checkpoint_is_written_every_n_adapted_batches(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    adapter = tta.wrap(tiny_classifier(), "tent", checkpoint=path, checkpoint_every=2)
    adapter(_batch(0))
    assert not path.exists()
    adapter(_batch(1))
    after_two = clone_state(adapter)
    adapter(_batch(2))  # third batch: no write, the file still holds the state after two
    restored = tta.wrap(tiny_classifier(), "tent", resume=path)
    assert state_equal(clone_state(restored), after_two)
    assert not state_equal(clone_state(restored), clone_state(adapter))


def test_rejected_and_frozen_batches_do_not_count(tmp_path: Path) -> None:
    saver = PeriodicCheckpoint(tmp_path / "s.pt", every=2)
    adapter = tta.wrap(tiny_classifier(), "norm", stats="ema")
    saver.attach(adapter)
    adapter(_batch(0))
    with pytest.raises(ValueError, match="NaN"):
        adapter(torch.full((8, 3, 16, 16), float("nan")))
    with adapter.frozen():
        adapter(_batch(1))
    assert saver.batches == 1 and saver.writes == 0
    adapter(_batch(2))
    assert saver.batches == 2 and saver.writes == 1


def test_resume_continues_with_identical_outputs(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    first = tta.wrap(tiny_classifier(), "tent", checkpoint=path, checkpoint_every=3)
    for seed in range(3):
        first(_batch(seed))
    expected = first(_batch(10))
    restarted = tta.wrap(tiny_classifier(), "tent", checkpoint=path, checkpoint_every=3, resume=path)
    assert torch.equal(restarted(_batch(10)), expected)


def test_resume_without_a_file_starts_from_source(tmp_path: Path) -> None:
    adapter = tta.wrap(tiny_classifier(), "norm", stats="ema")
    source = clone_state(adapter)
    assert resume(adapter, tmp_path / "absent.pt") is False
    assert state_equal(clone_state(adapter), source)


def test_resume_refuses_a_checkpoint_of_another_method(tmp_path: Path) -> None:
    path = tmp_path / "tent.pt"
    tta.wrap(tiny_classifier(), "tent").save_state(path)
    with pytest.raises(ValueError, match="state of Tent, not of Norm"):
        tta.wrap(tiny_classifier(), "norm", resume=path)


def test_crash_during_a_write_leaves_the_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.pt"
    adapter = tta.wrap(tiny_classifier(), "tent", checkpoint=path, checkpoint_every=1)
    adapter(_batch(0))
    saved = clone_state(adapter)
    real_save = torch.save

    def dying_save(obj: object, handle: io.BufferedWriter) -> None:  # half a file, then the process "dies"
        buffer = io.BytesIO()
        real_save(obj, buffer)
        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise KeyboardInterrupt("simulated crash during the checkpoint write")

    monkeypatch.setattr(tta.files.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        adapter(_batch(1))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"], "no temporary file is left behind"
    restored = tta.wrap(tiny_classifier(), "tent", resume=path)
    assert state_equal(clone_state(restored), saved)


def test_checkpoint_with_the_collapse_guard(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    guarded = tta.wrap(tiny_classifier(), "tent", production=True, checkpoint=path, checkpoint_every=1)
    guarded(_batch(0))
    assert path.exists()
    restarted = tta.wrap(tiny_classifier(), "tent", production=True, resume=path)
    assert state_equal(clone_state(restarted.adapter), clone_state(guarded.adapter))


@pytest.mark.parametrize("every", [0, -3, 1.5, True])
def test_invalid_checkpoint_interval_is_refused(every: object, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="checkpoint_every"):
        tta.wrap(tiny_classifier(), "norm", checkpoint=tmp_path / "s.pt", checkpoint_every=every)  # type: ignore[arg-type]


def test_a_copied_adapter_does_not_write_the_originals_checkpoint(tmp_path: Path) -> None:
    import copy

    path = tmp_path / "state.pt"
    adapter = tta.wrap(tiny_classifier(), "tent", checkpoint=path, checkpoint_every=1)
    adapter(_batch(0))
    written = path.read_bytes()
    twin = copy.deepcopy(adapter)
    twin(_batch(1))
    twin(_batch(2))
    assert path.read_bytes() == written  # only the original writes its file
    adapter(_batch(3))
    assert path.read_bytes() != written


def test_checkpoint_path_is_checked_at_wrap_time(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValueError, match="afile'? is a file, not a folder"):
        tta.wrap(tiny_classifier(), "tent", checkpoint=tmp_path / "afile" / "ck.pt", checkpoint_every=1)
    with pytest.raises(ValueError, match="it is a folder"):
        tta.wrap(tiny_classifier(), "tent", checkpoint=tmp_path, checkpoint_every=1)
    tta.wrap(tiny_classifier(), "norm", checkpoint=tmp_path / "new" / "ck.pt")  # a missing folder is created later


def test_failed_checkpoint_write_keeps_the_prediction_and_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.pt"
    adapter = tta.wrap(tiny_classifier(), "tent", checkpoint=path, checkpoint_every=1)
    reference = tta.wrap(tiny_classifier(), "tent")

    def full_disk(obj: object, handle: io.BufferedWriter) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tta.files.torch, "save", full_disk)
    for seed in range(2):
        assert torch.equal(adapter(_batch(seed)), reference(_batch(seed)))  # logits returned, adaptation kept
    saver = PeriodicCheckpoint.of(adapter)
    assert saver is not None and saver.failures == 2 and saver.writes == 0
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "No space left" in r.getMessage()]
    assert len(errors) == 2 and str(path) in errors[0].getMessage()
    monkeypatch.undo()
    adapter(_batch(2))
    assert saver.writes == 1 and path.exists() and [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def _collapsing_guard(path: Path) -> tuple[CollapseGuard, int]:
    """Tent with an absurd learning rate under the guard, run until the guard resets it; returns (guard, batches)."""
    torch.manual_seed(0)
    guard = tta.wrap(tiny_classifier(), "tent", lr=20.0, production=True, checkpoint=path, checkpoint_every=1)
    batches = 0
    while not guard.events:  # type: ignore[union-attr]
        guard(torch.rand(16, 3, 16, 16) * 3)
        batches += 1
        assert batches < 50, "the stream did not collapse"
    return guard, batches  # type: ignore[return-value]


def test_guard_reset_rewrites_the_checkpoint_so_a_restart_goes_on_like_the_live_guard(tmp_path: Path) -> None:
    live, _ = _collapsing_guard(tmp_path / "state.pt")
    restarted = tta.wrap(tiny_classifier(), "tent", lr=20.0, production=True, resume=tmp_path / "state.pt")
    assert state_equal(clone_state(restarted), clone_state(live))  # the reset state, not the collapsed one
    x = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 3
    assert torch.equal(live(x), restarted(x))


def test_a_killed_writers_temporary_file_is_removed_when_checkpointing_starts(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    leftover = tmp_path / ".state.pt.k1ll3d.tmp"
    leftover.write_bytes(b"partial")
    unrelated = tmp_path / ".other.pt.abc.tmp"
    unrelated.write_bytes(b"someone else's")
    tta.wrap(tiny_classifier(), "tent", checkpoint=path, checkpoint_every=1)
    assert not leftover.exists() and unrelated.exists()
