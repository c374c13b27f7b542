"""``calibrate.workflow``: the checks before loading a model folder, and the per-layer table of a manifest."""

import json

import pytest

from prunekit.calibrate.workflow import check_seq_len, layers_markdown


def test_seq_len_checked_against_the_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 64}))
    check_seq_len(tmp_path, 64)
    with pytest.raises(ValueError, match="--seq-len 65 is beyond the model's maximum sequence length 64"):
        check_seq_len(tmp_path, 65)
    (tmp_path / "config.json").write_text(json.dumps({"n_positions": 32}))
    with pytest.raises(ValueError, match="maximum sequence length 32"):
        check_seq_len(tmp_path, 33)


def test_layers_markdown_from_a_manifest(tmp_path, monkeypatch):
    import prunekit.calibrate.io as io

    layers = {"w": {"shape": [4, 8], "sparsity": 0.5, "target": 0.5, "error": 0.0123}, "v": {"shape": [2, 2],
              "sparsity": 0.25, "target": None, "error": None}}
    monkeypatch.setattr(io, "load_manifest", lambda d: {"layers": layers})
    rows = layers_markdown(tmp_path).splitlines()
    assert rows[2] == "| w | 4x8 | 0.5000 | 0.5000 | 0.0123 |" and rows[3] == "| v | 2x2 | 0.2500 |  |  |"
