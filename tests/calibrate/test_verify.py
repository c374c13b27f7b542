"""The saved-vs-source check: every tensor pruned or bit-identical, or a clear error naming the tensor."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from prunekit.calibrate.io import save_pruned
from prunekit.calibrate.verify import SavedModelMismatch, bit_identical, compare_saved
from prunekit.zoo.tiny_hf import save_tiny_hf

W = "model.layers.0.mlp.down_proj.weight"


def _copy_with(src, dst, edit):
    dst.mkdir()
    sd = load_file(src / "model.safetensors")
    edit(sd)
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})


def test_pruned_identical_changed_missing_and_leaks(tmp_path):
    src = tmp_path / "src"
    save_tiny_hf("LlamaForCausalLM", src)
    sd = load_file(src / "model.safetensors")
    mask = torch.ones_like(sd[W], dtype=torch.bool)
    mask[0, :4] = False

    def prune(d):
        d[W] = d[W] * mask

    _copy_with(src, tmp_path / "ok", prune)
    got = compare_saved(src, tmp_path / "ok", {W: mask})
    assert got["pruned"] == [W] and len(got["kept_identical"]) == len(sd) - 1
    assert got["counted_zeros"] == 4 and got["counted_numel"] == sd[W].numel()
    _copy_with(src, tmp_path / "changed", lambda d: d["model.norm.weight"].add_(1e-3))
    with pytest.raises(SavedModelMismatch, match=r"changed but not pruned: \['model.norm.weight'\]"):
        compare_saved(src, tmp_path / "changed", {})
    _copy_with(src, tmp_path / "missing", lambda d: d.pop("model.norm.weight"))
    with pytest.raises(SavedModelMismatch, match=r"missing from the output: \['model.norm.weight'\]"):
        compare_saved(src, tmp_path / "missing", {})
    with pytest.raises(SavedModelMismatch, match="non-zero where the mask prunes"):
        compare_saved(src, src, {W: mask})  # the dense weights are not zero where the mask prunes


def test_a_failed_check_writes_nothing(tmp_path):
    model = save_tiny_hf("LlamaForCausalLM", tmp_path / "src")
    with torch.no_grad():
        model.model.norm.weight.add_(1.0)  # changed, but no mask says it was pruned
    with pytest.raises(SavedModelMismatch, match="model.norm.weight"):
        save_pruned(model, tmp_path / "out", {}, {"method": {}}, source_dir=tmp_path / "src")
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_bit_identical_compares_bits():
    a = torch.tensor([0.0, float("nan")])
    assert bit_identical(a, a.clone()) and not bit_identical(a, torch.tensor([-0.0, float("nan")]))
    assert not bit_identical(a, a.double())


def test_a_non_persistent_buffer_in_the_source_is_listed_as_dropped(tmp_path):
    src = tmp_path / "src"
    save_tiny_hf("LlamaForCausalLM", src)
    sd = load_file(src / "model.safetensors")
    sd["model.embeddings.position_ids"] = torch.arange(8)[None]  # as a transformers 4.x BERT checkpoint has it
    save_file(sd, src / "model.safetensors", metadata={"format": "pt"})
    _copy_with(src, tmp_path / "out", lambda d: d.pop("model.embeddings.position_ids"))
    got = compare_saved(src, tmp_path / "out", {}, not_saved={"model.embeddings.position_ids"})
    assert got["dropped"] == ["model.embeddings.position_ids"] and got["counts"]["dropped"] == 1
    with pytest.raises(SavedModelMismatch, match="missing from the output"):
        compare_saved(src, tmp_path / "out", {})  # without the model's word it is still an error
