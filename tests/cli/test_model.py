"""``prunekit train`` (dense and sparse), ``prunekit sparse train|lottery``: 1-2 epochs on a small MNIST-1D."""

import json

import pytest
from typer.testing import CliRunner

from prunekit.checkpoint import load_checkpoint
from prunekit.cli import app
from prunekit.training.checkpoint import INDEX

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("small_data")


def test_train_dense_prints_one_line_per_epoch_without_a_tty(tmp_path):
    res = runner.invoke(app, ["train", "cnn1d", "--out", str(tmp_path / "d"), "--epochs", "2"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(" (")[0] for ln in lines] == ["epoch 1/2", "epoch 2/2"] and "train_loss" in lines[0]
    _, manifest, masks = load_checkpoint(tmp_path / "d")
    assert masks is None and manifest["method"] == "dense" and manifest["recipe"]["epochs"] == 2


def test_train_rigl_and_resume(tmp_path):
    args = ["train", "cnn1d", "--out", str(tmp_path / "m"), "--method", "rigl", "--sparsity", "0.8", "--epochs", "2",
            "--update-every", "3", "--checkpoint-dir", str(tmp_path / "ck"), "--checkpoint-every", "5"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "sparsity (pruned weights) 0.8" in res.output
    model, manifest, masks = load_checkpoint(tmp_path / "m")
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert kept == round(0.2 * total) and manifest["measured_sparsity"] == 1 - kept / total
    assert json.loads((tmp_path / "ck" / INDEX).read_text())["step"] == 14  # 2 epochs of 7 steps
    args[3] = str(tmp_path / "m2")
    res = runner.invoke(app, [*args, "--resume"])  # the saved run is already complete: resumes at its end
    assert res.exit_code == 0 and "resuming at step 14" in res.output, res.output


def test_sparse_train_alias_srste_and_lottery(tmp_path):
    res = runner.invoke(app, ["sparse", "train", "cnn1d", "--out", str(tmp_path / "n"), "--method", "srste",
                              "--pattern", "1:4", "--epochs", "1", "--model-arg", "channels=32",
                              "--exclude", "convs.0"])
    assert res.exit_code == 0, res.output
    assert "sparsity (pruned weights) 0.7500" in res.output and res.stderr.count("deprecated") == 1
    res = runner.invoke(app, ["sparse", "lottery", "cnn1d", "--out", str(tmp_path / "t"), "--sparsity", "0.36",
                              "--epochs", "1", "--control-seed", "7", "--scope", "global"])
    assert res.exit_code == 0, res.output
    assert "| 2 | 0.36" in res.output and "random reinit" in res.output
    assert json.loads((tmp_path / "t" / "manifest.json").read_text())["settings"]["scope"] == "global"


def test_train_bad_flags(tmp_path):
    out = str(tmp_path / "x")
    res = runner.invoke(app, ["train", "cnn1d", "--out", out, "--method", "rigl", "--sparsity", "0.9",
                              "--update-fraction", "1.5", "--epochs", "1"])
    assert res.exit_code == 2 and "update_fraction" in res.output
    res = runner.invoke(app, ["train", "cnn1d", "--out", out, "--method", "srste", "--epochs", "1"])
    assert res.exit_code == 2 and "multiple of m=4" in res.output  # convs.0 has 1 input channel
    res = runner.invoke(app, ["sparse", "lottery", "cnn1d", "--out", out, "--sparsity", "0.5",
                              "--rewind-step", "100000", "--epochs", "1"])
    assert res.exit_code == 2 and "beyond the training length" in res.output
    res = runner.invoke(app, ["train", "cnn1d", "--out", out, "--method", "magic"])
    assert res.exit_code == 2 and "--method 'magic' is not a registered method; accepted: training: dense" in res.output
    res = runner.invoke(app, ["train", "cnn1d", "--out", out, "--sparsity", "0.5"])
    assert res.exit_code == 2 and "--sparsity does not apply to --method dense" in res.output
    res = runner.invoke(app, ["train", "cnn1d", "--out", out, "--method", "rigl", "--pattern", "2:4"])
    assert res.exit_code == 2 and "--method srste" in res.output
    res = runner.invoke(app, ["train", "cnn1d", "--out", out, "--resume"])
    assert res.exit_code == 2 and "--resume needs --checkpoint-dir" in res.output
    assert not (tmp_path / "x").exists()


def test_train_movement(tmp_path):
    res = runner.invoke(app, ["train", "cnn1d", "--out", str(tmp_path / "mv"), "--method", "movement", "--sparsity",
                              "0.8", "--epochs", "2"])
    assert res.exit_code == 0, res.output
    _, manifest, masks = load_checkpoint(tmp_path / "mv")
    kept, total = sum(int(m.sum()) for m in masks.values()), sum(m.numel() for m in masks.values())
    assert manifest["measured_sparsity"] == pytest.approx(0.8, abs=1e-3) and kept == round(0.2 * total)
