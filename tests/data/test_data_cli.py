"""``prunekit data score | select | dedup | resample``: outputs, and bad input -> exit 2, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from prunekit.data import load_selection
from prunekit.data.cli import app

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args))


def test_score_random_then_select_ccs(tmp_path):
    r = _run("score", "--method", "random", "--num-examples", "200", "--out", str(tmp_path / "s"), "--seed", "1")
    assert r.exit_code == 0, r.output
    s = np.load(tmp_path / "s.npy")
    meta = json.loads((tmp_path / "s.json").read_text())
    assert s.shape == (200,) and meta["method"] == "random" and meta["orientation"] == "higher = harder"
    r = _run("select", "--scores", str(tmp_path / "s.npy"), "--keep", "0.25", "--rule", "ccs", "--beta", "0.1",
             "--strata", "5", "--out", str(tmp_path / "sel"))
    assert r.exit_code == 0, r.output
    idx, man = load_selection(tmp_path / "sel", num_examples=200)
    assert len(idx) == 50 and man["method"] == "ccs" and man["params"]["beta"] == 0.1


def test_select_class_balanced_with_labels(tmp_path):
    np.save(tmp_path / "s.npy", np.arange(40, dtype=np.float64))
    np.save(tmp_path / "y.npy", np.repeat([0, 1], 20))
    r = _run("select", "--scores", str(tmp_path / "s.npy"), "--keep", "0.5", "--rule", "class-balanced",
             "--labels", str(tmp_path / "y.npy"), "--out", str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    idx, _ = load_selection(tmp_path / "o")
    assert idx.tolist() == list(range(10, 20)) + list(range(30, 40))


def test_score_from_recorded_dynamics(tmp_path, make_mlp, blob_data):
    from prunekit.data import record_runs

    record_runs(make_mlp, blob_data, tmp_path / "runs", seeds=(0,), epochs=3, batch_size=64)
    r = _run("score", "--method", "el2n", "--epoch", "1", "--dynamics", str(tmp_path / "runs" / "seed0"),
             "--out", str(tmp_path / "el2n.npy"))
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "el2n.npy").shape == (300,)
    r = _run("score", "--method", "el2n", "--dynamics", str(tmp_path / "runs" / "seed0"),
             "--out", str(tmp_path / "auto.npy"))  # default --epoch auto: the manifest records the epoch picked
    assert r.exit_code == 0, r.output
    picked = json.loads((tmp_path / "auto.json").read_text())["params"]["epoch"]
    assert picked in (0, 1, 2) and f"el2n epoch {picked} (auto" in r.output
    r = _run("score", "--method", "el2n", "--epoch", "early", "--dynamics", str(tmp_path / "runs" / "seed0"),
             "--out", str(tmp_path / "bad.npy"))
    assert r.exit_code == 2 and "--epoch must be" in r.output and not (tmp_path / "bad.npy").exists()


def test_dedup_and_dsir_and_rs2(tmp_path, dup_embeddings):
    x, copy_of = dup_embeddings
    np.save(tmp_path / "e.npy", x)
    r = _run("dedup", "--embeddings", str(tmp_path / "e.npy"), "--eps", "0.01", "--clusters", "20",
             "--out", str(tmp_path / "d"))
    assert r.exit_code == 0, r.output
    idx, man = load_selection(tmp_path / "d", num_examples=len(x))
    assert len(x) - len(idx) >= 0.95 * (copy_of >= 0).sum() and man["stats"]["n_clusters"] == 20

    raw = [json.dumps({"text": t}) for t in ["def f(): return x"] * 5 + ["the sun over the hills"] * 15]
    (tmp_path / "raw.jsonl").write_text("\n".join(raw))
    (tmp_path / "target.txt").write_text("def g(): return y\nclass A: pass\n")
    r = _run("resample", "--method", "dsir", "--raw", str(tmp_path / "raw.jsonl"), "--target",
             str(tmp_path / "target.txt"), "--num", "5", "--out", str(tmp_path / "ds"))
    assert r.exit_code == 0, r.output
    idx, man = load_selection(tmp_path / "ds", num_examples=20)
    assert idx.tolist() == [0, 1, 2, 3, 4] and man["method"] == "dsir"

    r = _run("resample", "--method", "rs2", "--num-examples", "50", "--keep", "0.2", "--epochs", "5",
             "--out", str(tmp_path / "rs2"))
    assert r.exit_code == 0, r.output
    sch = np.load(tmp_path / "rs2" / "schedule.npy")
    assert sch.shape == (5, 10) and sorted(sch.ravel().tolist()) == list(range(50))


@pytest.mark.parametrize("args, message", [
    (["select", "--keep", "0", "--rule", "keep-hard"], "keep_fraction must be in (0, 1]"),
    (["select", "--keep", "1.5", "--rule", "keep-hard"], "keep_fraction must be in (0, 1]"),
    (["select", "--keep", "0.5", "--rule", "keep-hardest"], "unknown data selection rule"),
    (["select", "--keep", "0.5", "--rule", "class-balanced", "--labels", "BADLABELS", "--num-classes", "3"],
     "labels must be class indices in [0, 3), got values [5]"),
    (["select", "--keep", "0.5", "--rule", "keep-hard", "--dataset", "digits"], "training examples"),
])
def test_select_bad_input_exits_2_and_writes_nothing(tmp_path, args, message):
    np.save(tmp_path / "s.npy", np.array([0.1, 0.5, 0.3]))
    np.save(tmp_path / "bad.npy", np.array([0, 5, 1]))
    args = [a.replace("BADLABELS", str(tmp_path / "bad.npy")) for a in args]
    out = tmp_path / "out"
    r = _run(*args, "--scores", str(tmp_path / "s.npy"), "--out", str(out))
    assert r.exit_code == 2
    assert message in r.output
    assert not out.exists()


def test_nan_scores_and_wrong_width_embeddings_rejected(tmp_path):
    np.save(tmp_path / "s.npy", np.array([0.1, np.nan]))
    r = _run("select", "--scores", str(tmp_path / "s.npy"), "--keep", "0.5", "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "NaN" in r.output and not (tmp_path / "o").exists()
    np.save(tmp_path / "e.npy", np.zeros((10, 8), np.float32))
    r = _run("dedup", "--embeddings", str(tmp_path / "e.npy"), "--dim", "384", "--out", str(tmp_path / "d"))
    assert r.exit_code == 2 and "width 384" in r.output and not (tmp_path / "d").exists()
    r = _run("score", "--method", "el2m", "--out", str(tmp_path / "x"))
    assert r.exit_code == 2 and "method must be one of" in r.output


def test_score_grand_on_a_zoo_data_set(tmp_path):
    r = _run("score", "--method", "grand", "--dataset", "digits", "--model", "lenet5", "--seeds", "0",
             "--out", str(tmp_path / "g"))
    assert r.exit_code == 0, r.output
    g = np.load(tmp_path / "g.npy")
    assert g.shape == (1347,) and (g > 0).all()
    r = _run("score", "--method", "grand", "--out", str(tmp_path / "h"))
    assert r.exit_code == 2 and "--dataset and --model" in r.output
    r = _run("score", "--method", "grand", "--dataset", "digits", "--model", "lenet5", "--backend", "spark",
             "--out", str(tmp_path / "k"))
    assert r.exit_code == 2 and "--backend must be local or ray" in r.output and not (tmp_path / "k.npy").exists()
