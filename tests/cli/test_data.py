"""``prunekit data score | select | dedup | resample | embed``: outputs, and bad input -> exit 2, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from prunekit.cli import app
from prunekit.data import load_selection

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, ["data", *args])


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
    (["select", "--keep", "0", "--rule", "keep-hard"], "--keep must be a fraction in (0, 1]"),
    (["select", "--keep", "1.5", "--rule", "keep-hard"], "--keep must be a fraction in (0, 1]"),
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
    assert r.exit_code == 2 and "--method must be one of aum, el2n" in r.output


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
    assert r.exit_code == 2 and "--backend must be one of local, ray" in r.output and not (tmp_path / "k.npy").exists()


def test_dedup_rule_and_score_outputs_refused_when_present(tmp_path, dup_embeddings):
    x, _ = dup_embeddings
    np.save(tmp_path / "e.npy", x[:300])
    kept = {}
    for rule in ("farthest", "closest", "random"):
        r = _run("dedup", "--embeddings", str(tmp_path / "e.npy"), "--eps", "0.01", "--clusters", "5", "--rule", rule,
                 "--out", str(tmp_path / rule))
        assert r.exit_code == 0, r.output
        idx, man = load_selection(tmp_path / rule, num_examples=300)
        assert man["params"]["rule"] == rule
        kept[rule] = len(idx)
    assert len(set(kept.values())) == 1  # the rule picks which copy stays, not how many
    r = _run("dedup", "--embeddings", str(tmp_path / "e.npy"), "--keep", "farthest", "--out", str(tmp_path / "k"))
    assert r.exit_code == 2 and "--keep" in r.output and not (tmp_path / "k").exists()
    (tmp_path / "s.npy").write_bytes(b"mine")
    r = _run("score", "--method", "random", "--num-examples", "10", "--out", str(tmp_path / "s"))
    assert r.exit_code == 2 and "--overwrite" in r.output and (tmp_path / "s.npy").read_bytes() == b"mine"
    r = _run("score", "--method", "random", "--num-examples", "10", "--out", str(tmp_path / "s"), "--overwrite")
    assert r.exit_code == 0 and np.load(tmp_path / "s.npy").shape == (10,)


def test_embed_then_dedup(tmp_path, tiny_encoder):
    texts = tmp_path / "pool.jsonl"
    docs = ["the cat sat", "the dog ran", "the cat sat", "dog", "cat ran"]
    texts.write_text("\n".join(json.dumps({"body": t}) for t in docs))
    r = runner.invoke(app, ["data", "embed", str(texts), "--model", str(tiny_encoder), "--text-field", "body",
                            "--out", str(tmp_path / "emb")])
    assert r.exit_code == 0, r.output
    e = np.load(tmp_path / "emb" / "embeddings.npy")
    man = json.loads((tmp_path / "emb" / "manifest.json").read_text())
    assert e.shape == (5, 16) and e.dtype == np.float32 and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert np.allclose(e[0], e[2]) and man["num_examples"] == 5 and man["dim"] == 16 and man["text_field"] == "body"
    r = _run("dedup", "--embeddings", str(tmp_path / "emb"), "--eps", "0.001", "--clusters", "1",
             "--out", str(tmp_path / "d"))
    assert r.exit_code == 0, r.output
    idx, _ = load_selection(tmp_path / "d", num_examples=5)
    assert 0 in idx.tolist() or 2 in idx.tolist()
    assert len(idx) == 4  # the repeated text is dropped once
    r = runner.invoke(app, ["data", "embed", str(texts), "--model", str(tmp_path), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--model" in r.output and not (tmp_path / "x").exists()


def test_embed_streams_a_parquet_column_with_the_same_embeddings(tmp_path, tiny_encoder):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    docs = ["the cat sat", "the dog ran", "dog", "cat ran", "the the cat", "sat"]
    (tmp_path / "pool.txt").write_text("\n".join(docs) + "\n")
    pq.write_table(pa.table({"body": docs, "n": list(range(6))}), tmp_path / "pool.parquet", row_group_size=4)
    for name, field in (("pool.txt", "text"), ("pool.parquet", "body")):
        r = runner.invoke(app, ["data", "embed", str(tmp_path / name), "--model", str(tiny_encoder), "--text-field",
                                field, "--batch-size", "3", "--out", str(tmp_path / name.replace(".", "-"))])
        assert r.exit_code == 0, r.output
    e_txt, e_pq = (np.load(tmp_path / d / "embeddings.npy") for d in ("pool-txt", "pool-parquet"))
    assert e_pq.shape == (6, 16)
    np.testing.assert_array_equal(e_pq, e_txt)  # same rows, same order, batches across row groups
    man = json.loads((tmp_path / "pool-parquet" / "manifest.json").read_text())
    assert man["texts_file"].endswith("pool.parquet") and man["text_field"] == "body" and man["num_examples"] == 6
    for field, match in (("missing", "no column 'missing'"), ("n", "must hold strings")):
        r = runner.invoke(app, ["data", "embed", str(tmp_path / "pool.parquet"), "--model", str(tiny_encoder),
                                "--text-field", field, "--out", str(tmp_path / "bad")])
        assert r.exit_code == 2 and match in r.output and "Traceback" not in r.output
        assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_embed_default_minilm(tmp_path):
    (tmp_path / "pool.txt").write_text("the cat sat on the mat\nstock prices fell sharply\nthe cat sat on the mat\n")
    r = runner.invoke(app, ["data", "embed", str(tmp_path / "pool.txt"), "--out", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    e = np.load(tmp_path / "e" / "embeddings.npy")
    assert e.shape == (3, 384) and np.allclose(e[0], e[2], atol=1e-6) and float(e[0] @ e[1]) < 0.9
    assert json.loads((tmp_path / "e" / "manifest.json").read_text())["model"] == "builtin:all-MiniLM-L6-v2"
