"""MoE models: 50% unstructured pruning zeros exactly half of every expert matrix (routed statistics, stated
fallback); expert removal by REAP / frequency / random slices routers and experts, clips top-k, updates
the config, and the saved folder reloads with plain ``AutoModelForCausalLM`` and runs."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from typer.testing import CliRunner

from prunekit.calibrate import SparseGPT, Wanda, prune_blocks
from prunekit.calibrate.moe import find_moe_layers, keep_count, remove_experts, router_statistics
from prunekit.cli import app
from prunekit.zoo.tiny_hf import tiny_hf_config, tiny_hf_model, tiny_ids

MOE = ["MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"]


@pytest.mark.parametrize("name", MOE)
def test_half_of_every_expert_matrix_is_zero(name):
    for solver, cfg in (("wanda", Wanda(0.5)), ("sparsegpt", SparseGPT(0.5, blocksize=16))):
        model = tiny_hf_model(name)
        report = prune_blocks(model, solver, cfg, tiny_ids())
        for m in find_moe_layers(model):
            for attr in ("gate_up_proj", "down_proj"):
                p = getattr(m.experts, attr)  # (E, out, in)
                for e in range(p.shape[0]):
                    assert int((p[e] == 0).sum()) == p[e].numel() // 2, (solver, m.name, attr, e)
            info = report.extra["experts"][f"{m.name}.experts.gate_up_proj"]
            assert sum(info["tokens"]) == 6 * 16 * 2 and info["fallback_magnitude"] == []  # top-2 of 96 tokens


def _never_route_to(model, banned: int) -> None:
    """Replace each router's choice: the top-2 among experts other than ``banned``."""
    for m in find_moe_layers(model):
        router = m.router

        def route(h, r=router):
            h = h.reshape(-1, h.shape[-1])
            logits = h @ r.weight.t()
            logits[:, banned] = -torch.inf
            w, idx = logits.softmax(-1).topk(2, dim=-1)
            return logits, w / w.sum(-1, keepdim=True), idx

        router.forward = route


def test_unrouted_expert_gets_the_stated_fallback(caplog):
    model = tiny_hf_model("Qwen3MoeForCausalLM")
    _never_route_to(model, 1)
    with caplog.at_level(logging.WARNING, logger="prunekit.calibrate.engine"):
        report = prune_blocks(model, "wanda", Wanda(0.5), tiny_ids())
    for i in range(2):
        for attr in ("gate_up_proj", "down_proj"):
            assert report.extra["expert_fallbacks"][f"model.layers.{i}.mlp.experts.{attr}"] == [1]
    assert "model.layers.0.mlp.experts.down_proj.1 received no calibration token" in caplog.text
    p = model.model.layers[0].mlp.experts.down_proj[1]
    assert int((p == 0).sum()) == p.numel() // 2  # pruned all the same, by magnitude


def test_reap_and_frequency_by_hand():
    model = tiny_hf_model("MixtralForCausalLM")
    mlp = model.model.layers[0].mlp
    seen = []
    h = mlp.experts.register_forward_hook(lambda _m, args, _o: seen.append([a.detach().clone() for a in args]))
    ids = tiny_ids(n=2, seq=8)
    stats = router_statistics(model, [ids])["model.layers.0.mlp"]
    h.remove()
    x, idx, w = seen[0]  # (T, H), (T, 2), (T, 2)
    E = mlp.experts
    for e in range(4):
        g, norms = [], []
        for t in range(x.shape[0]):
            if e in idx[t].tolist():
                gate, up = (E.gate_up_proj[e] @ x[t]).chunk(2)
                f = E.down_proj[e] @ (torch.nn.functional.silu(gate) * up)  # (H,) expert output
                g.append(float(w[t][idx[t] == e].sum()))
                norms.append(float(f.detach().norm()))
        assert int(stats.tokens[e]) == len(g)
        want = sum(a * b for a, b in zip(g, norms)) / max(len(g), 1)
        assert float(stats.score("reap")[e]) == pytest.approx(want, rel=1e-5)
    assert stats.n_tokens == 16 and int(stats.tokens.sum()) == 32


@pytest.mark.parametrize("name", MOE)
def test_removal_equals_routing_only_to_the_kept_experts(name):
    model, ref = tiny_hf_model(name), tiny_hf_model(name)
    ids = tiny_ids()
    stats = router_statistics(model, [ids])
    rep = remove_experts(model, 0.5, "reap", stats)
    assert rep.experts_after == 2 and rep.top_k_after == 2 and rep.params_after < rep.params_before
    for m, r in zip(find_moe_layers(model), find_moe_layers(ref)):
        kept = rep.layers[m.name]["kept"]
        s = stats[m.name].score("reap")
        assert set(kept) == set(torch.topk(s, 2).indices.tolist())  # the two highest REAP saliencies
        assert torch.equal(m.router.weight, r.router.weight[kept])
        assert torch.equal(m.experts.down_proj, r.experts.down_proj[kept])
        removed = rep.layers[m.name]["removed"]

        def masked(h, rt=r.router, removed=removed):  # the reference: removed experts' logits at -inf
            h = h.reshape(-1, h.shape[-1])
            logits = h @ rt.weight.t()
            logits[:, removed] = -torch.inf
            p = logits.float().softmax(-1)
            top, idx = p.topk(rt.top_k, dim=-1)
            if getattr(rt, "norm_topk_prob", True):
                top = top / top.sum(-1, keepdim=True)
            return logits, top, idx

        r.router.forward = masked
    cfg = model.config
    assert getattr(cfg, "num_local_experts", getattr(cfg, "num_experts", None)) == 2
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, ref(input_ids=ids).logits, atol=1e-5)


def test_top_k_clipped_and_bad_arguments():
    model = tiny_hf_model("Qwen2MoeForCausalLM")
    rep = remove_experts(model, 0.25, "random", seed=3)
    assert (rep.experts_after, rep.top_k_before, rep.top_k_after) == (1, 2, 1)
    assert model.config.num_experts_per_tok == 1 and all(m.router.top_k == 1 for m in find_moe_layers(model))
    assert model(input_ids=tiny_ids()).logits.shape == (6, 16, 96)
    assert keep_count(8, 0.5) == 4 and keep_count(8, 0.01) == 1
    with pytest.raises(ValueError, match="keep must be a fraction"):
        keep_count(8, 0.0)
    with pytest.raises(ValueError, match="needs router statistics"):
        remove_experts(tiny_hf_model("MixtralForCausalLM"), 0.5, "reap")
    with pytest.raises(ValueError, match="no sparse MoE layer"):
        remove_experts(tiny_hf_model("LlamaForCausalLM"), 0.5, "random")


def test_cli_experts_saves_a_model_plain_transformers_loads(tmp_path):
    import transformers as T
    from transformers import AutoModelForCausalLM

    from prunekit.zoo.lm import train_tokenizer

    src, out = tmp_path / "src", tmp_path / "out"
    words = "the router sends every token to two experts and each expert is a small gated MLP".split()
    docs = [" ".join(words[(i * 7 + j) % len(words)] for j in range(60)) for i in range(40)]  # no corpus parse
    tok = train_tokenizer(docs, 280)
    text = tmp_path / "calib.txt"
    text.write_text("\n\n".join(docs))
    cfg = tiny_hf_config("MixtralForCausalLM")
    cfg.vocab_size = len(tok)
    torch.manual_seed(0)
    T.MixtralForCausalLM(cfg).save_pretrained(src)
    tok.save_pretrained(src)
    runner = CliRunner()
    r = runner.invoke(app, ["llm", "experts", str(src), "--keep", "0.5", "--score", "frequency", "--out", str(out),
                            "--nsamples", "4", "--seq-len", "16", "--calib", str(text)])
    assert r.exit_code == 0, r.output
    assert "model.layers.0.mlp: removed experts" in r.output and "experts per layer 4 -> 2" in r.output
    rec = json.loads((out / "prunekit_experts.json").read_text())
    assert rec["kind"] == "moe-experts" and rec["reload"]["experts_per_layer"] == [2]
    layer = rec["layers"]["model.layers.0.mlp"]
    assert len(layer["kept"]) == 2 and sorted(layer["kept"] + layer["removed"]) == [0, 1, 2, 3]
    assert min(layer["tokens"][e] for e in layer["kept"]) >= max(layer["tokens"][e] for e in layer["removed"])
    plain = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert type(plain).__name__ == "MixtralForCausalLM" and plain.config.num_local_experts == 2
    assert plain.model.layers[1].mlp.experts.gate_up_proj.shape[0] == 2
    bad = runner.invoke(app, ["llm", "experts", str(src), "--score", "biggest", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--score must be one of reap, frequency, random" in bad.output
    again = runner.invoke(app, ["llm", "experts", str(src), "--out", str(out)])
    assert again.exit_code == 2 and not (tmp_path / "x").exists()  # a non-empty --out is refused
