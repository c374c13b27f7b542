"""``prunekit bench / report / demo`` through typer, and the demo job at smoke size."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from prunekit.bench import demo as demo_mod
from prunekit.bench.demo import demo_config, parse_seeds, run_demo
from prunekit.bench.runner import plan_runs, validate_config
from prunekit.bench.store import ResultsStore
from prunekit.cli import app

cli = CliRunner()


def test_bench_then_resume_then_report(tmp_path, make_sweep):
    cfg = tmp_path / "sweep.json"
    cfg.write_text(json.dumps(make_sweep(methods=[{"type": "magnitude", "scope": "global"}], sparsities=[0.5])))
    db = tmp_path / "r.sqlite"
    first = cli.invoke(app, ["bench", str(cfg), "--db", str(db)])
    assert first.exit_code == 0, first.output
    assert "2 runs done, 0 found stored" in first.output and "| magnitude-global |" in first.output
    second = cli.invoke(app, ["bench", str(cfg), "--db", str(db), "--report", str(tmp_path / "rep")])
    assert second.exit_code == 0 and "0 runs done, 2 found stored" in second.output
    assert (tmp_path / "rep" / "index.html").stat().st_size > 0
    rep = cli.invoke(app, ["report", "--db", str(db), "--out", str(tmp_path / "rep2"), "-e", "tiny"])
    assert rep.exit_code == 0 and (tmp_path / "rep2" / "summary.md").read_text() in rep.output
    again = cli.invoke(app, ["report", "--db", str(db), "--out", str(tmp_path / "rep2")])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_bench_store_goes_into_out_never_the_current_folder(tmp_path, make_sweep, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "sweep.json"
    cfg.write_text(json.dumps(make_sweep(methods=[{"type": "magnitude", "scope": "global"}], sparsities=[0.5])))
    r = cli.invoke(app, ["bench", str(cfg)])
    assert r.exit_code == 2 and "--db" in r.output and "--out" in r.output
    r = cli.invoke(app, ["bench", str(cfg), "--out", str(tmp_path / "sweep-out")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "sweep-out" / "prunekit-results.sqlite").is_file()
    assert (tmp_path / "sweep-out" / "index.html").is_file() and not (tmp_path / "prunekit-results.sqlite").exists()
    r = cli.invoke(app, ["bench", str(cfg), "--out", str(tmp_path / "sweep-out")])  # an earlier sweep: resumed
    assert r.exit_code == 0 and "0 runs done, 2 found stored" in r.output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    r = cli.invoke(app, ["bench", str(cfg), "--out", str(tmp_path / "other")])
    assert r.exit_code == 2 and [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]


def test_cli_errors_exit_2_and_name_the_problem(tmp_path, make_sweep, read_only):
    cfg = tmp_path / "sweep.json"
    cfg.write_text(json.dumps(make_sweep(sparsities=[1.5])))
    bad = cli.invoke(app, ["bench", str(cfg), "--db", str(tmp_path / "r.sqlite")])
    assert bad.exit_code == 2 and "sparsities[0] must be in [0, 1)" in bad.output
    db = tmp_path / "ro.sqlite"
    ResultsStore(db).close()
    read_only(db)
    cfg.write_text(json.dumps(make_sweep()))
    ro = cli.invoke(app, ["bench", str(cfg), "--db", str(db)])
    assert ro.exit_code == 2 and "ro.sqlite" in ro.output and "read-only" in ro.output
    ro_demo = cli.invoke(app, ["demo", "--db", str(db), "--out", str(tmp_path / "demo-out")])
    assert ro_demo.exit_code == 2 and "read-only" in ro_demo.output and not (tmp_path / "demo-out").exists()
    missing = cli.invoke(app, ["report", "--db", str(tmp_path / "none.sqlite"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "no results database" in missing.output
    seeds = cli.invoke(app, ["demo", "--seeds", "a,b", "--out", str(tmp_path / "d")])
    assert seeds.exit_code == 2 and "seeds" in seeds.output and not (tmp_path / "d").exists()


def test_parse_seeds():
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("1") == [0] and parse_seeds(2) == [0, 1]
    assert parse_seeds("0,5") == [0, 5] and parse_seeds([4]) == [4]
    for bad in ("", "x", 0, [-1], True):
        with pytest.raises(ValueError, match="seeds"):
            parse_seeds(bad)


def test_demo_config_is_the_documented_job():
    sweep = validate_config(demo_config(seeds=[0, 1, 2]))
    assert [m.name for m in sweep.models] == ["cnn1d"] and sweep.dataset == {"name": "mnist1d"}
    assert sweep.sparsities == [0.5, 0.8, 0.9, 0.95] and sweep.seeds == [0, 1, 2]
    plan = plan_runs(sweep)
    assert len(plan) == 3 * (1 + 3 * 4)
    gradual = [r for r in plan if r.method is not None and r.method.gradual][0].config
    dense = plan[0].config["dense"]
    assert gradual["train"]["epochs"] == dense["epochs"]  # same total epochs as dense, from scratch
    assert gradual["method_config"]["scope"] == "global"
    finetuned = [r.method.train for r in plan if r.method is not None and not r.method.gradual]
    assert finetuned[0] is not None and None in finetuned  # with and without fine-tuning


def test_demo_smoke(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_mod, "SPARSITIES", [0.9])
    monkeypatch.setattr(demo_mod, "QUICK_EPOCHS", {"dense": 1, "finetune": 1})
    res = run_demo(tmp_path / "out", quick=True)
    assert res.db == tmp_path / "out" / "prunekit-results.sqlite" and len(res.sweep.ran) == 4
    assert res.paths["html"].exists() and res.paths["layer_sparsity_demo-quick_cnn1d-channels-64"].exists()
    assert "| one-shot-magnitude+finetune |" in res.summary and "| gradual-magnitude |" in res.summary
    again = cli.invoke(app, ["demo", "--quick", "--out", str(tmp_path / "out")])
    assert again.exit_code == 0, again.output
    assert "0 runs, 4 found stored" in again.output and "index.html" in again.output
