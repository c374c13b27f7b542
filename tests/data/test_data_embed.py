"""Embedding to a memmap (atomic), the built-in encoders, report plots."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunekit.data import MiniLMEncoder, RandomConvEncoder, embed
from prunekit.data.report import accuracy_table, plot_accuracy_vs_keep, plot_score_histograms


def test_embed_to_memmap_matches_in_memory(tmp_path):
    x = torch.randn(37, 40, generator=torch.Generator().manual_seed(0))
    enc = RandomConvEncoder(dim=16, seed=0)
    mem = embed(enc, x, batch_size=8)
    out = embed(enc, x, out=tmp_path / "e.npy", batch_size=5)
    assert mem.shape == (37, 16) and mem.dtype == np.float32
    assert isinstance(out, np.memmap)
    np.testing.assert_allclose(np.asarray(out), mem, rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy"]  # no temp file left
    with pytest.raises(FileExistsError, match="--overwrite"):  # an existing file is never replaced silently
        embed(enc, x[:3], out=tmp_path / "e.npy")
    assert np.load(tmp_path / "e.npy").shape == (37, 16)
    assert embed(enc, x[:3], out=tmp_path / "e.npy", overwrite=True).shape == (3, 16)


def test_random_conv_encoder_is_fixed_by_seed():
    x = torch.randn(4, 40)
    a, b, c = RandomConvEncoder(seed=1)(x), RandomConvEncoder(seed=1)(x), RandomConvEncoder(seed=2)(x)
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == (4, 64)


def test_failed_embedding_leaves_no_file(tmp_path):
    calls = []

    def enc(b):
        calls.append(len(b))
        if len(calls) > 2:
            raise RuntimeError("encoder failed")
        return torch.zeros(len(b), 3)

    with pytest.raises(RuntimeError, match="encoder failed"):
        embed(enc, np.zeros((10, 2), np.float32), out=tmp_path / "e.npy", batch_size=4)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="backend must be one of"):
        embed(enc, np.zeros((2, 2)), backend="spark")


def test_minilm_sentence_embeddings_rank_paraphrases_first():
    enc = MiniLMEncoder(max_length=64)
    e = embed(enc, ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Quarterly tax filing deadlines."])
    assert e.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_report_plots_are_written(tmp_path):
    recs = [{"method": m, "keep_fraction": k, "accuracy": a, "seed": s}
            for m, base in (("random", 0.8), ("ccs", 0.82)) for k in (0.1, 0.5) for s, a in ((0, base), (1, base + k))]
    tab = accuracy_table(recs)
    assert tab["random"][0.5][0] == pytest.approx(0.8 + 0.25) and tab["random"][0.5][2] == 2
    p = plot_accuracy_vs_keep(recs, tmp_path / "acc.png", full_accuracy=0.9)
    h = plot_score_histograms({"el2n": np.random.rand(100), "aum": np.random.rand(100)}, tmp_path / "h.png",
                              flagged=np.arange(100) < 20)
    assert p.stat().st_size > 1000 and h.stat().st_size > 1000
    with pytest.raises(ValueError, match="at least one"):
        plot_accuracy_vs_keep([], tmp_path / "x.png")
