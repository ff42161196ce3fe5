"""Tests for eval.results.tables: cell keys, the SQLite store and the table views."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from eval.domains import Domain
from eval.results.records import CellKey, Record, canonical_options
from eval.results.tables import Results
from eval.results.store import ResultsStore
from eval.bench.meters import CellStats


def _key(method: str = "tent", corruption: str = "gaussian_noise", severity: int = 5, *,
         options: dict[str, object] | None = None, limit: int | None = None, seed: int = 0) -> CellKey:
    return CellKey.build(method, options or {}, dataset="fmnist-c", model="fmnist_cnn-1a2b3c4d",
                         protocol="episodic", domain=Domain(corruption, severity), seed=seed,
                         batch_size=64, limit=limit)


def _record(key: CellKey, error: float, ece: float = 0.05) -> Record:
    return Record(key, error=error, ece=ece, n=100, seconds=1.5, created="2025-01-01T00:00:00+00:00")


def test_canonical_options_sorts_keys_without_spaces() -> None:
    assert canonical_options({"steps": 1, "lr": 1e-3}) == '{"lr":0.001,"steps":1}'
    assert canonical_options({}) == "{}"


def test_canonical_options_rejects_non_json_values() -> None:
    with pytest.raises(TypeError, match="plain JSON values"):
        canonical_options({"model": object()})


def test_cell_key_build_fills_every_field() -> None:
    key = _key(options={"lr": 0.01})
    assert key.options == '{"lr":0.01}'
    assert (key.corruption, key.severity, key.limit) == ("gaussian_noise", 5, None)
    assert key.domain == Domain("gaussian_noise", 5)


def test_cell_key_rejects_non_canonical_options() -> None:
    with pytest.raises(ValueError, match="canonical JSON"):
        CellKey("tent", '{"lr": 0.01}', "d", "m", "episodic", "fog", 5, 0, 64)


def test_cell_key_rejects_bad_severity() -> None:
    with pytest.raises(ValueError, match="severity must be in 1..5"):
        CellKey("tent", "{}", "d", "m", "episodic", "fog", 7, 0, 64)


def test_store_put_get_has_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "results.sqlite"
    record = _record(_key(limit=500), error=0.25)
    with ResultsStore(path) as store:
        assert not store.has(record.key)
        assert store.get(record.key) is None
        store.put(record)
        assert store.has(record.key)
        assert store.get(record.key) == record
    assert path.is_file()


def test_store_record_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    record = _record(_key(), error=0.4)
    with ResultsStore(path) as store:
        store.put(record)
    with ResultsStore(path) as store:
        assert store.get(record.key) == record


def test_store_put_is_visible_to_a_second_open_store(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    with ResultsStore(path) as writer, ResultsStore(path) as reader:
        writer.put(_record(_key(), error=0.4))
        assert reader.has(_key())


def test_store_put_is_upsert(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "results.sqlite") as store:
        store.put(_record(_key(), error=0.4))
        store.put(_record(_key("source"), error=0.9))
        store.put(_record(_key(), error=0.3))
        assert [(r.key.method, r.error) for r in store.records()] == [("tent", 0.3), ("source", 0.9)]


def test_store_distinguishes_limit_none_from_a_limit(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "results.sqlite") as store:
        store.put(_record(_key(limit=None), error=0.1))
        store.put(_record(_key(limit=None), error=0.2))
        store.put(_record(_key(limit=64), error=0.3))
        assert store.get(_key(limit=None)).error == 0.2  # type: ignore[union-attr]
        assert [r.error for r in store.records(limit=None)] == [0.2]
        assert [r.error for r in store.records(limit=64)] == [0.3]


def test_store_records_filters_on_key_fields(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "results.sqlite") as store:
        for method in ("source", "tent"):
            for corruption, severity in (("fog", 5), ("fog", 3), ("snow", 5)):
                store.put(_record(_key(method, corruption, severity), error=0.5))
        assert len(store.records()) == 6
        assert len(store.records(method="tent")) == 3
        found = store.records(method="tent", severity=5)
        assert [r.key.corruption for r in found] == ["fog", "snow"]
        assert store.records(dataset="imagenet-c") == []


def test_store_records_rejects_unknown_filter(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "results.sqlite") as store:
        with pytest.raises(ValueError, match=r"unknown record filters \['error'\]; valid filters are"):
            store.records(error=0.5)


def test_store_rejects_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are not results\n" * 100)
    with pytest.raises(ValueError, match=f"{path.name} is not a results database"):
        ResultsStore(path)


def test_store_rejects_foreign_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE people (name TEXT)")
    conn.close()
    with pytest.raises(ValueError, match=r"tables \['people'\], not a results database"):
        ResultsStore(path)


def test_store_closes_on_context_exit(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "results.sqlite") as store:
        pass
    with pytest.raises(sqlite3.ProgrammingError):
        store.records()


def test_store_put_rejects_non_record(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "results.sqlite") as store, pytest.raises(TypeError, match="expects a Record"):
        store.put(_key())  # type: ignore[arg-type]


def test_markdown_table_layout_with_missing_cell() -> None:
    results = Results([
        _record(_key("source", "gaussian_noise"), error=0.5),
        _record(_key("source", "shot_noise"), error=0.25),
        _record(_key("tent", "gaussian_noise"), error=0.1),
    ])
    assert results.to_markdown() == (
        "| method | gaussian_noise | shot_noise | mean |\n"
        "|:--|--:|--:|--:|\n"
        "| source | 50.0 | 25.0 | 37.5 |\n"
        "| tent | 10.0 | – | 10.0* |\n"
        "\n"
        "\\* mean over the present cells only.\n"
    )


def test_markdown_mixed_severities_label_columns_with_severity() -> None:
    results = Results([
        _record(_key("source", "clean", 0), error=0.1),
        _record(_key("source", "fog", 3), error=0.2),
        _record(_key("source", "fog", 5), error=0.3),
    ])
    assert results.to_markdown(percent=False).splitlines()[:3] == [
        "| method | clean | fog-3 | fog-5 | mean |",
        "|:--|--:|--:|--:|--:|",
        "| source | 0.1000 | 0.2000 | 0.3000 | 0.2500 |",  # the mean leaves clean out
    ]
    assert "clean is not included" in results.to_markdown()


def test_markdown_labels_runs_that_differ_in_options() -> None:
    results = Results([
        _record(_key("source"), error=0.5),
        _record(_key("tent", options={"lr": 0.001}), error=0.2, ece=0.02),
        _record(_key("tent", options={"lr": 0.01}), error=0.3, ece=0.03),
    ])
    assert results.to_markdown("ece").splitlines()[2:] == [
        "| source | 5.0 | 5.0 |",
        "| tent (lr=0.001) | 2.0 | 2.0 |",
        "| tent (lr=0.01) | 3.0 | 3.0 |",
    ]


def test_markdown_rejects_two_records_in_one_cell() -> None:
    results = Results([_record(_key(), error=0.5), _record(_key(), error=0.4)])
    with pytest.raises(ValueError, match="two records fill the table cell"):
        results.to_markdown()


def test_json_round_trip() -> None:
    results = Results([_record(_key(options={"lr": 0.001, "steps": 1}, limit=10), error=0.5),
                       _record(_key("source", "fog", 3), error=0.25)])
    restored = Results.from_json(results.to_json())
    assert isinstance(restored, Results)
    assert restored == results


def test_from_json_rejects_other_documents() -> None:
    with pytest.raises(ValueError, match="schema_version"):
        Results.from_json('{"rows": []}')


def test_csv_has_header_and_one_line_per_record() -> None:
    lines = Results([_record(_key(), error=0.5)]).to_csv().splitlines()
    assert lines[0] == ("method,options,dataset,model,protocol,corruption,severity,seed,batch_size,limit,"
                        "error,ece,n,seconds,created,nll,peak_memory_mb,meta")
    assert lines[1].startswith('tent,{},fmnist-c,fmnist_cnn-1a2b3c4d,episodic,gaussian_noise,5,0,64,,0.5,')
    assert len(lines) == 2


def test_record_from_dict_names_missing_fields() -> None:
    row = _record(_key(), error=0.5).to_dict()
    del row["ece"]
    with pytest.raises(ValueError, match=r"missing fields \['ece'\]"):
        Record.from_dict(row)


def _write_v1_store(path: Path, key: CellKey) -> None:
    """Write a results file exactly as schema version 1 laid it out, holding one cell."""
    conn = sqlite3.connect(path)
    with conn:
        conn.executescript("""
            CREATE TABLE schema_version (version INTEGER NOT NULL);
            INSERT INTO schema_version VALUES (1);
            CREATE TABLE cells (
                method TEXT NOT NULL, options TEXT NOT NULL, dataset TEXT NOT NULL, model TEXT NOT NULL,
                protocol TEXT NOT NULL, corruption TEXT NOT NULL, severity INTEGER NOT NULL,
                seed INTEGER NOT NULL, batch_size INTEGER NOT NULL, "limit" INTEGER NOT NULL,
                error REAL NOT NULL, ece REAL NOT NULL, n INTEGER NOT NULL, seconds REAL NOT NULL,
                created TEXT NOT NULL,
                PRIMARY KEY (method, options, dataset, model, protocol, corruption, severity, seed, batch_size, "limit"));
        """)
        conn.execute("INSERT INTO cells VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                     (key.method, key.options, key.dataset, key.model, key.protocol, key.corruption, key.severity,
                      key.seed, key.batch_size, -1, 0.25, 0.05, 100, 1.5, "2025-01-01T00:00:00+00:00"))
    conn.close()


def test_version_1_store_is_upgraded_in_place_and_keeps_its_cells(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    key = _key()
    _write_v1_store(path, key)
    with ResultsStore(path) as store:
        old = store.get(key)
        assert old is not None and old.error == 0.25 and old.nll is None and old.metadata == {}
        stats = CellStats(0.5, 0.1, 10, 2.0, nll=1.25, peak_memory_mb=300.0)
        store.put(Record.from_stats(_key(method="norm"), stats, {"library": "1.0", "device": "cpu"}))
    with ResultsStore(path) as store:  # reopening the upgraded file is a plain version-2 open
        new = store.get(_key(method="norm"))
        assert new is not None and new.nll == 1.25 and new.peak_memory_mb == 300.0
        assert new.metadata == {"device": "cpu", "library": "1.0"}
        assert len(store.records()) == 2


def test_json_round_trip_keeps_provenance_and_reads_version_1_documents() -> None:
    record = Record.from_stats(_key(), CellStats(0.5, 0.1, 10, 2.0, nll=0.7), {"torch": "2.x"})
    document = json.loads(Results([record]).to_json())
    assert document["records"][0]["meta"] == {"torch": "2.x"}
    assert Results.from_json(json.dumps(document)) == Results([record])
    v1_row = {k: v for k, v in document["records"][0].items() if k not in ("nll", "peak_memory_mb", "meta")}
    restored = Results.from_json(json.dumps({"schema_version": 1, "records": [v1_row]}))
    assert restored[0].error == 0.5 and restored[0].nll is None and restored[0].meta == "{}"


def test_images_per_second_is_n_over_seconds() -> None:
    assert _record(_key(), error=0.5).images_per_second == pytest.approx(100 / 1.5)


def test_markdown_shows_throughput_memory_and_nll_and_dashes_for_old_records() -> None:
    new = Record.from_stats(_key(), CellStats(0.5, 0.1, 300, 2.0, nll=0.75, peak_memory_mb=812.25))
    old = _record(_key(corruption="fog"), error=0.4)
    table = Results([new, old]).to_markdown("peak_memory_mb")
    assert "| tent | 812 | – | 812* |" in table
    assert "| tent | 150 |" in Results([new]).to_markdown("images_per_second")
    assert "| tent | 0.7500 |" in Results([new]).to_markdown("nll")
    with pytest.raises(ValueError, match="metric must be one of"):
        Results([new]).to_markdown("speed")  # type: ignore[arg-type]
