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


def test_remove_blocks_auto_from_both_command_lines(tmp_path):
    from prunekit.cli import app as main_app

    res = runner.invoke(app, ["prune", "resnet20", "--out", str(tmp_path / "a"), "--target-macs", "0.5",
                              "--remove-blocks", "auto", "--json"])
    assert res.exit_code == 0, res.output
    plan = Plan.load(tmp_path / "a" / "plan.json")
    # resnet20: 3 stacks of 3 blocks, equal MACs per stage; half the MACs takes about 4 blocks
    assert sum(3 - len(k) for k in plan.blocks.values()) >= 3 and json.loads(res.output)["macs_after"] <= \
        0.5 * json.loads(res.output)["macs_before"]
    res = runner.invoke(main_app, ["prune", "resnet20", "--out", str(tmp_path / "b"), "--structured",
                                   "--target-macs", "0.5", "--remove-blocks", "auto", "--round-to", "4"])
    assert res.exit_code == 0, res.output
    assert Plan.load(tmp_path / "b" / "plan.json").config["remove_blocks"] == "auto"
    res = runner.invoke(main_app, ["prune", "resnet20", "--out", str(tmp_path / "c"), "--structured",
                                   "--target-macs", "0.5", "--remove-blocks", "deep"])
    assert res.exit_code == 2 and "--remove-blocks must be a fraction in [0, 1) or 'auto'" in res.output
    assert not (tmp_path / "c").exists()
