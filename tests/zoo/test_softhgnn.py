"""SoftHyperedge and the vit-softhgnn zoo model: top-k per input, balance loss, its gradient, training."""

from __future__ import annotations

import pytest
import torch

import prunekit.tokens.hyperedge as H
from prunekit.accounting import count_macs
from prunekit.tokens.hyperedge import SoftHyperedge, load_balance_loss
from prunekit.zoo import get_model


def test_balance_loss_is_one_when_uniform_and_larger_when_collapsed():
    gate = torch.full((4, 4), 0.25)
    chosen = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool)
    assert float(load_balance_loss(gate, chosen)) == pytest.approx(1.0)
    skew = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).repeat(4, 1)
    first = torch.tensor([[1, 0, 0, 0]], dtype=torch.bool).repeat(4, 1)
    assert float(load_balance_loss(skew, first)) == pytest.approx(4 * 0.7)  # f = (1, 0, 0, 0), P_0 = 0.7


def test_each_input_uses_exactly_top_k_hyperedges():
    torch.manual_seed(0)
    layer = SoftHyperedge(16, num_edges=6, top_k=2)
    y = layer(torch.randn(5, 7, 16))
    assert y.shape == (5, 7, 16) and layer.usage.shape == (5, 6)
    assert layer.usage.sum(1).tolist() == [2] * 5
    with pytest.raises(ValueError, match="top_k"):
        SoftHyperedge(16, num_edges=4, top_k=5)


def test_the_balance_loss_reaches_the_gradient(monkeypatch):
    torch.manual_seed(0)
    model = get_model("vit-softhgnn", seed=0, depth=1, balance=0.5).train()
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6) % 10
    torch.nn.functional.cross_entropy(model(x), y).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    monkeypatch.setattr(H, "with_aux_loss", lambda out, aux: out)  # now add the loss by hand
    out = model(x)
    (torch.nn.functional.cross_entropy(out, y) + 0.5 * model.hyper[0].aux_loss).backward()
    gate = "hyper.0.gate.weight"
    assert got[gate].abs().sum() > 0
    assert all(torch.allclose(got[n], p.grad, atol=1e-6) for n, p in model.named_parameters()), gate


def test_fewer_hyperedges_cost_fewer_macs():
    x = torch.rand(2, 1, 8, 8)
    macs = [count_macs(get_model("vit-softhgnn", seed=0, top_k=k), x) for k in (2, 8)]
    assert macs[0] < macs[1]
    assert get_model("vit-softhgnn", seed=0)(x).shape == (2, 10)


def test_prunekit_train_trains_it(tmp_path):
    from typer.testing import CliRunner

    from prunekit.cli import app

    r = CliRunner().invoke(app, ["train", "vit-softhgnn", "--epochs", "1", "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m" / "model.safetensors").is_file()
