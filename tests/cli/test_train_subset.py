"""``prunekit train --subset SELECTION --distill TEACHER``: KD on the pruned subset (Ben-Baruch et al. 2024)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from prunekit.checkpoint import load_checkpoint
from prunekit.cli import app
from prunekit.data import save_selection

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("small_data")


def _train(tmp_path, name: str, *args: str):
    return runner.invoke(app, ["train", "cnn1d", "--out", str(tmp_path / name), "--epochs", "1", *args])


def _n_train() -> int:
    import prunekit.zoo

    return len(prunekit.zoo.get_dataset("mnist1d").y_train)


def test_train_on_a_subset_with_and_without_distillation(tmp_path):
    n = _n_train()
    save_selection(tmp_path / "sel", torch.arange(0, n, 4), num_examples=n, method="random")
    assert _train(tmp_path, "teacher").exit_code == 0
    r = _train(tmp_path, "plain", "--subset", str(tmp_path / "sel"))
    assert r.exit_code == 0, r.output
    assert f"training on {len(range(0, n, 4))} of {n} examples" in r.stderr
    r = _train(tmp_path, "kd", "--subset", str(tmp_path / "sel"), "--distill", str(tmp_path / "teacher"),
               "--alpha", "0.9", "--temperature", "2")
    assert r.exit_code == 0, r.output
    plain, man_p, _ = load_checkpoint(tmp_path / "plain")
    kd, man, _ = load_checkpoint(tmp_path / "kd")
    assert man_p["subset"] == {"path": str(tmp_path / "sel"), "method": "random", "num_kept": len(range(0, n, 4)),
                               "num_examples": n} and "distill" not in man_p
    assert man["distill"] == {"teacher": str(tmp_path / "teacher"), "alpha": 0.9, "temperature": 2.0}
    w_plain, w_kd = plain.state_dict(), kd.state_dict()
    assert any(not torch.equal(w_plain[k], w_kd[k]) for k in w_plain)  # same seed and subset: KD changed the run


def test_bad_subset_exits_2_before_training(tmp_path):
    save_selection(tmp_path / "other", torch.arange(5), num_examples=10, method="random")
    r = _train(tmp_path, "x", "--subset", str(tmp_path / "other"))
    assert r.exit_code == 2 and "made for a data set of 10 examples" in r.output
    (tmp_path / "empty").mkdir()
    r = _train(tmp_path, "y", "--subset", str(tmp_path / "empty"))
    assert r.exit_code == 2 and "is not a selection folder" in r.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
