"""The structured typer app: prune a zoo model, list groups, clear errors."""

import json

from typer.testing import CliRunner

from prunekit.structured.cli import app, prune_structured
from prunekit.structured.plan import Plan

runner = CliRunner()


def test_prune_writes_plan_and_weights_and_reports_before_after(tmp_path):
    res = runner.invoke(app, ["prune", "lenet5", "--out", str(tmp_path), "--target-macs", "0.5", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["macs_after"] <= 0.5 * rep["macs_before"] and rep["latency_ms_after"] > 0
    plan = Plan.load(tmp_path / "plan.json")
    assert plan.source == {"zoo": "lenet5", "kwargs": {}} and (tmp_path / "model.safetensors").is_file()


def test_prune_structured_function_for_the_main_cli(tmp_path):
    rep = prune_structured("mlp", out=tmp_path, target_params=0.5, importance="bn", latency=False)
    assert rep["params_after"] <= 0.5 * rep["params_before"]


def test_groups_and_errors(tmp_path):
    res = runner.invoke(app, ["groups", "cnn1d"])
    assert res.exit_code == 0 and "channel" in res.output
    res = runner.invoke(app, ["prune", "lenet5", "--out", str(tmp_path), "--target-macs", "0.5", "--ignore", "nope"])
    assert res.exit_code == 2 and "no module named 'nope'" in res.output
    res = runner.invoke(app, ["prune", "not-a-model", "--out", str(tmp_path), "--target-macs", "0.5"])
    assert res.exit_code == 2 and "neither a zoo model" in res.output
