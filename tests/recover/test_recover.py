"""Recovery after pruning on a tiny LLaMA: trainable sets counted by hand, masks kept exactly, CLI end to end."""

from __future__ import annotations

import copy
import json
import sqlite3

import pytest
import torch
from typer.testing import CliRunner

from prunekit.cli import app
from prunekit.recover import Recovery, pruned_nonzeros, recover_, target_linears
from prunekit.recover.params import RowScales, ScaleLoRA, perp_parameters
from prunekit.zoo.tiny_hf import VOCAB, tiny_hf_model

runner = CliRunner()
STREAM = torch.randint(3, VOCAB, (2000,), generator=torch.Generator().manual_seed(1))


def halved(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Zero a seeded random half of every linear weight of the blocks; return the masks (True = keep)."""
    gen, masks = torch.Generator().manual_seed(0), {}
    with torch.no_grad():
        for name in target_linears(model, {}):
            w = model.get_submodule(name).weight
            m = torch.rand(w.shape, generator=gen) > 0.5
            w.mul_(m)
            masks[f"{name}.weight"] = m
    return masks


def test_perp_trains_only_norms_of_llama():
    model = tiny_hf_model("LlamaForCausalLM")
    # LLaMA has no bias: 2 RMSNorms per block (hidden 32) x 2 blocks + the final norm
    assert sum(p.numel() for p in perp_parameters(model).values()) == 2 * 2 * 32 + 32
    masks = halved(model)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    info = recover_(model, STREAM, Recovery("perp", steps=3, seq_len=16, batch_size=2, lr=1e-2), masks)
    assert info["trainable_params"] == 160 and info["steps_done"] == 3 and info["pruned_nonzero"] == 0
    after = dict(model.named_parameters())
    changed = {k for k in before if not torch.equal(before[k], after[k].detach())}
    assert changed and all("norm" in k for k in changed)


def test_add_bias_zero_start_trains_and_reloads(tmp_path):
    import transformers as T

    from prunekit.calibrate.io import save_hf_pruned

    model = tiny_hf_model("LlamaForCausalLM")
    masks = halved(model)
    ids = STREAM[:32].reshape(2, 16)
    ref = model(input_ids=ids).logits.detach()
    info = recover_(model, STREAM, Recovery("perp", steps=3, seq_len=16, batch_size=2, lr=1e-2, add_bias=True), masks)
    # 2 blocks x (q 32 + k 16 + v 16 + o 32 + gate 64 + up 64 + down 32) biases + the 160 norm values
    assert info["trainable_params"] == 160 + 2 * (32 + 16 + 16 + 32 + 64 + 64 + 32)
    assert model.config.attention_bias and model.config.mlp_bias and info["pruned_nonzero"] == 0
    assert not torch.allclose(model(input_ids=ids).logits, ref)  # the biases trained
    biases = {k: v.detach().clone() for k, v in model.named_parameters() if k.endswith("proj.bias")}
    assert len(biases) == 14 and all(v.abs().sum() > 0 for v in biases.values())
    save_hf_pruned(model, tmp_path / "o", masks, {"method": "test"})
    back = dict(T.AutoModelForCausalLM.from_pretrained(tmp_path / "o").named_parameters())
    assert all(torch.equal(back[k], v) for k, v in biases.items())


def test_add_bias_at_zero_changes_nothing_and_needs_the_config_fields():
    from prunekit.recover.params import add_biases

    model = tiny_hf_model("LlamaForCausalLM")
    ids = STREAM[:32].reshape(2, 16)
    ref = model(input_ids=ids).logits.detach()
    added = add_biases(model)
    assert len(added) == 14 and torch.equal(model(input_ids=ids).logits.detach(), ref)
    bert = tiny_hf_model("BertModel")
    with pytest.raises(ValueError, match="attention_bias / mlp_bias"):
        add_biases(bert)
    with pytest.raises(ValueError, match="add_bias applies to the perp"):
        Recovery("lora", add_bias=True)


@pytest.mark.parametrize("columns", [False, True])  # columns too: rank-1 ScaleLoRA, diag(b) W diag(a)
def test_row_scales_merge_is_exact_and_keeps_zeros(columns):
    model = tiny_hf_model("LlamaForCausalLM")
    masks = halved(model)
    layers = target_linears(model, masks)
    rs = RowScales(model, layers, rows=True, columns=columns)
    with torch.no_grad():
        for s in rs.parameters().values():
            s.uniform_(0.5, 1.5)
    ids = STREAM[:32].reshape(2, 16)
    hooked = model(input_ids=ids).logits
    rs.merge()
    assert torch.allclose(model(input_ids=ids).logits, hooked, atol=1e-5)
    assert pruned_nonzeros(model, masks) == 0
    assert sum(s.numel() for s in rs.parameters().values()) == sum(
        model.get_submodule(n).out_features + columns * model.get_submodule(n).in_features for n in layers)


def test_row_and_column_scales_merge_by_hand():
    lin = torch.nn.Linear(2, 2, bias=False)  # by hand: W' = diag(b) W diag(a)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [2.0, 3.0]]))
    one = RowScales(torch.nn.Sequential(lin), ["0"], rows=True, columns=True)
    with torch.no_grad():
        one.scales["0"].copy_(torch.tensor([2.0, 0.5]))
        one.col_scales["0"].copy_(torch.tensor([10.0, -1.0]))
    one.merge()
    assert torch.equal(lin.weight, torch.tensor([[20.0, 0.0], [10.0, -1.5]]))


def test_scale_lora_by_hand_starts_at_identity_and_merges_exactly():
    lin = torch.nn.Linear(3, 2, bias=False)  # by hand: W' = W * (B A)
    W = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, -1.0]])
    with torch.no_grad():
        lin.weight.copy_(W)
    net = torch.nn.Sequential(lin)
    sl = ScaleLoRA(net, ["0"], rank=2, seed=0)
    x = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.allclose(net(x), x @ W.T)  # B A is all ones at the start
    f = sl.factors["0"]
    with torch.no_grad():
        f.B.copy_(torch.tensor([[1.0, 2.0], [0.5, 0.0]]))
        f.A.copy_(torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, -1.0]]))
    # B A = [[1, 3, -1], [0.5, 0.5, 0.5]]
    expect = torch.tensor([[1.0, 0.0, -2.0], [0.0, 1.5, -0.5]])
    assert torch.allclose(net(x), x @ expect.T)
    assert sorted(sl.parameters()) == ["0.scale_A", "0.scale_B"]
    sl.merge()
    assert type(net[0].weight) is torch.nn.Parameter and not net[0].weight.requires_grad
    assert torch.equal(net[0].weight, expect)


def test_perp_scale_rank_trains_factors_only_and_keeps_the_pattern():
    model = tiny_hf_model("LlamaForCausalLM")
    masks = halved(model)
    before = {k: model.get_parameter(k).detach().clone() for k in masks}
    cfg = Recovery("perp", steps=4, seq_len=16, batch_size=2, lr=2e-2, scale_rank=3)
    info = recover_(model, STREAM, cfg, masks)
    layers = target_linears(model, masks)
    lins = [model.get_submodule(n) for n in layers]
    assert info["trainable_params"] == sum(3 * (m.in_features + m.out_features) for m in lins) + 2 * 2 * 32 + 32
    assert info["pruned_nonzero"] == 0 and info["layers_adapted"] == len(layers)
    assert all(type(m.weight) is torch.nn.Parameter for m in lins)  # parametrizations removed
    assert not any("parametrizations" in k for k in model.state_dict())
    assert any(not torch.equal(model.get_parameter(k), v) for k, v in before.items())  # kept weights rescaled


def test_masked_lora_keeps_zeros_identical_and_changes_kept_weights():
    pytest.importorskip("peft")
    model = tiny_hf_model("LlamaForCausalLM")
    masks = halved(model)
    before = {k: model.get_parameter(k).detach().clone() for k in masks}
    cfg = Recovery("lora", steps=4, seq_len=16, batch_size=2, lr=2e-2, lora_rank=2)
    info = recover_(model, STREAM, cfg, masks)
    # rank 2 on every block linear: q,k,v,o (32->32, 32->16, 32->16, 32->32), gate/up (32->64), down (64->32)
    per_block = sum(2 * (i + o) for i, o in ((32, 32), (32, 16), (32, 16), (32, 32), (32, 64), (32, 64), (64, 32)))
    assert info["trainable_params"] == 2 * per_block
    assert not any("lora" in n for n, _ in model.named_parameters())  # merged and unwrapped
    for k, m in masks.items():
        w = model.get_parameter(k).detach()
        assert torch.equal(w == 0, before[k] == 0)  # zeros identical before / after
        assert not torch.equal(w[m], before[k][m])  # the kept weights did change


def test_distill_all_keeps_the_mask_and_needs_a_teacher():
    model = tiny_hf_model("LlamaForCausalLM")
    teacher = copy.deepcopy(model)
    masks = halved(model)
    cfg = Recovery("distill", steps=3, seq_len=16, batch_size=2, lr=1e-2)
    with pytest.raises(ValueError, match="teacher"):
        recover_(copy.deepcopy(model), STREAM, cfg, masks)
    info = recover_(model, STREAM, cfg, masks, teacher=teacher)
    assert info["trained"] == "all" and info["trainable_params"] == sum(p.numel() for p in model.parameters())
    assert pruned_nonzeros(model, masks) == 0
    assert info["first_loss"] > 0  # the pruned student differs from its teacher
    from prunekit.recover.loop import kd_loss

    assert float(kd_loss(teacher, 2.0)(teacher, STREAM[:32].reshape(2, 16))) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("bad", [dict(method="sgd"), dict(steps=0), dict(lr=-1.0), dict(distill_params="x"),
                                 dict(scale_rank=0), dict(scale_rank=2, method="lora"),
                                 dict(scale_rank=2, linear_scale=True)])
def test_bad_config_names_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad)) if "method" not in bad else "method"):
        Recovery(**bad)


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory):
    import transformers as T

    from prunekit.calibrate.pipeline import prune_model_dir
    from prunekit.registry import METHODS
    from prunekit.zoo.lm import train_tokenizer

    root = tmp_path_factory.mktemp("rec")
    texts = [f"Return the {w} of x plus {i}; raise ValueError when x is negative." for i, w in
             enumerate(["sum", "mean", "norm", "square root", "length", "maximum"] * 20)]
    (root / "train.txt").write_text("\n\n".join(texts))
    tok = train_tokenizer(texts, 280)
    cfg = T.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=64, vocab_size=len(tok), max_position_embeddings=64)
    torch.manual_seed(0)
    T.LlamaForCausalLM(cfg).save_pretrained(root / "dense")
    tok.save_pretrained(root / "dense")
    conf = METHODS.config("calibrated-magnitude", kind="calibrated")(sparsity=0.5)
    ids = torch.randint(3, len(tok), (4, 32), generator=torch.Generator().manual_seed(0))
    prune_model_dir(root / "dense", root / "pruned", "calibrated-magnitude", conf, calibration=ids)
    return root


def test_cli_recover_lora_end_to_end(pruned_dir, tmp_path):
    pytest.importorskip("peft")
    from prunekit.calibrate.io import load_masks, load_model

    out, db = tmp_path / "rec", tmp_path / "r.sqlite"
    r = runner.invoke(app, ["recover", str(pruned_dir / "pruned"), "--method", "lora", "--steps", "3",
                            "--seq-len", "32", "--batch-size", "2", "--max-windows", "2", "--out", str(out),
                            "--texts", str(pruned_dir / "train.txt"), "--eval-texts", str(pruned_dir / "train.txt"),
                            "--db", str(db)])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["ppl_before"] > 0 and m["ppl_after"] > 0 and m["ppl_dense"] > 0 and m["pruned_nonzero"] == 0
    assert m["dense"] == str(pruned_dir / "dense")  # found through the pruned folder's manifest
    masks_in, _ = load_masks(pruned_dir / "pruned")
    masks_out, man = load_masks(out)
    assert man["recovery"]["method"] == "lora" and man["source_model"] == str(pruned_dir / "dense")
    w = dict(load_model(out).named_parameters())
    for k, mk in masks_in.items():
        assert torch.equal(masks_out[k], mk) and torch.equal(w[k] != 0, mk)
    rows = sqlite3.connect(db).execute("SELECT experiment, metrics FROM runs").fetchall()
    assert rows[0][0] == "recover" and json.loads(rows[0][1])["trainable_params"] == m["trainable_params"]


@pytest.mark.parametrize("args,msg", [(["--method", "sgd"], "--method must be one of"),
                                      (["--steps", "0"], "steps must be an integer"),
                                      (["--texts", "/nope.txt"], "--texts /nope.txt does not exist"),
                                      (["--method", "lora", "--add-bias"], "add_bias applies to the perp"),
                                      (["--scale-rank", "0"], "scale_rank must be an integer >= 1"),
                                      (["--scale-rank", "2", "--linear-scale"], "drop linear_scale")])
def test_cli_bad_flags_fail_before_work(pruned_dir, tmp_path, args, msg):
    out = tmp_path / "x"
    r = runner.invoke(app, ["recover", str(pruned_dir / "pruned"), "--out", str(out), *args])
    assert r.exit_code == 2 and msg in r.output and not out.exists()


def test_cli_add_bias_refused_without_the_config_fields(pruned_dir, tmp_path):
    import shutil

    src = tmp_path / "nobias"
    shutil.copytree(pruned_dir / "pruned", src)
    cfg = json.loads((src / "config.json").read_text())
    cfg.pop("attention_bias"), cfg.pop("mlp_bias")
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "x"
    r = runner.invoke(app, ["recover", str(src), "--add-bias", "--out", str(out)])
    assert r.exit_code == 2 and "attention_bias / mlp_bias" in r.output and not out.exists()


def test_recover_a_structured_folder_with_the_dense_tokenizer(pruned_dir, tmp_path):
    from prunekit.calibrate.io import load_model
    from prunekit.recover import recover_dir
    from prunekit.structured import Structured, load_structured, remove_, save_structured

    model = load_model(pruned_dir / "dense")
    ids = {"input_ids": torch.randint(3, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))}
    plan = remove_(model, ids, Structured(sparsity=0.5))
    save_structured(model, plan, tmp_path / "slim")
    texts = (pruned_dir / "train.txt").read_text().split("\n\n")
    cfg = Recovery("perp", steps=2, seq_len=32, batch_size=2)
    with pytest.raises(ValueError, match="pass --dense DIR"):
        recover_dir(tmp_path / "slim", tmp_path / "bad", cfg, texts=texts, eval_texts=texts)
    m = recover_dir(tmp_path / "slim", tmp_path / "rec", cfg, texts=texts, eval_texts=texts,
                    dense=pruned_dir / "dense", max_windows=2)
    assert m["kind"] == "structured" and m["trainable_params"] == 2 * 2 * 32 + 32 and m["ppl_after"] > 0
    slim = load_structured(tmp_path / "rec")
    assert slim.config.intermediate_size == 32  # still the slim widths
    norms = [k for k in slim.state_dict() if "norm" in k]
    assert any(not torch.equal(slim.state_dict()[k], model.state_dict()[k]) for k in norms)  # PERP trained them
