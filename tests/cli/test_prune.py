"""``prunekit prune`` (masks, --structured, calibrated: see test_llm.py), ``inspect``, ``structured groups``."""

import json

import pytest
from typer.testing import CliRunner

from prunekit.cli import app
from prunekit.cli.prune import path_of, prune_structured
from prunekit.structured.plan import Plan

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("small_data")


@pytest.fixture
def dense_ckpt(tmp_path):
    out = tmp_path / "dense"
    res = runner.invoke(app, ["train", "cnn1d", "--out", str(out), "--epochs", "1"])
    assert res.exit_code == 0, res.output
    return out


def test_prune_writes_weights_masks_manifest(dense_ckpt, tmp_path):
    out = tmp_path / "p"
    res = runner.invoke(app, ["prune", str(dense_ckpt), "--out", str(out), "--sparsity", "0.8", "--scope", "global"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"]["type"] == "magnitude" and manifest["has_masks"]
    assert abs(manifest["report"]["sparsity"] - 0.8) < 1e-3
    res = runner.invoke(app, ["inspect", str(out)])
    assert res.exit_code == 0 and "total" in res.output and "sparse_macs" in res.output


def test_prune_finetune_uses_the_recipe_lr_or_finetune_lr(dense_ckpt, tmp_path, monkeypatch):
    import prunekit.training

    seen = []
    real = prunekit.training.fit
    monkeypatch.setattr(prunekit.training, "fit", lambda *a, **k: seen.append(k["lr"]) or real(*a, **k))
    for extra, lr in (([], 0.1), (["--finetune-lr", "0.003"], 0.003)):  # cnn1d's recipe: lr 0.1
        out = tmp_path / f"ft{lr}"
        res = runner.invoke(app, ["prune", str(dense_ckpt), "--out", str(out), "--sparsity", "0.5",
                                  "--finetune-epochs", "1", *extra])
        assert res.exit_code == 0, res.output
        assert "accuracy_finetuned" in json.loads((out / "manifest.json").read_text())["metrics"]
    assert seen == [0.1, 0.003]


def test_prune_nm_from_zoo_name(tmp_path):
    res = runner.invoke(app, ["prune", "mlp", "--out", str(tmp_path / "nm"), "--pattern", "2:4"])
    assert res.exit_code == 0, res.output
    assert "sparsity (pruned weights) 0.5000" in res.output


@pytest.mark.parametrize("args,message", [
    (["--sparsity", "1.0"], "sparsity must be in [0, 1)"),
    (["--sparsity", "-0.1"], "sparsity must be in [0, 1)"),
    (["--method", "nope", "--sparsity", "0.5"], "--method 'nope' is not a registered method"),
    (["--pattern", "3:2"], "0 < n < m"),
    (["--sparsity", "0.5", "--finetune-epochs", "-1"], "--finetune-epochs must be >= 0"),
])
def test_bad_flags(args, message, tmp_path):
    out = tmp_path / "never"
    res = runner.invoke(app, ["prune", "mlp", "--out", str(out), *args])
    assert res.exit_code == 2 and message in " ".join(res.output.split()), res.output
    assert not out.exists()


def test_missing_and_corrupt_checkpoint(dense_ckpt, tmp_path):
    res = runner.invoke(app, ["prune", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"), "--sparsity", "0.5"])
    assert res.exit_code == 2 and "checkpoint not found" in res.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text((dense_ckpt / "manifest.json").read_text())
    (bad / "model.safetensors").write_bytes(b"\x00garbage")
    res = runner.invoke(app, ["inspect", str(bad)])
    assert res.exit_code == 2 and "not a valid safetensors file" in " ".join(res.output.split())


def test_path_of_dispatches_on_the_registry_kind(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert path_of("mlp", None, False) == ("oneshot", "magnitude")
    assert path_of("mlp", "taylor", True) == ("structured", "taylor")
    assert path_of("mlp", "fpgm", False) == ("structured", "fpgm")
    assert path_of(str(hf), None, False) == ("calibrated", "sparsegpt")
    assert path_of(str(hf), "magnitude", False) == ("calibrated", "calibrated_magnitude")
    kind, name = path_of(str(hf), "calibrated-magnitude", False)
    assert kind == "calibrated" and name.replace("-", "_") == "calibrated_magnitude"
    with pytest.raises(ValueError, match="prunekit train"):
        path_of("mlp", "rigl", False)


def test_structured_prune_writes_plan_and_weights_and_reports_before_after(tmp_path):
    res = runner.invoke(app, ["prune", "lenet5", "--structured", "--out", str(tmp_path / "s"), "--target-macs", "0.5",
                              "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["macs_after"] <= 0.5 * rep["macs_before"] and rep["latency_ms_after"] > 0
    plan = Plan.load(tmp_path / "s" / "plan.json")
    assert plan.source == {"zoo": "lenet5", "kwargs": {}} and (tmp_path / "s" / "model.safetensors").is_file()


def test_prune_structured_function(tmp_path):
    rep = prune_structured("mlp", out=tmp_path / "o", target_params=0.5, importance="bn", latency=False)
    assert rep["params_after"] <= 0.5 * rep["params_before"]
    res = runner.invoke(app, ["inspect", str(tmp_path / "o")])  # inspect reads a slim model folder too
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.splitlines()[-1])["params"] == rep["params_after"]


def test_groups_and_errors(tmp_path):
    res = runner.invoke(app, ["structured", "groups", "cnn1d"])
    assert res.exit_code == 0 and "channel" in res.output
    res = runner.invoke(app, ["prune", "lenet5", "--structured", "--out", str(tmp_path / "a"), "--target-macs", "0.5",
                              "--exclude", "nope"])
    assert res.exit_code == 2 and "no module named 'nope'" in res.output
    res = runner.invoke(app, ["prune", "not-a-model", "--structured", "--out", str(tmp_path / "b"),
                              "--target-macs", "0.5"])
    assert res.exit_code == 2 and "neither a zoo model" in res.output
    res = runner.invoke(app, ["prune", "mlp", "--structured", "--out", str(tmp_path / "c"), "--target-macs", "0.5",
                              "--pattern", "2:4"])
    assert res.exit_code == 2 and "--pattern does not apply to structured pruning" in res.output
    assert not any((tmp_path / n).exists() for n in "abc")


def test_remove_blocks_auto_and_the_old_spelling(tmp_path):
    res = runner.invoke(app, ["structured", "prune", "resnet20", "--out", str(tmp_path / "a"), "--target-macs", "0.5",
                              "--remove-blocks", "auto", "--json"])
    assert res.exit_code == 0, res.output
    assert res.stderr.count("deprecated") == 1 and "prunekit prune --structured" in res.stderr
    plan = Plan.load(tmp_path / "a" / "plan.json")
    rep = json.loads(res.stdout)
    # resnet20: 3 stacks of 3 blocks, equal MACs per stage; half the MACs takes about 4 blocks
    assert sum(3 - len(k) for k in plan.blocks.values()) >= 3 and rep["macs_after"] <= 0.5 * rep["macs_before"]
    res = runner.invoke(app, ["prune", "resnet20", "--out", str(tmp_path / "b"), "--structured",
                              "--target-macs", "0.5", "--remove-blocks", "auto", "--round-to", "4"])
    assert res.exit_code == 0, res.output
    assert Plan.load(tmp_path / "b" / "plan.json").config["remove_blocks"] == "auto"
    res = runner.invoke(app, ["prune", "resnet20", "--out", str(tmp_path / "c"), "--structured",
                              "--target-macs", "0.5", "--remove-blocks", "deep"])
    assert res.exit_code == 2 and "--remove-blocks must be a fraction in [0, 1) or 'auto'" in res.output
    assert not (tmp_path / "c").exists()


def test_unwritable_db_is_refused_before_any_work(tmp_path):
    """--db in a read-only folder: rc 2 naming --db, and no pruned checkpoint is written first."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        res = runner.invoke(app, ["prune", "mlp", "--sparsity", "0.5", "--db", str(ro / "r.sqlite"),
                                  "--out", str(tmp_path / "o")])
    finally:
        ro.chmod(0o755)
    assert res.exit_code == 2 and "--db" in res.output and "read-only" in res.output
    assert not (tmp_path / "o").exists()
