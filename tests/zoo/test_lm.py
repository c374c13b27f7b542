"""The zoo LM: a tiny recipe trains, saves into the cache folder, and loads back without training."""

import json

import pytest
import torch

from prunekit.zoo.lm import LMRecipe, cache_root, lm_dir, load_zoo_lm, train_lm

TINY = LMRecipe(vocab_size=300, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_positions=64,
                seq_len=32, batch_size=4, steps=3, warmup=1, max_docs=60)


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "c"))
    assert lm_dir() == tmp_path / "c" / "zoo-lm"
    assert cache_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("PRUNEKIT_CACHE")
    assert str(cache_root()).endswith(".cache/prunekit")


def test_train_save_load_round_trip(tmp_path):
    out = train_lm(tmp_path / "lm", TINY)
    rec = json.loads((out / "zoo_lm.json").read_text())
    assert rec["train"]["steps_done"] == 3 and rec["recipe"]["hidden_size"] == 32
    assert rec["val_ppl"] > 1 and rec["val_protocol"]["seq_len"] == 32
    model, tok, record = load_zoo_lm(tmp_path / "lm")
    assert record == rec
    ids = torch.tensor([tok("def f(x): return x")["input_ids"]])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], 300)
    with pytest.raises(FileExistsError, match="overwrite"):
        train_lm(tmp_path / "lm", TINY)


def test_training_is_deterministic(tmp_path):
    a = train_lm(tmp_path / "a", TINY)
    b = train_lm(tmp_path / "b", TINY)
    ra, rb = (json.loads((d / "zoo_lm.json").read_text()) for d in (a, b))
    assert ra["train"]["final_train_loss"] == rb["train"]["final_train_loss"]
    assert ra["val_ppl"] == rb["val_ppl"]


def test_missing_lm_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-lm"):
        load_zoo_lm(tmp_path / "nothing")


def test_loading_a_capped_lm_warns(tmp_path, caplog):
    from dataclasses import replace

    train_lm(tmp_path / "lm", replace(TINY, max_minutes=0.0))  # the cap binds before the first step
    with caplog.at_level("WARNING", logger="prunekit.zoo.lm"):
        _, _, record = load_zoo_lm(tmp_path / "lm")
    assert record["train"]["steps_done"] == 0 < record["recipe"]["steps"]
    assert "stopped at step 0 of 3" in caplog.text and "not the reference model" in caplog.text


@pytest.mark.parametrize("flag", [["--max-minutes", "0"], ["--max-minutes", "-1"], ["--steps", "0"]])
def test_train_lm_cli_refuses_a_bad_cap_before_work(tmp_path, flag):
    from typer.testing import CliRunner

    from prunekit.cli import app

    res = CliRunner().invoke(app, ["zoo", "train-lm", "--cache-dir", str(tmp_path / "c"), *flag])
    assert res.exit_code == 2 and flag[0] in res.output and not (tmp_path / "c").exists()
