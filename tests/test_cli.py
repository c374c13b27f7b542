"""The prunekit command: prune / inspect / train on tiny runs, and its bad-input errors."""

import json

import pytest
from typer.testing import CliRunner

from prunekit.cli import _mount, app

runner = CliRunner()
_mount()


@pytest.fixture(scope="module")
def dense_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("ck") / "dense"
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


def test_prune_nm_from_zoo_name(tmp_path):
    res = runner.invoke(app, ["prune", "mlp", "--out", str(tmp_path / "nm"), "--pattern", "2:4"])
    assert res.exit_code == 0, res.output
    assert "sparsity 0.5000" in res.output


@pytest.mark.parametrize("args,message", [
    (["--sparsity", "1.0"], "sparsity must be in [0, 1)"),
    (["--sparsity", "-0.1"], "sparsity must be in [0, 1)"),
    (["--method", "nope", "--sparsity", "0.5"], "unknown method config 'nope'"),
    (["--pattern", "3:2"], "0 < n < m"),
])
def test_bad_flags(args, message, tmp_path):
    out = tmp_path / "never"
    res = runner.invoke(app, ["prune", "mlp", "--out", str(out), *args])
    assert res.exit_code == 2 and message in " ".join(res.output.split())
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
