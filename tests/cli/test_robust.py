"""``prunekit robust backdoor | unlearn``: metrics.json keys, a results row; bad input -> exit 2, nothing written."""

from __future__ import annotations

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from prunekit.cli import app

runner = CliRunner()
BACKDOOR_KEYS = ("clean_acc_before", "clean_acc_after", "asr_before", "asr_after", "ra_after")
UNLEARN_KEYS = ("forget_acc", "retain_acc", "test_acc", "mia_efficacy", "gap_to_retrain", "seconds")


def _rows(db) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT experiment, metrics FROM runs").fetchall()


def test_backdoor_writes_metrics_and_a_store_row(tmp_path):
    out = tmp_path / "b"
    r = runner.invoke(app, ["robust", "backdoor", "--dataset", "digits", "--attack", "blended", "--poison", "0.1",
                            "--target", "1", "--defense", "fmp", "--prune-by", "remove", "--epochs", "3",
                            "--finetune-epochs", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert all(0.0 <= m[k] <= 1.0 for k in BACKDOOR_KEYS), m
    assert m["poisoned_examples"] == round(0.1 * 1347) and m["clean_examples"] == round(0.05 * 1347)
    rep = m["defense_report"]
    assert rep["params_after"] < rep["params_before"] and set(rep["pruned"]) == {"conv1", "conv2"}
    (experiment, metrics), = _rows(out / "prunekit-results.sqlite")
    assert experiment == "robust-backdoor" and json.loads(metrics)["asr_after"] == m["asr_after"]


def test_unlearn_writes_metrics_and_a_store_row(tmp_path):
    out, db = tmp_path / "u", tmp_path / "runs.sqlite"
    r = runner.invoke(app, ["robust", "unlearn", "--dataset", "digits", "--forget", "class:3", "--method",
                            "l1-sparse", "--sparsity", "0.5", "--epochs", "2", "--unlearn-epochs", "1",
                            "--recover-epochs", "1", "--out", str(out), "--db", str(db)])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert all(k in m for k in UNLEARN_KEYS) and m["forget_examples"] == 137
    assert all(0.0 <= m[k] <= 1.0 for k in UNLEARN_KEYS[:5]) and m["seconds"] > 0
    assert m["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert [e for e, _ in _rows(db)] == ["robust-unlearn"]


@pytest.mark.parametrize("args,message", [
    (["backdoor", "--poison", "1.2"], "--poison"),
    (["backdoor", "--poison", "0"], "--poison"),
    (["backdoor", "--target", "10"], "--target"),
    (["backdoor", "--dataset", "digits", "--clean-fraction", "0.005"], "one example of each"),
    (["backdoor", "--defense", "nad"], "--defense"),
    (["backdoor", "--dataset", "digits", "--model", "cnn1d"], "takes inputs of shape"),
    (["backdoor", "--dataset", "digits", "--width", "32"], "--width"),
    (["backdoor", "--fmp-max-drop", "1.5"], "--fmp-max-drop"),
    (["backdoor", "--holdout", "0", "--early-stop"], "--holdout"),
    (["backdoor", "--fmp-rule", "global"], "--fmp-rule"),
    (["unlearn", "--forget", "class:10"], "--forget"),
    (["unlearn", "--forget", "random:1"], "--forget"),
    (["unlearn", "--sparsity", "1.0"], "--sparsity"),
])
def test_bad_input_exits_2_before_training_and_writes_nothing(tmp_path, args, message, monkeypatch):
    import prunekit.training.loop as loop

    def no_training(*a, **k):
        raise AssertionError("training started before the input was checked")

    monkeypatch.setattr(loop, "fit", no_training)
    out = tmp_path / "o"
    r = runner.invoke(app, ["robust", *args, "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert not out.exists()
