"""``prunekit prune MODEL_DIR --method ...`` (and ``llm prune``), ``llm eval`` on a tiny LLaMA folder; bad flags
fail before any work."""

from __future__ import annotations

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from prunekit.calibrate.io import load_masks
from prunekit.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch
    import transformers as T

    from prunekit.zoo.lm import train_tokenizer
    from prunekit.zoo.text import stdlib_corpus

    d = tmp_path_factory.mktemp("tiny") / "llama"
    tok = train_tokenizer(stdlib_corpus(max_docs=60), 280)
    cfg = T.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=64, vocab_size=len(tok), max_position_embeddings=64)
    torch.manual_seed(0)
    T.LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_prune_then_eval(model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out, db = tmp_path / "pruned", tmp_path / "r.sqlite"
    r = runner.invoke(app, ["prune", str(model_dir), "--out", str(out), "--method", "wanda", "--pattern", "2:4",
                            "--dsnot", "--nsamples", "4", "--seq-len", "32", "--db", str(db)])
    assert r.exit_code == 0, r.output
    assert "block 2/2" in r.stderr  # one line per block without a TTY
    masks, man = load_masks(out)
    assert man["method"]["type"] == "wanda" and man["method"]["pattern"] == "2:4"
    assert man["calibration"]["source"] == "builtin:stdlib-docstrings" and man["calibration"]["nsamples"] == 4
    assert all(abs(v["sparsity"] - 0.5) < 1e-9 for v in man["layers"].values())
    assert not (tmp_path / ".pruned.state").exists()  # resume files removed after success
    r = runner.invoke(app, ["llm", "eval", str(out), "--seq-len", "32", "--max-windows", "4", "--db", str(db),
                            "--show-layers"])
    assert r.exit_code == 0, r.output
    assert "model.layers.1.mlp.down_proj.weight | 32x64 | 0.5000 | 0.5000 |" in r.stdout
    assert json.loads(r.stdout[r.stdout.index("{"):])["protocol"]["n_windows"] == 4
    assert "perplexity: batch 1/1" in r.stderr  # progress lines without a TTY (4 windows = one batch of 8)
    rows = sqlite3.connect(db).execute("SELECT experiment, kind FROM runs").fetchall()
    assert sorted(rows) == [("llm-eval", "llm"), ("llm-prune", "llm")]
    assert not (tmp_path / "prunekit-results.sqlite").exists()  # never the current folder


def test_old_spelling_and_default_store_inside_out(model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "m"
    r = runner.invoke(app, ["llm", "prune", str(model_dir), "--out", str(out), "--method", "magnitude",
                            "--sparsity", "0.5", "--nsamples", "2", "--seq-len", "16"])
    assert r.exit_code == 0, r.output
    assert r.stderr.count("deprecated") == 1
    _, man = load_masks(out)
    assert man["method"]["type"].replace("-", "_") == "calibrated_magnitude"
    rows = sqlite3.connect(out / "prunekit-results.sqlite").execute("SELECT experiment FROM runs").fetchall()
    assert rows == [("llm-prune",)] and not (tmp_path / "prunekit-results.sqlite").exists()
    r = runner.invoke(app, ["llm", "eval", str(out), "--seq-len", "16", "--max-windows", "2"])
    assert r.exit_code == 0 and not (tmp_path / "prunekit-results.sqlite").exists()  # no --db: not stored
    r = runner.invoke(app, ["prune", str(model_dir), "--out", str(model_dir), "--sparsity", "0.5", "--overwrite"])
    assert r.exit_code == 2 and "input" in r.output


@pytest.mark.parametrize("args,msg", [
    (["--sparsity", "1.0"], "sparsity"),
    (["--method", "obs", "--sparsity", "0.5"], "--method"),
    (["--method", "wanda", "--pattern", "3:7"], "multiple of 7"),
    (["--sparsity", "0.5", "--seq-len", "65"], "maximum sequence length"),
    (["--sparsity", "0.5", "--pattern", "2:4"], "--sparsity cannot be combined"),
    (["--sparsity", "0.5", "--finetune-epochs", "2"], "--finetune-epochs does not apply to calibrated"),
    (["--sparsity", "0.5", "--scope", "global"], "--scope does not apply"),
    (["--sparsity", "0.5", "--owl-m", "3"], "--owl-m / --owl-lambda need --owl"),
    (["--sparsity", "0.5", "--attn-implementation", "flash"], "--attn-implementation must be one of eager, sdpa"),
    ([], "--sparsity"),
])
def test_bad_flags(model_dir, tmp_path, args, msg):
    r = runner.invoke(app, ["prune", str(model_dir), "--out", str(tmp_path / "o"), "--nsamples", "2",
                            "--seq-len", "16", *args])
    assert r.exit_code == 2 and msg in r.output, r.output
    assert not (tmp_path / "o").exists()


def test_attn_implementation_eager_and_sdpa_prune_the_same_layers(model_dir, tmp_path):
    masks = {}
    for impl in ("eager", "sdpa"):
        out = tmp_path / impl
        r = runner.invoke(app, ["prune", str(model_dir), "--out", str(out), "--method", "wanda", "--sparsity", "0.5",
                                "--nsamples", "4", "--seq-len", "32", "--attn-implementation", impl])
        assert r.exit_code == 0, r.output
        masks[impl], _ = load_masks(out)
    assert masks["eager"].keys() == masks["sdpa"].keys()
    for k, m in masks["eager"].items():  # both exactly 50% per layer; the kernels agree to rounding only
        assert int(m.sum()) == int(masks["sdpa"][k].sum()) == m.numel() // 2
    r = runner.invoke(app, ["prune", "resnet20", "--out", str(tmp_path / "z"), "--method", "magnitude",
                            "--sparsity", "0.5", "--attn-implementation", "eager"])
    assert r.exit_code == 2 and "applies only to calibrated pruning" in r.output and not (tmp_path / "z").exists()


def test_model_dir_without_weights(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    r = runner.invoke(app, ["prune", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--sparsity", "0.5"])
    assert r.exit_code == 2 and "no weights" in r.output


def test_slice_then_eval(model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sliced"
    r = runner.invoke(app, ["llm", "slice", str(model_dir), "--fraction", "0.25", "--calib-samples", "4",
                            "--seq-len", "16", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "hidden width 32 -> 24" in r.stdout
    man = json.loads((out / "manifest.json").read_text())
    assert man["kind"] == "sliced" and man["sliced_hidden_size"] == 24
    assert man["report"]["calibration_tokens"] == 4 * 16
    rows = sqlite3.connect(out / "prunekit-results.sqlite").execute("SELECT experiment FROM runs").fetchall()
    assert rows == [("llm-slice",)]
    r = runner.invoke(app, ["llm", "eval", str(out), "--seq-len", "16", "--max-windows", "2"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout[r.stdout.index("{"):])["ppl"] > 1
    r = runner.invoke(app, ["llm", "slice", str(model_dir), "--calib-samples", "4", "--seq-len", "16", "--out",
                            str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.output  # the first result survives
    assert (out / "sliced.safetensors").is_file()
    r = runner.invoke(app, ["llm", "slice", str(model_dir), "--calib-samples", "4", "--seq-len", "16", "--out",
                            str(out), "--overwrite", "--no-shortcuts"])
    assert r.exit_code == 0 and "(0 shortcut matrices)" in r.stdout, r.output
    assert (out / "model.safetensors").is_file() and not (out / "sliced.safetensors").exists()  # plain folder
    r = runner.invoke(app, ["llm", "eval", str(out), "--seq-len", "16", "--max-windows", "2"])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args,msg", [
    (["--fraction", "1.0"], "--fraction must be in [0, 1)"),
    (["--fraction", "-0.1"], "--fraction must be in [0, 1)"),
    (["--calib-samples", "0"], "--calib-samples"),
    (["--seq-len", "65"], "maximum sequence length"),
])
def test_slice_bad_flags(model_dir, tmp_path, args, msg):
    r = runner.invoke(app, ["llm", "slice", str(model_dir), "--out", str(tmp_path / "o"), "--seq-len", "16", *args])
    assert r.exit_code == 2 and msg in r.output, r.output
    assert not (tmp_path / "o").exists()


def test_slice_refuses_an_unsupported_family_before_loading(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "m" / "model.safetensors").write_text("not read")
    r = runner.invoke(app, ["llm", "slice", str(tmp_path / "m"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "'bert' is not supported by SliceGPT" in r.output and "opt" in r.output, r.output
