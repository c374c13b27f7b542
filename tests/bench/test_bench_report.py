"""Reports: hand-checked summary statistics, the files written, and errors before any output."""

from __future__ import annotations

import math

import pytest

from prunekit.bench.report import format_summary, pick_layer_runs, summarize, write_report
from prunekit.bench.store import ResultsStore, ResultsStoreError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_summarize_by_hand(filled_db):
    with ResultsStore(filled_db, readonly=True) as store:
        cells = {(c.method, c.x): c for c in summarize(store.runs())}
    assert set(cells) == {("dense", 0.0), ("magnitude", 0.5), ("magnitude", 0.9)}
    c = cells[("magnitude", 0.9)]  # accuracies 0.60 and 0.70
    assert c.n == 2 and c.mean == pytest.approx(0.65) and (c.lo, c.hi) == (0.60, 0.70)
    assert c.std == pytest.approx(math.sqrt(2 * 0.05**2))  # sample std: sqrt(sum sq. dev. / (n - 1))
    assert cells[("dense", 0.0)].mean == pytest.approx(0.91)


def test_summary_table_text(filled_db):
    with ResultsStore(filled_db, readonly=True) as store:
        text = format_summary(summarize(store.runs()))
    lines = text.splitlines()
    assert "| method \\ sparsity | 0 | 0.5 | 0.9 |" in lines
    assert "| dense | 91.00 ± 1.41 (n=2) |  |  |" in lines  # (90, 92)
    assert "| magnitude |  | 82.00 ± 2.83 (n=2) | 65.00 ± 7.07 (n=2) |" in lines  # (80, 84), (60, 70)


def test_layer_runs_pick_the_highest_sparsity(filled_db):
    with ResultsStore(filled_db, readonly=True) as store:
        chosen = pick_layer_runs(store.runs())
    assert list(chosen) == ["magnitude"]  # dense has no bars
    run = chosen["magnitude"]
    assert run["config"]["sparsity"] == 0.9 and run["config"]["seed"] == 0
    assert run["per_layer"] == {"fc1.weight": 0.95, "fc2.weight": 0.5}


def test_write_report_files(filled_db, tmp_path):
    out = tmp_path / "report"
    paths = write_report(filled_db, out, experiment="exp")
    assert paths["html"] == out / "index.html" and paths["markdown"] == out / "summary.md"
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["accuracy_vs_sparsity_exp_mlp.png", "layer_sparsity_exp_mlp.png"]
    for name in pngs:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    page = paths["html"].read_text()
    assert page.startswith("<!doctype html>") and '<img src="accuracy_vs_sparsity_exp_mlp.png"' in page
    assert "65.00 ± 7.07 (n=2)" in page and page.count("<tr>") >= 6 + 3  # 6 runs + header rows
    md = paths["markdown"].read_text()
    assert "![accuracy vs sparsity: exp / mlp](accuracy_vs_sparsity_exp_mlp.png)" in md and "6 runs" in md
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_generic_axis_for_data_runs(tmp_path):
    db = tmp_path / "d.sqlite"
    with ResultsStore(db) as store:
        for seed, acc in enumerate([0.7, 0.8]):
            store.add({"experiment": "dp", "kind": "data", "metrics": {"accuracy": acc},
                       "config": {"model": "mlp", "method": "el2n", "keep_fraction": 0.5, "seed": seed}})
    paths = write_report(db, tmp_path / "out", x="keep_fraction")
    assert "| method \\ keep_fraction | 0.5 |" in paths["markdown"].read_text()
    assert paths["accuracy_vs_keep_fraction_dp_mlp"].read_bytes().startswith(PNG_MAGIC)


def test_errors_before_any_output(filled_db, tmp_path, read_only):
    with pytest.raises(ValueError, match=r"experiment 'nope' is not in .*stored: 'exp'"):
        write_report(filled_db, tmp_path / "a", experiment="nope")
    assert not (tmp_path / "a").exists()
    with pytest.raises(ResultsStoreError, match="no results database"):
        write_report(tmp_path / "missing.sqlite", tmp_path / "b")
    empty = tmp_path / "empty.sqlite"
    ResultsStore(empty).close()
    with pytest.raises(ResultsStoreError, match="holds no runs"):
        write_report(empty, tmp_path / "c")
    with pytest.raises(ValueError, match="no run has both 'sparsity'.*metric 'perplexity'; keys seen: .*accuracy"):
        write_report(filled_db, tmp_path / "d", y="perplexity")
    assert not (tmp_path / "d").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        write_report(filled_db, tmp_path / "file")
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(locked)
    with pytest.raises(ValueError, match="cannot be written"):
        write_report(filled_db, locked / "report")
    assert list(locked.iterdir()) == []


def test_report_of_a_read_only_database(filled_db, tmp_path, read_only):
    read_only(filled_db)
    paths = write_report(filled_db, tmp_path / "out")
    assert paths["markdown"].stat().st_size > 100
