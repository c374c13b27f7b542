"""The SQLite results store: round trip, resume keys, and clear errors before any work."""

from __future__ import annotations

import math
import sqlite3

import pytest

from prunekit.bench.store import (
    SCHEMA_VERSION,
    ResultsStore,
    ResultsStoreError,
    RunRecord,
    code_version,
    environment,
    run_key,
)


def test_round_trip(tmp_path):
    rec = RunRecord("exp", {"method": "magnitude", "sparsity": 0.9, "seed": 1, "nested": {"b": 1, "a": [1, 2]}},
                    kind="data", metrics={"accuracy": 0.75, "loss": float("nan")},
                    per_layer={"fc.weight": 0.9}, timings={"total_s": 2.5})
    with ResultsStore(tmp_path / "r.sqlite") as store:
        row_id = store.add(rec)
        assert store.has(rec.run_key) and not store.has("0" * 64)
        [run] = store.runs()
    assert run["id"] == row_id and run["kind"] == "data" and run["experiment"] == "exp"
    assert run["config"] == rec.config and run["per_layer"] == {"fc.weight": 0.9}
    assert run["metrics"]["accuracy"] == 0.75 and math.isnan(run["metrics"]["loss"])
    assert run["timings"] == {"total_s": 2.5} and run["run_key"] == rec.run_key
    assert run["environment"]["python"] and run["environment"]["cpu_count"] >= 1
    assert run["code_version"].startswith(code_version().split("+")[0]) and run["created_at"]


def test_reopen_keeps_runs_and_filters(tmp_path, make_run):
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        store.add(make_run("dense", 0.0, 0, 0.9, experiment="a"))
        store.add(make_run("dense", 0.0, 0, 0.8, experiment="b"))
    with ResultsStore(path) as store:
        assert len(store) == 2 and store.experiments() == ["a", "b"]
        assert [r["metrics"]["accuracy"] for r in store.runs("b")] == [0.8]
        assert store.runs(kind="llm") == []
        [row] = store.to_rows("a")
    assert row["method"] == "dense" and row["accuracy"] == 0.9 and row["total_s"] == 1.0
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_run_key_is_canonical_and_includes_seed():
    a = run_key("e", {"x": 1, "seed": 0, "m": {"b": 2, "a": 1}})
    assert a == run_key("e", {"m": {"a": 1, "b": 2}, "seed": 0, "x": 1})  # key order does not matter
    assert a != run_key("e", {"x": 1, "seed": 1, "m": {"b": 2, "a": 1}})
    assert a != run_key("other", {"x": 1, "seed": 0, "m": {"b": 2, "a": 1}})
    assert len(a) == 64 and int(a, 16) >= 0


def test_duplicate_run_is_an_error_unless_replaced(tmp_path, make_run):
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.add(make_run("m", 0.5, 0, 0.5))
        with pytest.raises(ValueError, match="stored already"):
            store.add(make_run("m", 0.5, 0, 0.6))
        store.add(make_run("m", 0.5, 0, 0.7), replace=True)
        assert len(store) == 1 and store.runs()[0]["metrics"]["accuracy"] == 0.7


def test_bad_records():
    with pytest.raises(ValueError, match="kind must be one of"):
        RunRecord("e", {}, kind="weights")
    with pytest.raises(ValueError, match="experiment"):
        RunRecord("", {})
    with pytest.raises(TypeError, match="JSON"):
        RunRecord("e", {"x": object()})
    with pytest.raises(TypeError, match="metrics must be a dict"):
        RunRecord("e", {}, metrics=[1])  # type: ignore[arg-type]


def test_read_only_file_fails_before_any_work(tmp_path, read_only, make_run):
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        store.add(make_run("dense", 0.0, 0, 0.9))
    before = path.read_bytes()
    read_only(path)
    with pytest.raises(ResultsStoreError, match="r.sqlite.*read-only"):
        ResultsStore(path)
    assert path.read_bytes() == before
    with ResultsStore(path, readonly=True) as store:  # reading it is still fine
        assert len(store.runs()) == 1


def test_read_only_folder_fails_and_creates_nothing(tmp_path, read_only):
    folder = tmp_path / "locked"
    folder.mkdir()
    read_only(folder)
    with pytest.raises(ResultsStoreError, match="locked.*read-only"):
        ResultsStore(folder / "new.sqlite")
    assert list(folder.iterdir()) == []


def test_corrupt_file_is_a_clear_error_and_left_alone(tmp_path):
    path = tmp_path / "garbage.sqlite"
    data = bytes(range(256)) * 20
    path.write_bytes(data)
    with pytest.raises(ResultsStoreError, match="garbage.sqlite.*not a usable prunekit results database"):
        ResultsStore(path)
    assert path.read_bytes() == data


def test_foreign_sqlite_and_newer_schema(tmp_path):
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).executescript("CREATE TABLE cats (name TEXT); INSERT INTO cats VALUES ('tom');")
    with pytest.raises(ResultsStoreError, match="not a prunekit results database.*cats"):
        ResultsStore(other)
    newer = tmp_path / "newer.sqlite"
    ResultsStore(newer).close()
    con = sqlite3.connect(newer)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(ResultsStoreError, match="schema version"):
        ResultsStore(newer)


def test_bad_paths(tmp_path):
    with pytest.raises(ResultsStoreError, match="is a folder"):
        ResultsStore(tmp_path)
    with pytest.raises(ResultsStoreError, match="does not exist"):
        ResultsStore(tmp_path / "missing" / "r.sqlite")
    with pytest.raises(ResultsStoreError, match="no results database"):
        ResultsStore(tmp_path / "absent.sqlite", readonly=True)
    with pytest.raises(TypeError, match="db must be a path"):
        ResultsStore(3)  # type: ignore[arg-type]
    assert not (tmp_path / "absent.sqlite").exists()


def test_environment_names_the_machine():
    env = environment()
    assert env["cpu_count"] >= 1 and env["torch_threads"] >= 1 and env["torch"].startswith("2.")
