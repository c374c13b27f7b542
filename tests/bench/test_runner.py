"""Sweep configs are checked whole before any work; sweeps store every run and resume."""

from __future__ import annotations

import json

import pytest

from prunekit.bench import runner
from prunekit.bench.runner import plan_runs, run_sweep, validate_config
from prunekit.bench.store import ResultsStore, ResultsStoreError


@pytest.fixture
def fit_calls(monkeypatch):
    """Counts every training run the sweep starts (dense, fine-tune, gradual)."""
    calls: list[dict] = []
    real = runner._fit

    def counting(model, data, train, seed, device, callbacks=()):
        calls.append(dict(train))
        return real(model, data, train, seed, device, callbacks)

    monkeypatch.setattr(runner, "_fit", counting)
    return calls


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, r"unknown keys \['colour'\]; accepted: experiment"),
        ({"experiment": ""}, "experiment must be a non-empty string"),
        ({"sparsities": [0.5, 1.0]}, r"sparsities\[1\] must be in \[0, 1\)"),
        ({"sparsities": [0.0]}, r"sparsities\[0\] must be in \(0, 1\)"),
        ({"sparsities": [0.5, 0.5]}, "duplicates"),
        ({"sparsities": []}, "non-empty list"),
        ({"seeds": [0, -1]}, r"seeds\[1\] must be an integer >= 0"),
        ({"model": "alexnet"}, "model must be one of .*'cnn1d'"),
        ({"model": {"name": "mlp", "depth": 3}}, "model 'mlp'.*accepted arguments: in_features"),
        ({"dataset": {"name": "imagenet"}}, "dataset.name must be one of .*'mnist1d'"),
        ({"methods": [{"type": "snipp"}]}, r"methods\[0\].type must be one of .*'gradual_magnitude'.*'magnitude'"),
        ({"methods": [{"type": "magnitude", "scop": "global"}]}, "unknown fields .*scop.*accepted"),
        ({"methods": [{"type": "magnitude", "scope": "everywhere"}]}, "scope must be one of"),
        ({"methods": [{"type": "magnitude", "finetune": {"epochs": 0}}]}, r"finetune.epochs must be an integer >= 1"),
        ({"methods": [{"type": "magnitude", "finetune": {"epoch": 3}}]}, r"finetune: unknown keys \['epoch'\]"),
        ({"methods": [{"type": "gradual_magnitude", "start": "middle"}]}, "start must be one of 'scratch', 'dense'"),
        ({"methods": [{"type": "magnitude"}, {"type": "magnitude"}]}, "method names must be unique"),
        ({"methods": [{"type": "magnitude", "name": "dense"}]}, "other than 'dense'"),
        ({"dense": {"lr": -1}}, r"dense.lr must be a number in \(0.0, inf\)"),
        ({"dense": {"optimizer": "lion"}}, "dense.optimizer must be one of 'sgd', 'adamw', 'adam'"),
        ({"device": "toaster"}, "device must be a torch device"),
        ({"threads": 0}, "threads must be an integer >= 1"),
    ],
)
def test_config_errors_name_the_key_and_accepted_values(make_sweep, change, message):
    with pytest.raises(ValueError, match=message):
        validate_config(make_sweep(**change))


def test_missing_keys_are_listed(make_sweep):
    cfg = make_sweep()
    del cfg["methods"], cfg["model"]
    with pytest.raises(ValueError, match=r"misses the keys \['model', 'methods'\]"):
        validate_config(cfg)


def test_config_files_json_and_yaml_agree(tmp_path, sweep_config):
    import yaml

    (tmp_path / "s.json").write_text(json.dumps(sweep_config))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep_config))
    keys_json = [r.key for r in plan_runs(validate_config(tmp_path / "s.json"))]
    keys_yaml = [r.key for r in plan_runs(validate_config(tmp_path / "s.yaml"))]
    assert keys_json == keys_yaml and len(set(keys_json)) == len(keys_json)
    (tmp_path / "s.toml").write_text("")
    with pytest.raises(ValueError, match=r"\.json, \.yaml or \.yml"):
        validate_config(tmp_path / "s.toml")
    with pytest.raises(ValueError, match="does not exist"):
        validate_config(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match="bad.json.*could not be parsed"):
        validate_config(tmp_path / "bad.json")


def test_plan_counts_and_labels(make_sweep):
    sweep = validate_config(make_sweep(seeds=[0, 1]))
    plan = plan_runs(sweep)
    assert len(plan) == 2 * (1 + 3 * 2)  # seeds x (dense + methods x sparsities)
    labels = [m.label for m in sweep.methods]
    assert labels == ["magnitude-global+ft", "magnitude-global", "gradual_magnitude-global"]
    dense = [r for r in plan if r.method is None]
    assert [r.config["sparsity"] for r in dense] == [0.0, 0.0] and [r.seed for r in dense] == [0, 1]
    ft = plan[1].config
    assert ft["finetune"]["epochs"] == 1 and ft["finetune"]["lr"] == 0.05  # dense recipe under the override
    assert ft["method_config"]["scope"] == "global" and ft["method_config"]["type"] == "magnitude"
    gradual = [r for r in plan if r.method is not None and r.method.gradual][0].config
    assert gradual["train"]["epochs"] == 2 and "dense" not in gradual  # from scratch: independent of dense


def test_read_only_db_fails_before_training(tmp_path, sweep_config, read_only, fit_calls):
    db = tmp_path / "r.sqlite"
    ResultsStore(db).close()
    read_only(db)
    with pytest.raises(ResultsStoreError, match="read-only"):
        run_sweep(sweep_config, db)
    assert fit_calls == []


def test_bad_config_fails_before_the_db_is_created(tmp_path, make_sweep, fit_calls):
    with pytest.raises(ValueError, match="sparsities"):
        run_sweep(make_sweep(sparsities=[2]), tmp_path / "r.sqlite")
    assert not (tmp_path / "r.sqlite").exists() and fit_calls == []


def test_tiny_sweep_end_to_end_and_resume(tmp_path, sweep_config, fit_calls):
    db = tmp_path / "r.sqlite"
    result = run_sweep(sweep_config, db)
    assert len(result.ran) == 7 and result.skipped == []
    assert len(fit_calls) == 1 + 2 + 2  # dense once, fine-tune at 2 sparsities, gradual at 2
    with ResultsStore(db) as store:
        runs = {(r["config"]["method"], r["config"]["sparsity"]): r for r in store.runs("tiny")}
    assert len(runs) == 7
    dense = runs[("dense", 0.0)]
    assert dense["metrics"]["sparsity"] == 0.0 and 0.0 < dense["metrics"]["accuracy"] <= 1.0
    for method in ("magnitude-global+ft", "magnitude-global", "gradual_magnitude-global"):
        for s in (0.5, 0.9):
            m = runs[(method, s)]["metrics"]
            assert m["sparsity"] == pytest.approx(s, abs=1e-3), (method, s)  # exact zeros, kept through training
            assert m["nonzeros"] < dense["metrics"]["nonzeros"]
            assert set(runs[(method, s)]["per_layer"]) == {"features.0.weight", "head.weight"}
    # same dense weights, same pruning: the fine-tuned run started from the no-fine-tune run's accuracy
    for s in (0.5, 0.9):
        ft = runs[("magnitude-global+ft", s)]["metrics"]
        assert ft["accuracy_before_finetune"] == runs[("magnitude-global", s)]["metrics"]["accuracy"]
        assert ft["dense_accuracy"] == dense["metrics"]["accuracy"]
        assert runs[("magnitude-global+ft", s)]["timings"]["finetune_s"] > 0
    again = run_sweep(sweep_config, db)
    assert again.ran == [] and len(again.skipped) == 7 and len(fit_calls) == 5  # nothing retrained


def test_interrupted_sweep_resumes_where_it_stopped(tmp_path, sweep_config, monkeypatch):
    db = tmp_path / "r.sqlite"
    real, done = runner.execute, []

    def dies_after_three(ctx, run):
        if len(done) == 3:
            raise KeyboardInterrupt
        done.append(run.key)
        return real(ctx, run)

    monkeypatch.setattr(runner, "execute", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep_config, db)
    monkeypatch.setattr(runner, "execute", real)
    with ResultsStore(db) as store:
        assert len(store) == 3
    result = run_sweep(sweep_config, db)
    assert result.skipped == done and len(result.ran) == 4


def test_new_sparsity_runs_only_the_new_runs(tmp_path, make_sweep, fit_calls):
    db = tmp_path / "r.sqlite"
    run_sweep(make_sweep(sparsities=[0.5], methods=[{"type": "magnitude", "scope": "global"}]), db)
    result = run_sweep(make_sweep(sparsities=[0.5, 0.8], methods=[{"type": "magnitude", "scope": "global"}]), db)
    assert len(result.skipped) == 2 and len(result.ran) == 1
    assert len(fit_calls) == 2  # the dense model was retrained (same seed) for the new one-shot run


def test_gradual_movement_in_a_sweep(tmp_path, make_sweep):
    cfg = make_sweep(methods=[{"type": "gradual_movement", "scope": "global", "epochs": 2}], sparsities=[0.8])
    plan = plan_runs(validate_config(cfg))
    mc = plan[1].config["method_config"]
    assert mc["type"] == "gradual_movement" and mc["final_sparsity"] == 0.8 and mc["scope"] == "global"
    run_sweep(cfg, tmp_path / "r.sqlite")
    with ResultsStore(tmp_path / "r.sqlite") as store:
        runs = {r["config"]["method"]: r for r in store.runs("tiny")}
    assert runs["gradual_movement-global"]["metrics"]["sparsity"] == pytest.approx(0.8, abs=1e-3)
