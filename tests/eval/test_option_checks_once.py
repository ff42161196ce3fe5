"""One ``tta bench`` call resolves its settings once: each option value checked once, suite defaults merged once,
the protocol looked up once, however many units build an adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import eval.protocols.registry
import tta.checks
from eval.bench.spec import resolve_protocol
from eval.cli import main
from eval.models.suites import Suite


def _bench(fmnist_dir: Path, checkpoint: Path, tmp_path: Path, *extra: str) -> int:
    return main(["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint),
                 "--results", str(tmp_path / "r.sqlite"), "--methods", "tent", "--corruptions",
                 "gaussian_noise,contrast", "--batch-size", "16", "--limit", "16", *extra])


def test_one_bench_call_checks_tent_lr_once(fmnist_dir: Path, checkpoint: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[object] = []
    real = tta.checks.check_real

    def spy(name: str, value: object, **bounds: Any) -> None:
        if name == "lr":
            checked.append(value)
        real(name, value, **bounds)

    monkeypatch.setattr(tta.checks, "check_real", spy)  # check_positive and the other number checks call it
    assert _bench(fmnist_dir, checkpoint, tmp_path, "--option", "tent.lr=0.002") == 0  # two units, two adapters
    assert checked == [0.002]


def test_one_bench_call_merges_suite_defaults_and_resolves_the_protocol_once(
    fmnist_dir: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    merged: list[str] = []
    real_defaults = Suite.method_defaults

    def defaults(suite: Suite, method: str) -> dict[str, object]:
        merged.append(method)
        return real_defaults(suite, method)

    protocols = dict(eval.protocols.registry._PROTOCOLS)
    built: list[str] = []

    def counted(name: str) -> Any:
        def factory(**kwargs: Any) -> Any:
            built.append(name)
            return protocols[name](**kwargs)
        return factory

    monkeypatch.setattr(Suite, "method_defaults", defaults)
    monkeypatch.setattr(eval.protocols.registry, "_PROTOCOLS", {name: counted(name) for name in protocols})
    resolve_protocol.cache_clear()  # resolved once per process: count this call's resolution
    assert _bench(fmnist_dir, checkpoint, tmp_path, "--protocol", "continual") == 0
    assert merged == ["tent"]
    assert built == ["continual"]


def test_an_unknown_option_is_refused_once_before_any_work(fmnist_dir: Path, checkpoint: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert _bench(fmnist_dir, checkpoint, tmp_path, "--option", "tent.learning_rate=1") == 2
    err = capsys.readouterr().err
    assert "tent has no option 'learning_rate'" in err and err.count("no option") == 1
    assert not (tmp_path / "r.sqlite").exists()
