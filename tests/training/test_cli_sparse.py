"""``prunekit sparse``: train and lottery end to end on the zoo's MNIST-1D CNN (1 epoch), bad flags."""

import json

import pytest
from typer.testing import CliRunner

import prunekit.zoo
from prunekit.checkpoint import load_checkpoint
from prunekit.training.cli import app

runner = CliRunner()
_SMALL = {}


@pytest.fixture(autouse=True)
def small_mnist1d(monkeypatch):
    """1000 MNIST-1D examples, generated once for the module (the CLI's wiring is under test, not the data)."""
    real = prunekit.zoo.get_dataset
    if "split" not in _SMALL:
        _SMALL["split"] = real("mnist1d", num_samples=1000)
    monkeypatch.setattr(prunekit.zoo, "get_dataset", lambda name, **kw: _SMALL["split"])


def test_sparse_train_rigl_and_resume(tmp_path):
    args = ["train", "cnn1d", "--out", str(tmp_path / "m"), "--method", "rigl", "--sparsity", "0.8", "--epochs", "2",
            "--update-every", "3", "--checkpoint-dir", str(tmp_path / "ck"), "--checkpoint-every", "5"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "sparsity 0.8" in res.output
    model, manifest, masks = load_checkpoint(tmp_path / "m")
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert kept == round(0.2 * total) and manifest["measured_sparsity"] == 1 - kept / total
    assert json.loads((tmp_path / "ck" / "manifest.json").read_text())["step"] == 14  # 2 epochs of 7 steps
    args[3] = str(tmp_path / "m2")  # --out m is not empty now: it is refused without --overwrite
    res = runner.invoke(app, [*args, "--resume"])  # the saved run is already complete: resumes at its end
    assert res.exit_code == 0 and "resuming at step 14" in res.output, res.output


def test_sparse_train_srste_and_lottery(tmp_path):
    res = runner.invoke(app, ["train", "cnn1d", "--out", str(tmp_path / "n"), "--method", "srste", "--nm", "1:4",
                              "--epochs", "1", "--model-arg", "channels=32", "--exclude", "convs.0"])
    assert res.exit_code == 0, res.output
    assert "sparsity 0.7500" in res.output
    res = runner.invoke(app, ["lottery", "cnn1d", "--out", str(tmp_path / "t"), "--sparsity", "0.36", "--epochs",
                              "1", "--control-seed", "7"])
    assert res.exit_code == 0, res.output
    assert "| 2 | 0.36" in res.output and "random reinit" in res.output


def test_sparse_cli_bad_flags(tmp_path):
    res = runner.invoke(app, ["train", "cnn1d", "--out", str(tmp_path / "x"), "--method", "rigl", "--sparsity",
                              "0.9", "--update-fraction", "1.5", "--epochs", "1"])
    assert res.exit_code == 2 and "update_fraction" in res.output
    res = runner.invoke(app, ["train", "cnn1d", "--out", str(tmp_path / "x"), "--method", "srste", "--epochs", "1"])
    assert res.exit_code == 2 and "multiple of m=4" in res.output  # convs.0 has 1 input channel
    res = runner.invoke(app, ["lottery", "cnn1d", "--out", str(tmp_path / "x"), "--sparsity", "0.5",
                              "--rewind-step", "100000", "--epochs", "1"])
    assert res.exit_code == 2 and "beyond the training length" in res.output
    res = runner.invoke(app, ["train", "cnn1d", "--out", str(tmp_path / "x"), "--method", "magic"])
    assert res.exit_code == 2 and "unknown training method 'magic'; accepted: dense" in res.output
    assert not (tmp_path / "x").exists()


def test_sparse_train_movement(tmp_path):
    res = runner.invoke(app, ["train", "cnn1d", "--out", str(tmp_path / "mv"), "--method", "movement", "--sparsity",
                              "0.8", "--epochs", "2"])
    assert res.exit_code == 0, res.output
    _, manifest, masks = load_checkpoint(tmp_path / "mv")
    kept, total = sum(int(m.sum()) for m in masks.values()), sum(m.numel() for m in masks.values())
    assert manifest["measured_sparsity"] == pytest.approx(0.8, abs=1e-3) and kept == round(0.2 * total)
