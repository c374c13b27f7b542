"""Quantized folders: smaller than dense, sparse weights stored with a bitmask, reloaded as the same class with
exactly the dequantized weights; ``prunekit llm quantize`` and ``llm eval`` on them."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from prunekit.calibrate import Wanda, prune_blocks
from prunekit.calibrate.io import load_model
from prunekit.cli import app
from prunekit.quant import load_quantized, quantize, save_quantized
from prunekit.quant.format import MANIFEST, WEIGHTS
from prunekit.zoo.tiny_hf import tiny_hf_model, tiny_ids


def _pruned(pattern: str = "unstructured"):
    model = tiny_hf_model("LlamaForCausalLM")
    prune_blocks(model, "wanda", Wanda(0.5 if pattern == "unstructured" else None, pattern=pattern),
                 tiny_ids()).masks.bake()
    return model


def test_round_trip_sizes_and_exact_zeros(tmp_path):
    model = _pruned()
    dense_bytes = sum(p.numel() * 4 for p in model.parameters())
    sizes = {}
    for bits in (8, 4):
        out, man = save_quantized(model, tmp_path / f"q{bits}", bits, 16)
        sizes[bits] = (out / WEIGHTS).stat().st_size
        back = load_quantized(out)
        assert type(back).__name__ == "LlamaForCausalLM"
        src, got = dict(model.named_parameters()), dict(back.named_parameters())
        for name, e in man["quantized"].items():
            assert e["sparse"] and e["kept"] == e["numel"] // 2  # 50%: bitmask + kept codes pay at 4 and 8 bits
            want = quantize(src[name].detach(), bits, 16, src[name] != 0).dequantize()
            assert torch.equal(got[name], want) and torch.equal(got[name] == 0, src[name] == 0)
        assert torch.equal(got["model.embed_tokens.weight"], src["model.embed_tokens.weight"])  # stored as is
        with torch.no_grad():
            assert torch.isfinite(back(input_ids=tiny_ids()).logits).all()
    assert sizes[4] < sizes[8] < dense_bytes


def test_dense_weights_stored_dense_when_a_mask_does_not_pay(tmp_path):
    model = tiny_hf_model("LlamaForCausalLM")
    _, man = save_quantized(model, tmp_path / "q", 4, 16)
    assert not any(e["sparse"] for e in man["quantized"].values())


def test_cli_quantize_then_eval(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    _pruned("2:4").save_pretrained(src)
    runner = CliRunner()
    r = runner.invoke(app, ["llm", "quantize", str(src), "--bits", "4", "--group", "16", "--out", str(out)])
    assert r.exit_code == 0, r.output
    man = json.loads((out / MANIFEST).read_text())
    assert man["bits"] == 4 and man["model_class"] == "LlamaForCausalLM" and "stored sparse" in r.output
    assert (out / WEIGHTS).stat().st_size < (src / "model.safetensors").stat().st_size / 2  # fp32 embeddings kept
    assert type(load_model(out)).__name__ == "LlamaForCausalLM"  # what llm eval and llm prune load
    bad = runner.invoke(app, ["llm", "quantize", str(src), "--bits", "3", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--bits must be one of 4, 8" in bad.output


def test_fused_experts_quantized_routers_kept(tmp_path):
    model = tiny_hf_model("Qwen2MoeForCausalLM")
    prune_blocks(model, "wanda", Wanda(0.5), tiny_ids()).masks.bake()
    out, man = save_quantized(model, tmp_path / "q", 4, 16)
    e = man["quantized"]["model.layers.0.mlp.experts.gate_up_proj"]
    assert e["shape"] == [4, 64, 32] and e["sparse"] and e["kept"] == e["numel"] // 2
    assert {"model.layers.0.mlp.gate.weight", "model.layers.0.mlp.shared_expert_gate.weight"} <= set(man["plain"])
    back = dict(load_quantized(out).named_parameters())
    src = dict(model.named_parameters())
    for name in man["quantized"]:
        assert back[name].shape == src[name].shape and torch.equal(back[name] == 0, src[name] == 0), name
    assert torch.equal(back["model.layers.0.mlp.gate.weight"], src["model.layers.0.mlp.gate.weight"])


def test_group_fallback_is_the_largest_divisor_and_stated(tmp_path):
    from prunekit.quant.format import _group_for

    assert (_group_for(192, 128), _group_for(512, 128), _group_for(7, 4)) == (96, 128, 1)
    _, man = save_quantized(tiny_hf_model("LlamaForCausalLM"), tmp_path / "q", 8, 24)  # 24 divides 64, not 32
    assert man["quantized"]["model.layers.0.self_attn.q_proj.weight"]["group"] == 16
    assert man["quantized"]["model.layers.0.mlp.down_proj.weight"]["group"] == 16  # in = 64: 16 is the largest
    assert "model.layers.0.self_attn.q_proj.weight" in man["group_fallback"]
