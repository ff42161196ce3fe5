"""``--option cotta.augment=...`` cannot carry a function: the ``tta`` command refuses it with one line, exit 2."""

from __future__ import annotations

import pytest

from eval.cli import main


@pytest.mark.parametrize("value", ["flip", "1", '{"a": 1}'])
def test_bench_refuses_a_cotta_augment_given_as_text(fmnist_dir, checkpoint, tmp_path, capsys, value) -> None:  # type: ignore[no-untyped-def]
    results = tmp_path / "r.sqlite"
    args = ["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint), "--results", str(results),
            "--methods", "cotta", "--corruptions", "gaussian_noise", "--batch-size", "16",
            "--option", f"cotta.augment={value}"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("tta: error: ") and captured.err.count("\n") == 1, captured.err
    assert "augment must be a callable" in captured.err and "cannot be given as text" in captured.err
    assert not results.exists()
