"""``prunekit tokens eval`` on a tiny random BERT with a tiny word-piece vocabulary."""

from __future__ import annotations

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from prunekit.cli import app

runner = CliRunner()
WORDS = [f"w{i}" for i in range(40)]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    import transformers as T

    from prunekit.zoo.tiny_hf import save_tiny_hf

    d = tmp_path_factory.mktemp("bert")
    save_tiny_hf("BertModel", d)
    vocab = d / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    T.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(d)
    return d


@pytest.fixture
def texts(tmp_path):
    p = tmp_path / "texts.txt"
    p.write_text("\n".join(" ".join(WORDS[(i * 7 + j) % 40] for j in range(10 + 3 * i)) for i in range(6)) + "\n")
    return p


def _eval(*args: str):
    return runner.invoke(app, ["tokens", "eval", *args])


def test_eval_writes_metrics_and_a_store_row(bert_dir, texts, tmp_path):
    out = tmp_path / "out"
    r = _eval(str(bert_dir), "--method", "zero-tprune", "--keep", "0.5", "--texts", str(texts), "--max-length",
              "16", "--out", str(out), "--repeats", "1", "--batch-size", "4")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    for k in ("fidelity", "flops_ratio", "speedup", "tokens_kept", "method", "keep", "max_length", "num_texts"):
        assert k in m, k
    assert m["method"] == "zero-tprune" and m["keep"] == 0.5 and m["num_texts"] == 6 and m["max_length"] == 16
    assert 0.4 < m["tokens_kept"] < 0.6 and m["flops_ratio"] < 1 and -1 <= m["fidelity"] <= 1 and m["speedup"] > 0
    rows = sqlite3.connect(out / "prunekit-results.sqlite").execute("select experiment from runs").fetchall()
    assert rows == [("tokens-eval",)]


@pytest.mark.parametrize("args, needle", [
    (["--method", "nope"], "--method must be one of"),
    (["--keep", "0"], "--keep must be a fraction in (0, 1]"),
    (["--keep", "1.5"], "--keep must be a fraction in (0, 1]"),
    (["--max-length", "0"], "--max-length must be a positive"),
    (["--layers", "a,b"], "--layers must be"),
])
def test_bad_flags_are_rc2_before_work(bert_dir, texts, tmp_path, args, needle):
    out = tmp_path / "out"
    r = _eval(str(bert_dir), "--texts", str(texts), "--out", str(out), *args)
    assert r.exit_code == 2 and needle in r.output and not out.exists(), r.output


def test_missing_model_or_texts_is_rc2(tmp_path, texts, bert_dir):
    r = _eval(str(tmp_path), "--texts", str(texts), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "no config.json" in r.output
    r = _eval(str(bert_dir), "--texts", str(tmp_path / "none.txt"), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "does not exist" in r.output
