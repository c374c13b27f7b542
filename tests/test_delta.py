"""Delta pruning and merging: DARE / DAREx-q / magnitude / task arithmetic / TIES by hand, and the CLI."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch
from typer.testing import CliRunner

from prunekit import delta as D
from prunekit.cli import app

runner = CliRunner()


def test_task_vector_and_errors():
    base = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    tuned = {"w": torch.tensor([1.5, 1.0]), "n": torch.tensor(3)}
    assert torch.equal(D.task_vector(base, tuned)["w"], torch.tensor([0.5, -1.0]))
    assert "n" not in D.task_vector(base, tuned)
    with pytest.raises(ValueError, match="differ in tensors"):
        D.task_vector(base, {"w": tuned["w"]})
    with pytest.raises(ValueError, match="non-floating tensor 'n' differs"):
        D.task_vector(base, {**tuned, "n": torch.tensor(4)})


def test_split_tuned_strips_the_prefix_and_keeps_the_new_head_whole():
    base = {"enc.w": torch.tensor([1.0, 2.0]), "emb": torch.tensor([0.0, 1.0]), "ids": torch.tensor([0, 1])}
    tuned = {"bert.enc.w": torch.tensor([1.5, 2.0]), "bert.emb": torch.tensor([0.0, 0.5]),
             "bert.ids": torch.tensor([0, 1]), "classifier.weight": torch.tensor([[3.0, -1.0]])}
    shared, new, prefix = D.split_tuned(base, tuned)
    assert prefix == "bert." and set(shared) == set(base) and list(new) == ["classifier.weight"]
    tau = D.task_vector(base, shared)
    assert torch.equal(tau["enc.w"], torch.tensor([0.5, 0.0])) and torch.equal(tau["emb"], torch.tensor([0.0, -0.5]))
    back = D.rebuild(base, tau, new, prefix)
    assert set(back) == set(tuned) and all(torch.equal(back[k], tuned[k]) for k in tuned)
    half = D.rebuild(base, tau, new, prefix, scale=0.5)
    assert torch.equal(half["bert.enc.w"], torch.tensor([1.25, 2.0]))
    assert torch.equal(half["classifier.weight"], tuned["classifier.weight"])  # the head is not scaled
    assert D.split_tuned(base, {k[5:] if k.startswith("bert.") else k: v for k, v in tuned.items()})[2] == ""


def test_split_tuned_errors_name_the_problem():
    base = {"a.w": torch.zeros(2), "b": torch.zeros(1)}
    with pytest.raises(ValueError, match="no prefix maps"):
        D.split_tuned(base, {"x.c.w": torch.zeros(2)})
    with pytest.raises(ValueError, match="no tuned counterpart under prefix 'm.'"):
        D.split_tuned(base, {"m.a.w": torch.zeros(2)}, prefix="m.")
    with pytest.raises(ValueError, match="several prefixes"):
        D.split_tuned(base, {"p.a.w": torch.zeros(2), "p.b": torch.zeros(1), "q.a.w": torch.zeros(2),
                             "q.b": torch.zeros(1)})
    with pytest.raises(ValueError, match="collide"):
        D.rebuild(base, {}, {"b": torch.ones(1)})


def test_dare_drops_at_rate_and_rescales_survivors():
    tau = {"w": torch.full((100_000,), 0.2)}
    out = D.dare(tau, 0.9, seed=0)["w"]
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.1) < 0.005  # Bernoulli(1 - p) keep
    assert torch.allclose(out[kept], torch.tensor(2.0))  # 0.2 / (1 - 0.9)
    assert abs(out.mean().item() - 0.2) < 0.01  # expectation unchanged
    assert torch.equal(D.dare(tau, 0.9, seed=0)["w"], out)  # seeded


def test_darex_q_uses_the_same_mask_with_rescale_one_over_q():
    tau = {"w": torch.randn(1000, generator=torch.Generator().manual_seed(0))}
    dare, darex = D.dare(tau, 0.9, seed=3)["w"], D.darex(tau, 0.9, 0.5, seed=3)["w"]
    assert torch.equal(dare != 0, darex != 0)
    assert torch.allclose(darex[darex != 0], dare[dare != 0] * 0.1 / 0.5)
    with pytest.raises(ValueError, match="q must be in"):
        D.darex(tau, 0.9, 0.0)


def test_tune_q_picks_the_lowest_loss_and_grid_spans_dare_to_one():
    grid = D.q_grid(0.99, 5)
    assert grid[0] == pytest.approx(0.01) and grid[-1] == pytest.approx(1.0)
    q, table = D.tune_q(lambda q: (q - 0.1) ** 2, 0.99, grid)
    assert q == pytest.approx(0.1) and len(table) == 5


def test_magnitude_keeps_exact_largest():
    tau = {"w": torch.tensor([0.1, -0.5, 0.3, -0.05, 0.2, 0.0, 0.4, -0.35, 0.0, 0.01])}
    out = D.magnitude(tau, 0.7)["w"]
    assert torch.equal(out, torch.tensor([0.0, -0.5, 0.0, 0.0, 0.0, 0.0, 0.4, -0.35, 0.0, 0.0]))


def test_task_arithmetic_and_ties_by_hand():
    a = {"w": torch.tensor([1.0, -2.0, 0.5, 3.0])}
    b = {"w": torch.tensor([1.0, 1.0, -0.5, -1.0])}
    assert torch.equal(D.merge_deltas([a, b], lam=0.5)["w"], torch.tensor([1.0, -0.5, 0.0, 1.0]))
    # ties at density 1: signs elected from the sums (+, -, 0, +); mean of the agreeing entries
    assert torch.equal(D.merge_deltas([a, b], "ties", density=1.0)["w"], torch.tensor([1.0, -2.0, 0.0, 3.0]))
    # density 0.5 trims a to (-2, 3) and b to (1, 1) at positions 0,1 (ties broken by topk): check the elected sum
    t = D.ties([a, b], 0.5)["w"]
    assert t[3] == 3.0 and t[2] == 0.0
    with pytest.raises(ValueError, match="at least two"):
        D.merge_deltas([a])


def test_unlabeled_q_tuning_matches_outputs():
    torch.manual_seed(0)
    net = torch.nn.Linear(8, 3)
    base = {k: v.detach().clone() for k, v in net.state_dict().items()}
    tuned = {k: v + 0.01 * torch.randn_like(v) for k, v in base.items()}
    tau = D.task_vector(base, tuned)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    q, table = D.tune_q_unlabeled(net, base, tuned, tau, 0.9, x)
    assert min(t[1] for t in table) == dict(table)[q]
    assert all(torch.equal(net.state_dict()[k], tuned[k]) for k in tuned)  # left holding the tuned weights


@pytest.fixture
def family(tmp_path):
    from prunekit.checkpoint import save_checkpoint
    from prunekit.zoo import get_model

    spec = {"name": "mlp", "kwargs": {"in_features": 40, "hidden": [16], "num_classes": 10}}
    base = get_model("mlp", seed=0, **spec["kwargs"])
    save_checkpoint(tmp_path / "base", base, spec)
    for i, name in enumerate(("a", "b")):
        g = torch.Generator().manual_seed(10 + i)
        with torch.no_grad():
            for p in base.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
        save_checkpoint(tmp_path / name, base, spec)
    return tmp_path


def test_cli_delta_prune_and_merge(family):
    from prunekit.checkpoint import load_checkpoint

    out, db = family / "pruned", family / "r.sqlite"
    r = runner.invoke(app, ["delta", "prune", str(family / "base"), str(family / "a"), "--method", "magnitude",
                            "--rate", "0.9", "--out", str(out), "--db", str(db)])
    assert r.exit_code == 0, r.output
    base, _, _ = load_checkpoint(family / "base")
    pruned, man, _ = load_checkpoint(out)
    tau = D.task_vector(base.state_dict(), pruned.state_dict())
    n = sum(v.numel() for v in tau.values())
    assert sum(int((v != 0).sum()) for v in tau.values()) == man["delta"]["nonzero_after"]
    assert man["delta"]["nonzero_after"] == pytest.approx(0.1 * n, abs=len(tau))
    r = runner.invoke(app, ["delta", "merge", str(family / "base"), str(family / "a"), str(family / "b"),
                            "--lam", "0.5", "--out", str(family / "merged"), "--db", str(db)])
    assert r.exit_code == 0, r.output
    merged, _, _ = load_checkpoint(family / "merged")
    a, b = load_checkpoint(family / "a")[0].state_dict(), load_checkpoint(family / "b")[0].state_dict()
    m = merged.state_dict()
    assert all(torch.allclose(m[k], (a[k] + b[k]) / 2, atol=1e-6) for k in m)  # base + 0.5 (tau_a + tau_b)
    rows = sqlite3.connect(db).execute("SELECT experiment FROM runs").fetchall()
    assert sorted(rows) == [("delta-merge",), ("delta-prune",)]
    assert json.loads(sqlite3.connect(db).execute("SELECT config FROM runs WHERE experiment='delta-prune'")
                      .fetchone()[0])["method"] == "magnitude"


@pytest.mark.parametrize("args,msg", [(["--rate", "1.0"], "--rate must be a drop fraction"),
                                      (["--method", "drop"], "--method must be one of"),
                                      (["--q", "0.5"], "--q is DAREx-q's rescale")])
def test_cli_delta_bad_flags(family, args, msg):
    r = runner.invoke(app, ["delta", "prune", str(family / "base"), str(family / "a"), "--out", str(family / "x"),
                            *args])
    assert r.exit_code == 2 and msg in r.output and not (family / "x").exists()


def _perturbed(model, scale, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def test_cli_delta_prune_of_a_task_model_keeps_its_head_whole(tmp_path):
    from transformers import BertForSequenceClassification

    from prunekit.zoo.tiny_hf import save_tiny_hf, tiny_hf_model

    base = save_tiny_hf("BertModel", tmp_path / "base")
    tuned = tiny_hf_model("BertForSequenceClassification", seed=1)
    tuned.bert.load_state_dict(base.state_dict())
    _perturbed(tuned, 0.01, 2).save_pretrained(tmp_path / "tuned")
    r = runner.invoke(app, ["delta", "prune", str(tmp_path / "base"), str(tmp_path / "tuned"), "--method",
                            "magnitude", "--rate", "0.75", "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "2 tuned tensors the base lacks kept whole (classifier.bias, classifier.weight)" in r.output
    out = BertForSequenceClassification.from_pretrained(tmp_path / "out").state_dict()
    want = tuned.state_dict()
    assert torch.equal(out["classifier.weight"], want["classifier.weight"])
    b = base.state_dict()
    tau = {k: out["bert." + k] - b[k] for k in b if b[k].is_floating_point()}
    n = sum(v.numel() for v in tau.values())
    assert sum(int((v != 0).sum()) for v in tau.values()) == pytest.approx(0.25 * n, abs=len(tau))
    rec = json.loads((tmp_path / "out" / "delta.json").read_text())
    assert rec["prefix"] == "bert." and rec["kept_whole"] == ["classifier.bias", "classifier.weight"]


def test_unlabeled_q_tuning_on_an_encoder_without_logits():
    from prunekit.zoo.tiny_hf import tiny_hf_model, tiny_ids

    enc = tiny_hf_model("BertModel")
    base = {k: v.detach().clone() for k, v in enc.state_dict().items()}
    tuned = {k: v.detach().clone() for k, v in _perturbed(enc, 0.02, 3).state_dict().items()}
    tau = D.task_vector(base, tuned)
    q, table = D.tune_q_unlabeled(enc, base, tuned, tau, 0.9, tiny_ids(n=4, seq=8), grid=[0.1, 0.5, 1.0])
    assert q in (0.1, 0.5, 1.0) and all(loss > 0 for _, loss in table)  # last_hidden_state compared
