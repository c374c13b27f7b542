"""``prune_model_dir`` (what ``llm prune`` runs) on tiny random models of eight families: the saved folder
reloads as the same class, every source tensor is pruned or bit-identical, the manifest's sparsity is the
zeros counted in the saved files, routers and one-output gates are untouched, both stacks of T5 and BART
are pruned."""

from __future__ import annotations

import json

import pytest
import torch

from prunekit.calibrate import SparseGPT, Wanda
from prunekit.calibrate.io import load_manifest
from prunekit.calibrate.pipeline import prune_model_dir
from prunekit.calibrate.verify import TensorReader
from prunekit.patterns import NM, mask_respects
from prunekit.zoo.tiny_hf import FAMILIES, save_tiny_hf, tiny_hf_config, tiny_ids

NAMES = list(FAMILIES)
hf_config, ids = tiny_hf_config, tiny_ids


def save_tiny(name: str, path, seed: int = 0):
    return save_tiny_hf(name, path, seed)


@pytest.mark.parametrize("name", NAMES)
def test_saved_class_and_every_tensor(name, tmp_path):
    import transformers as T

    src = tmp_path / "src"
    save_tiny(name, src)
    report, out = prune_model_dir(src, tmp_path / "out", "wanda", Wanda(0.5, batch_size=3), calibration=ids())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == [name]
    plain = getattr(T, name).from_pretrained(out, local_files_only=True)
    assert type(plain).__name__ == name
    man = load_manifest(out)
    t = man["tensors"]
    with TensorReader(src) as r:
        source = set(r.names())
    assert set(t["pruned"]) | set(t["kept_identical"]) == source and not set(t["pruned"]) & set(t["kept_identical"])
    assert t["counts"] == {"pruned": len(t["pruned"]), "kept_identical": len(t["kept_identical"]), "added": 0,
                           "dropped": 0}
    assert set(man["ledger"]["pruned"]) == {r.name for r in report.layers}
    on_disk = {f for n in man["ledger"]["pruned"] for f in t["renamed"].get(n, [n])}  # transformers' save layout
    assert set(t["pruned"]) == on_disk
    assert man["sparsity"] == pytest.approx(t["counted_sparsity"], abs=1e-12)
    assert man["sparsity"] == pytest.approx(0.5, abs=1e-12)
    assert man["model_class"] == name
    summary = man["ledger"]["summary"]  # labelled: over the pruned tensors, all weight matrices, all parameters
    assert summary["sparsity_pruned_weights"] == pytest.approx(man["sparsity"], abs=1e-12)
    assert summary["sparsity_pruned_weights"] > summary["sparsity_all_weights"]  # embeddings, heads, routers kept
    assert set(summary["labels"]) == {"pruned_weights", "all_weights", "all_parameters"}
    with TensorReader(out) as r:  # the zeros counted here, independently of the check
        zeros = sum(int((r.get(k) == 0).sum()) for k in t["pruned"])
        numel = sum(r.get(k).numel() for k in t["pruned"])
    assert zeros / numel == pytest.approx(man["sparsity"], abs=1e-12)
    assert all(r.sparsity == pytest.approx(0.5, abs=1e-12) for r in report.layers)


def _names(tmp_path, name):
    src = tmp_path / "src"
    save_tiny(name, src)
    _, out = prune_model_dir(src, tmp_path / "out", "wanda", Wanda(0.5), calibration=ids())
    return load_manifest(out)


@pytest.mark.parametrize("name", ["MixtralForCausalLM", "Qwen3MoeForCausalLM", "Qwen2MoeForCausalLM"])
def test_moe_experts_pruned_per_expert_routers_and_one_output_gates_kept(name, tmp_path):
    import transformers as T

    dense = save_tiny(name, tmp_path / "src")
    _, out = prune_model_dir(tmp_path / "src", tmp_path / "out", "sparsegpt", SparseGPT(pattern="2:4", blocksize=16),
                             calibration=ids())
    man, pruned = load_manifest(out), getattr(T, name).from_pretrained(out, local_files_only=True)
    p, d = dict(pruned.named_parameters()), dict(dense.named_parameters())
    kept = {n: r for r, names in man["ledger"]["kept"].items() for n in names}
    for i in range(2):
        mlp = f"model.layers.{i}.mlp"
        for w in ("gate_up_proj", "down_proj"):
            assert f"{mlp}.experts.{w}" in man["ledger"]["pruned"]
            for e in range(4):  # every expert matrix (out, in) exactly 2:4 along its input dimension
                assert mask_respects(p[f"{mlp}.experts.{w}"][e] != 0, NM(2, 4)), (w, e)
        assert torch.equal(p[f"{mlp}.gate.weight"], d[f"{mlp}.gate.weight"]) and kept[f"{mlp}.gate.weight"] == "router"
        assert sum(man["experts"][f"{mlp}.experts.gate_up_proj"]["tokens"]) == 6 * 16 * 2  # top-2 of every token
    if name == "Qwen2MoeForCausalLM":
        g = "model.layers.0.mlp.shared_expert_gate.weight"  # one output: a gate, kept as a router
        assert torch.equal(p[g], d[g]) and kept[g] == "router"
        assert "model.layers.0.mlp.shared_expert.down_proj.weight" in man["ledger"]["pruned"]


def test_task_heads_and_both_stacks_kept_or_pruned(tmp_path):
    cls = _names(tmp_path / "cls", "BertForSequenceClassification")
    assert {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight"} <= set(cls["tensors"]["kept_identical"])
    assert {"classifier.weight", "bert.pooler.dense.weight"} <= set(cls["ledger"]["kept"]["head"])
    bart = _names(tmp_path / "bart", "BartForConditionalGeneration")
    assert "final_logits_bias" in bart["tensors"]["kept_identical"]
    assert bart["stacks"] == ["model.encoder.layers", "model.decoder.layers"]
    pruned = set(bart["tensors"]["pruned"])
    assert {"model.encoder.layers.1.fc1.weight", "model.decoder.layers.1.encoder_attn.k_proj.weight"} <= pruned
    t5 = _names(tmp_path / "t5", "T5ForConditionalGeneration")
    assert t5["stacks"] == ["encoder.block", "decoder.block"]
    assert {"encoder.block.0.layer.0.SelfAttention.q.weight",
            "decoder.block.1.layer.1.EncDecAttention.k.weight"} <= set(t5["tensors"]["pruned"])
