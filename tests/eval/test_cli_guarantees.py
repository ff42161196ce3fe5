"""The ``tta`` command's guarantees about its files: the store is checked before any work, every error is one
line with exit 2 (130 when interrupted), ``--out`` and plots are written atomically, ``report`` never writes."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import eval.bench.work
import eval.commands.bench
from tta.files import write_text_atomically
from eval.cli import main
from eval.domains import Domain
from eval.results.records import CellKey, Record
from eval.results.store import ResultsStore

REPO = Path(__file__).resolve().parents[2]


def _bench(fmnist_dir: Path, checkpoint: Path, results: Path, *extra: str) -> list[str]:
    return ["bench", "--data-root", str(fmnist_dir), "--checkpoint", str(checkpoint), "--results", str(results),
            "--methods", "source", "--corruptions", "gaussian_noise", "--batch-size", "16", *extra]


def _one_line_error(capsys: pytest.CaptureFixture[str], prefix: str = "tta: error: ") -> str:
    """Return the error line, checking it is the only thing on stderr (no traceback) and nothing was printed."""
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(prefix) and captured.err.count("\n") == 1, captured.err
    return captured.err


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the units the benchmark runs (none must run when a check fails)."""
    calls: list[int] = []
    real = eval.bench.work.run_benchmark  # type: ignore[attr-defined]

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(eval.bench.work, "run_benchmark", counted)
    return calls


def _store(path: Path, records: int = 3) -> Path:
    """Write a results store with ``records`` cells."""
    with ResultsStore(path) as store:
        for i, corruption in enumerate(["gaussian_noise", "fog", "contrast", "snow", "frost"][:records]):
            key = CellKey.build("tent", {}, dataset="fmnist-c", model="m", protocol="episodic",
                                domain=Domain(corruption, 5), seed=0, batch_size=16)
            store.put(Record(key, error=0.1 * (i + 1), ece=0.05, n=48, seconds=1.0, created="2025-01-01T00:00:00"))
    return path


# --- 1. the store is checked before any work -------------------------------------------------------------------


def test_bench_refuses_a_read_only_store_file_before_any_work(fmnist_dir, checkpoint, tmp_path, capsys,  # type: ignore[no-untyped-def]
                                                             no_work) -> None:
    store = _store(tmp_path / "r.sqlite")
    store.chmod(0o444)
    try:
        with open(store, "r+b"):
            pytest.skip("this user writes read-only files (root); the fault test below covers the check")
    except PermissionError:
        pass
    assert main(_bench(fmnist_dir, checkpoint, store)) == 2
    assert "readonly" in _one_line_error(capsys) and no_work == []


def test_bench_refuses_a_store_it_cannot_write_before_any_work(fmnist_dir, checkpoint, tmp_path, capsys,  # type: ignore[no-untyped-def]
                                                              monkeypatch, no_work) -> None:
    store = _store(tmp_path / "r.sqlite")
    real_connect = sqlite3.connect

    def read_only(database: str, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        if not kwargs.get("uri"):  # what the OS gives for a file without write permission
            database, kwargs = f"file:{database}?mode=ro", {**kwargs, "uri": True}
        connection: sqlite3.Connection = real_connect(database, *args, **kwargs)
        return connection

    monkeypatch.setattr(sqlite3, "connect", read_only)
    assert main(_bench(fmnist_dir, checkpoint, store)) == 2
    line = _one_line_error(capsys)
    assert str(store) in line and "readonly" in line and no_work == []


def _damage_a_data_page(path: Path) -> None:
    """Overwrite the middle of the cells table's page with junk, keeping the file header intact."""
    page = 4096
    data = bytearray(path.read_bytes())
    assert len(data) >= 3 * page
    data[2 * page: 2 * page + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


def test_bench_refuses_a_damaged_store_before_any_work(fmnist_dir, checkpoint, tmp_path, capsys, no_work) -> None:  # type: ignore[no-untyped-def]
    store = _store(tmp_path / "r.sqlite")
    _damage_a_data_page(store)
    assert main(_bench(fmnist_dir, checkpoint, store)) == 2
    line = _one_line_error(capsys)
    assert str(store) in line and "damaged" in line and no_work == []
    assert main(["report", "--results", str(store)]) == 2
    assert "damaged" in _one_line_error(capsys)


# --- 2. one line, never a traceback -----------------------------------------------------------------------------


class _FullConnection(sqlite3.Connection):
    """A connection to a disk that is full: every statement that writes fails."""

    def executescript(self, script: str) -> sqlite3.Cursor:
        raise sqlite3.OperationalError("database or disk is full")

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if not sql.lstrip().upper().startswith(("SELECT", "PRAGMA")):
            raise sqlite3.OperationalError("database or disk is full")
        return super().execute(sql, *args)  # type: ignore[arg-type]


def _connect_raises(*args: object, **kwargs: object) -> sqlite3.Connection:
    raise sqlite3.OperationalError("database or disk is full")


def _mkdir_raises(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("fault", ["connect", "write", "mkdir"])
def test_bench_reports_a_full_disk_at_store_creation_in_one_line(fmnist_dir, checkpoint, tmp_path, capsys,  # type: ignore[no-untyped-def]
                                                                 monkeypatch, no_work, fault) -> None:
    real_connect = sqlite3.connect
    if fault == "connect":
        monkeypatch.setattr(sqlite3, "connect", _connect_raises)
    elif fault == "write":
        monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: real_connect(*a, factory=_FullConnection, **k))
    else:
        monkeypatch.setattr(Path, "mkdir", _mkdir_raises)
    store = tmp_path / "new" / "r.sqlite"
    assert main(_bench(fmnist_dir, checkpoint, store)) == 2
    line = _one_line_error(capsys)
    assert str(store) in line and ("full" in line or "No space" in line) and no_work == []


@pytest.mark.parametrize("seed", [str(2**70), str(2**63), "-1"])
def test_bench_refuses_a_seed_out_of_range_before_creating_the_store(fmnist_dir, checkpoint, tmp_path, capsys,  # type: ignore[no-untyped-def]
                                                                     seed) -> None:
    store = tmp_path / "r.sqlite"
    assert main(_bench(fmnist_dir, checkpoint, store, "--seed", seed)) == 2
    assert f"seed must be an integer in 0..{2**63 - 1}, got {seed}" in _one_line_error(capsys)
    assert not store.exists()


@pytest.mark.parametrize("flag", ["--results", "--out"])
def test_bench_refuses_a_file_name_too_long_before_any_work(fmnist_dir, checkpoint, tmp_path, capsys, flag) -> None:  # type: ignore[no-untyped-def]
    long = tmp_path / ("a" * 300 + ".json")
    args = _bench(fmnist_dir, checkpoint, tmp_path / "r.sqlite") + [flag, str(long)]
    assert main(args) == 2
    assert "name too long" in _one_line_error(capsys)
    assert not (tmp_path / "r.sqlite").exists()


def test_report_refuses_a_file_name_too_long(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["report", "--results", str(tmp_path / ("a" * 300 + ".sqlite"))]) == 2
    assert "name too long" in _one_line_error(capsys)


def test_interrupt_while_importing_torch_exits_130_in_one_line(tmp_path: Path) -> None:
    code = ("import sys\n"
            "class Interrupt:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch':\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Interrupt())\n"
            "from eval.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", code, "bench", "--results", str(tmp_path / "r.sqlite")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    assert done.stderr.startswith("tta: interrupted") and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "r.sqlite").exists()


def test_interrupt_while_building_the_spec_exits_130_in_one_line(fmnist_dir, checkpoint, tmp_path, capsys,  # type: ignore[no-untyped-def]
                                                                  monkeypatch) -> None:
    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(eval.commands.bench, "build_spec", interrupted)
    try:
        code = main(_bench(fmnist_dir, checkpoint, tmp_path / "r.sqlite"))
    except KeyboardInterrupt:
        code = None
    assert code == 130
    assert _one_line_error(capsys, prefix="tta: interrupted")
    assert not (tmp_path / "r.sqlite").exists()


@pytest.mark.parametrize(("column", "value"), [
    ("options", "not json"), ("options", "[1, 2]"), ("meta", "{broken"), ("error", "abc"), ("severity", 9),
    ("n", "many"),
])
def test_report_names_a_damaged_row_and_refuses(tmp_path, capsys, column, value) -> None:  # type: ignore[no-untyped-def]
    store = _store(tmp_path / "r.sqlite")
    with sqlite3.connect(store) as conn:
        conn.execute(f'UPDATE cells SET "{column}" = ? WHERE rowid = 2', (value,))
    conn.close()
    for fmt in ("md", "json", "csv"):
        assert main(["report", "--results", str(store), "--format", fmt]) == 2
        line = _one_line_error(capsys)
        assert f"{store}: row 2 of the cells table is damaged" in line and column in line


# --- 3. --out and plots are written atomically ------------------------------------------------------------------


def _failing_fsync(fd: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_bench_out_is_old_or_complete_never_partial(fmnist_dir, checkpoint, tmp_path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "table.json"
    out.write_text("old")
    monkeypatch.setattr(os, "fsync", _failing_fsync)  # the disk fills while the file is written
    assert main(_bench(fmnist_dir, checkpoint, tmp_path / "r.sqlite", "--out", str(out))) == 2
    assert str(out) in capsys.readouterr().err.splitlines()[-1]
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir() if "table" in p.name) == [
        "table.json"]
    monkeypatch.undo()
    assert main(_bench(fmnist_dir, checkpoint, tmp_path / "r.sqlite", "--out", str(out))) == 0
    assert out.read_text().startswith("{") and oct(out.stat().st_mode & 0o777) == "0o644"


def test_atomic_text_write_takes_the_longest_name_and_leaves_only_the_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / ("t" * 250 + ".json")
    write_text_atomically(path, "{}")
    write_text_atomically(path, '{"a": 1}')
    assert path.read_text() == '{"a": 1}' and [p.name for p in path.parent.iterdir()] == [path.name]


def test_report_plot_is_old_or_complete_never_partial(tmp_path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("matplotlib")
    store = _store(tmp_path / "r.sqlite")
    plot = tmp_path / "plot.png"
    plot.write_bytes(b"old")
    monkeypatch.setattr(os, "fsync", _failing_fsync)
    assert main(["report", "--results", str(store), "--plot", str(plot)]) == 2
    assert str(plot) in capsys.readouterr().err.splitlines()[-1]
    assert plot.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir() if "plot" in p.name] == ["plot.png"]


# --- 4. report never writes; every argument is checked before the store is created ------------------------------


@pytest.mark.parametrize("content", [b"", b"\0" * 100], ids=["empty", "zeros"])
def test_report_refuses_a_file_that_is_not_a_store_without_changing_it(tmp_path, capsys, content) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "r.sqlite"
    path.write_bytes(content)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert main(["report", "--results", str(path)]) == 2
    assert "is not a results database" in _one_line_error(capsys)
    assert path.read_bytes() == content and path.stat().st_mtime_ns == 1_000_000_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.sqlite"]


def test_report_reads_a_store_without_changing_it(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    store = _store(tmp_path / "r.sqlite")
    before = store.read_bytes()
    os.utime(store, ns=(1_000_000_000, 1_000_000_000))
    assert main(["report", "--results", str(store)]) == 0
    assert "| tent" in capsys.readouterr().out
    assert store.read_bytes() == before and store.stat().st_mtime_ns == 1_000_000_000


@pytest.mark.parametrize(("extra", "message"), [
    (["--limit", "0"], "limit must be >= 1 (or omitted for every image), got 0"),
    (["--limit", "-1"], "limit must be >= 1 (or omitted for every image), got -1"),
    (["--workers", "-1"], "data-loading workers must be >= 0, got -1"),
    (["--per-class", "0"], "images per class must be >= 1 (or omitted for all), got 0"),
])
def test_bench_refuses_out_of_range_counts_before_creating_the_store(fmnist_dir, checkpoint, tmp_path, capsys,  # type: ignore[no-untyped-def]
                                                                     extra, message) -> None:
    store = tmp_path / "r.sqlite"
    assert main(_bench(fmnist_dir, checkpoint, store, *extra)) == 2
    assert message in _one_line_error(capsys)
    assert not store.exists()
