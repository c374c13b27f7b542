"""Calibration sources, the perplexity protocol, fidelity, bit-packed masks, and errors before work."""

from __future__ import annotations

import math

import pytest
import torch

from prunekit.calibrate.data import Calibration, as_calibration, load_texts, sample_windows, tokenize_stream
from prunekit.calibrate.evaluate import embedding_fidelity, perplexity, windows
from prunekit.calibrate.io import check_model_dir, pack_mask, save_pruned, unpack_mask

from .conftest import tiny_model


class CharTok:
    """A character tokenizer with the call signature the loaders use."""

    cls_token_id = sep_token_id = None

    def __call__(self, text, add_special_tokens=False):
        if isinstance(text, list):
            return {"input_ids": [[ord(c) % 96 for c in t] for t in text]}
        return {"input_ids": [ord(c) % 96 for c in text]}


def test_windows_are_seeded_and_exact():
    stream = torch.arange(1000)
    a, b = sample_windows(stream, 5, 20, seed=3), sample_windows(stream, 5, 20, seed=3)
    assert torch.equal(a, b) and a.shape == (5, 20)
    assert torch.all(a[:, 1:] - a[:, :-1] == 1)  # contiguous windows of the stream
    assert not torch.equal(a, sample_windows(stream, 5, 20, seed=4))
    with pytest.raises(ValueError, match="fewer than seq_len"):
        sample_windows(torch.arange(10), 2, 20)


def test_tokenize_stream_joins_documents():
    ids = tokenize_stream(["ab", "c"], CharTok())
    assert ids.tolist() == [ord("a") % 96, ord("b") % 96, 10, 10, ord("c") % 96]


def test_text_sources(tmp_path):
    (tmp_path / "one.txt").write_text("first document")
    sub = tmp_path / "dir"
    sub.mkdir()
    (sub / "b.md").write_text("bravo")
    (sub / "a.txt").write_text("alpha")
    (sub / "skip.bin").write_text("x")
    assert load_texts(tmp_path / "one.txt") == ["first document"]
    assert load_texts(sub) == ["alpha", "bravo"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no text"):
        load_texts(empty)
    with pytest.raises(FileNotFoundError):
        load_texts(tmp_path / "missing")


def test_saved_hf_dataset(tmp_path):
    try:
        import datasets  # optional: the 'hf' extra
    except ImportError:  # without it, the error says what to install
        (tmp_path / "ds").mkdir()
        (tmp_path / "ds" / "dataset_info.json").write_text("{}")
        with pytest.raises(ImportError, match="pip install datasets"):
            load_texts(tmp_path / "ds")
        return
    datasets.Dataset.from_dict({"text": ["uno", "dos"], "n": [1, 2]}).save_to_disk(str(tmp_path / "ds"))
    assert load_texts(tmp_path / "ds") == ["uno", "dos"]


def test_calibration_checks():
    with pytest.raises(ValueError, match="empty"):
        Calibration(torch.zeros(0, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        Calibration(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="same length"):
        as_calibration([torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long)])
    with pytest.raises(TypeError, match="Calibration"):
        as_calibration("some text")
    c = as_calibration(torch.ones(3, 8, dtype=torch.long))
    assert c.info["nsamples"] == 3 and c.info["seq_len"] == 8 and len(c.batches(2)) == 2


def test_perplexity_matches_a_direct_computation():
    model = tiny_model("llama")
    stream = torch.randint(0, 96, (100,), generator=torch.Generator().manual_seed(0))
    res = perplexity(model, stream, seq_len=16, batch_size=2)
    win = windows(stream, 16)
    assert win.shape == (6, 16) and res["protocol"]["n_windows"] == 6 and res["tokens"] == 6 * 15
    with torch.no_grad():
        losses = [model(input_ids=w[None], labels=w[None]).loss for w in win]
    assert res["ppl"] == pytest.approx(math.exp(float(torch.stack(losses).mean())), rel=1e-4)
    assert res["protocol"]["tail"] == "dropped" and len(res["protocol"]["hash"]) == 12
    with pytest.raises(ValueError, match="maximum sequence length"):
        perplexity(model, stream, seq_len=65)


def test_fidelity():
    a = torch.randn(5, 8)
    assert embedding_fidelity(a, a) == pytest.approx(1.0)
    assert embedding_fidelity(a, -a) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="shape"):
        embedding_fidelity(a, a[:4])


@pytest.mark.parametrize("shape", [(3, 5), (16, 8), (1, 1)])
def test_mask_packing_round_trip(shape):
    m = torch.rand(shape, generator=torch.Generator().manual_seed(1)) > 0.5
    packed = pack_mask(m)
    assert packed.dtype == torch.uint8 and packed.numel() == (m.numel() + 7) // 8
    assert torch.equal(unpack_mask(packed, shape), m)
    with pytest.raises(ValueError, match="bool"):
        pack_mask(m.float())


def test_model_dir_checks(tmp_path):
    with pytest.raises(FileNotFoundError):
        check_model_dir(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no weights"):
        check_model_dir(tmp_path)


def test_save_refuses_non_empty_folder_and_leaves_no_temp(tmp_path):
    model = tiny_model("gpt2")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        save_pruned(model, out, {}, {})
    assert (out / "keep.txt").read_text() == "mine"

    class Boom(RuntimeError):
        pass

    def broken_save(*a, **k):
        raise Boom

    model.save_pretrained = broken_save
    with pytest.raises(Boom):
        save_pruned(model, tmp_path / "new", {}, {})
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind
