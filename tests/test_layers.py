"""layers.classify: every weight prunable with its orientation or kept by a named rule; hand-counted zeros."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.accounting import totals
from prunekit.layers import UncoveredWeightError, classify
from prunekit.masks import prunable_parameters


def _zeros(t: torch.Tensor) -> int:
    return int((t == 0).sum())


# ---------------------------------------------------------------------------------------------------------
# MultiheadAttention, LSTM, GRU, GPT-2 Conv1D


def test_mha_in_proj_weight_is_pruned_and_forward_uses_it():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0)
    rep = pk.prune_(layer, pk.Magnitude(0.5))
    w = layer.self_attn.in_proj_weight  # (3 * 8, 8) = 192 entries
    assert w.shape == (24, 8) and _zeros(w) == 96
    assert rep.ledger.prunable["self_attn.in_proj_weight"].kind == "attention"
    for name in ("self_attn.out_proj.weight", "linear1.weight", "linear2.weight"):
        assert _zeros(layer.get_parameter(name)) == layer.get_parameter(name).numel() // 2
    # 192 + 64 + 128 + 128 weights, half of each zero: the report and the zeros agree
    assert rep.sparsity == 0.5 and rep.ledger.measured.pruned_weights.zeros == 256
    ref = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(5, 3, 8)
    layer.eval(), ref.eval()
    with torch.no_grad():  # eval + no_grad takes the fused fast path: it reads the same zeroed tensor
        assert torch.allclose(layer(x), ref(x))


class _Recurrent(nn.Module):
    def __init__(self, cell: type[nn.RNNBase]) -> None:
        super().__init__()
        self.rnn = cell(4, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def test_lstm_weights_are_pruned_and_stay_zero_through_a_step():
    torch.manual_seed(0)
    net = _Recurrent(nn.LSTM)  # weight_ih_l0 (16, 4), weight_hh_l0 (16, 4): 4 gates x hidden 4
    pk.prune_(net, pk.Magnitude(0.75))
    assert _zeros(net.rnn.weight_ih_l0) == 48 and _zeros(net.rnn.weight_hh_l0) == 48
    assert _zeros(net.head.weight) == 6
    ref = _Recurrent(nn.LSTM)
    ref.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 4)
    assert torch.allclose(net(x), ref(x))  # the LSTM's flat weights are the masked tensors
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    pk.masks.attached(net).watch(opt)
    for _ in range(2):
        opt.zero_grad()
        net(x).pow(2).sum().backward()
        opt.step()
    net.rnn.flatten_parameters()  # a no-op on CPU: the zeros survive it
    assert _zeros(net.rnn.weight_ih_l0) >= 48 and _zeros(net.rnn.weight_hh_l0) >= 48


def test_gru_weights_unstructured_and_two_of_four_along_the_input():
    torch.manual_seed(0)
    net = _Recurrent(nn.GRU)  # weight_ih_l0 (12, 4), weight_hh_l0 (12, 4): 3 gates x hidden 4
    assert [w.kind for w in classify(net).prunable.values()] == ["rnn", "rnn", "linear"]
    pk.prune_(net, pk.Magnitude(0.25))
    assert _zeros(net.rnn.weight_ih_l0) == 12 and _zeros(net.rnn.weight_hh_l0) == 12
    net = _Recurrent(nn.GRU)
    pk.prune_(net, pk.Magnitude(pattern=pk.NM(2, 4), exclude=["head"]))
    for w in (net.rnn.weight_ih_l0, net.rnn.weight_hh_l0):
        assert ((w != 0).sum(dim=1) == 2).all()  # each row of 4 inputs keeps exactly 2


def test_gpt2_conv1d_is_transposed_and_nm_runs_along_its_input():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    net = nn.Sequential(Conv1D(8, 4))  # nf=8 outputs, nx=4 inputs: weight stored (in, out) = (4, 8)
    info = classify(net).prunable["0.weight"]
    assert info.kind == "conv1d-gpt2" and info.matrix_shape == (1, 8, 4)
    pk.prune_(net, pk.Magnitude(pattern=pk.NM(2, 4)))
    w = net[0].weight
    assert ((w != 0).sum(dim=0) == 2).all()  # the 4 inputs of each output: exactly 2 kept
    net = nn.Sequential(Conv1D(8, 4))
    pk.prune_(net, pk.Magnitude(0.5))
    assert _zeros(net[0].weight) == 16


def test_transposed_conv_nm_runs_along_input_channels():
    torch.manual_seed(0)
    net = nn.Sequential(nn.ConvTranspose1d(4, 8, 3))  # weight (in=4, out=8, k=3)
    assert classify(net).prunable["0.weight"].matrix_shape == (1, 8, 12)
    pk.prune_(net, pk.Magnitude(pattern=pk.NM(2, 4)))
    assert ((net[0].weight != 0).sum(dim=0) == 2).all()  # for every (out, k): 2 of the 4 input channels


# ---------------------------------------------------------------------------------------------------------
# fused MoE experts


class _Experts(nn.Module):
    """Fused experts as transformers 5.x stores them: gate_up (E, 2I, H), down (E, H, I)."""

    def __init__(self, e: int, h: int, i: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(e, 2 * i, h))
        self.down_proj = nn.Parameter(torch.randn(e, h, i))

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        gate, up = torch.einsum("th,eoh->teo", x, self.gate_up_proj).chunk(2, dim=-1)  # (T, E, I) each
        y = torch.einsum("tei,ehi->teh", nn.functional.silu(gate) * up, self.down_proj)  # (T, E, H)
        return (weights.unsqueeze(-1) * y).sum(1)


class _MoE(nn.Module):
    def __init__(self, e: int = 2, h: int = 8, i: int = 4) -> None:
        super().__init__()
        self.gate = nn.Linear(h, e, bias=False)  # the router
        self.experts = _Experts(e, h, i)
        self.shared_expert = nn.Linear(h, h)
        self.shared_expert_gate = nn.Linear(h, 1, bias=False)  # a one-output gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return self.experts(x, self.gate(x).softmax(-1)) + shared


def test_fused_experts_are_pruned_per_expert_and_routers_are_kept():
    torch.manual_seed(0)
    moe = _MoE()
    with torch.no_grad():
        moe.experts.gate_up_proj[1] *= 1e-3  # one ranking over the tensor would prune expert 1 whole
    ledger = classify(moe)
    assert ledger.kept["gate.weight"] == "router" and ledger.kept["shared_expert_gate.weight"] == "router"
    assert ledger.prunable["experts.gate_up_proj"].matrix_shape == (2, 8, 8)
    x = torch.randn(3, 8)
    pk.prune_(moe, pk.Magnitude(0.5))
    for e in range(2):
        assert _zeros(moe.experts.gate_up_proj[e]) == 32  # 2I x H = 8 x 8, half
        assert _zeros(moe.experts.down_proj[e]) == 16  # H x I = 8 x 4, half
    assert _zeros(moe.gate.weight) == 0 and _zeros(moe.shared_expert_gate.weight) == 0
    ref = _MoE()
    ref.load_state_dict(moe.state_dict())
    assert torch.allclose(moe(x), ref(x))


def test_fused_experts_two_of_four_along_each_experts_input():
    torch.manual_seed(0)
    moe = _MoE()
    rep = pk.prune_(moe, pk.Magnitude(pattern=pk.NM(2, 4)))
    gu, down = moe.experts.gate_up_proj, moe.experts.down_proj  # inputs: H = 8 and I = 4 (last dim)
    assert ((gu != 0).reshape(2, 8, 2, 4).sum(-1) == 2).all()
    assert ((down != 0).reshape(2, 8, 1, 4).sum(-1) == 2).all()
    assert "experts.gate_up_proj" in {r.name for r in rep.layers}


def test_fused_experts_block_channel_and_global_scope():
    torch.manual_seed(0)
    moe = _MoE(e=3)
    pk.prune_(moe, pk.Magnitude(0.5, pattern=pk.Block(2, 4), exclude=["shared_expert"]))
    for e in range(3):  # gate_up (8 x 8): 8 tiles of 2 x 4 per expert, 4 kept = 32 non-zeros
        assert int((moe.experts.gate_up_proj[e] != 0).sum()) == 32
    moe = _MoE(e=3)
    pk.prune_(moe, pk.Magnitude(0.5, pattern=pk.Channel()))
    rows = (moe.experts.down_proj != 0).any(-1).sum(-1)  # output rows kept per expert: 4 of 8
    assert rows.tolist() == [4, 4, 4]
    moe = _MoE(e=3)
    rep = pk.prune_(moe, pk.Magnitude(0.3, scope="global"))
    n = sum(r.numel for r in rep.layers)  # 3 * 64 + 3 * 32 + 64 = 352 weights, round(0.7 * 352) = 246 kept
    assert n == 352 and rep.ledger.measured.pruned_weights.zeros == 352 - 246


def test_transposed_experts_are_oriented_by_is_transposed():
    experts = _Experts(2, 8, 4)
    experts.is_transposed = True  # the transformers experts decorator's flag: stored (E, in, out)
    info = classify(nn.ModuleDict({"experts": experts})).prunable["experts.down_proj"]
    assert info.transposed and info.matrix_shape == (2, 4, 8)
    t = torch.arange(64.0).reshape(2, 8, 4)
    assert torch.equal(info.from_matrices(info.as_matrices(t)), t)


# ---------------------------------------------------------------------------------------------------------
# rules, errors, views


class _Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.raw = nn.Parameter(torch.randn(4, 8))
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + x @ self.raw.t()


def test_a_tensor_no_rule_covers_is_an_error_naming_the_exclude():
    net = nn.Sequential(_Custom())
    before = net[0].fc.weight.detach().clone()
    named = r"0\.raw \(4x8, on _Custom\).*exclude=\['0\.raw'\].*--exclude 0\.raw"
    with pytest.raises(UncoveredWeightError, match=named):
        pk.prune_(net, pk.Magnitude(0.5))
    assert torch.equal(net[0].fc.weight, before)  # nothing pruned
    rep = pk.prune_(net, pk.Magnitude(0.5, exclude=["lm_head", "0.raw"]))
    assert rep.ledger.kept["0.raw"] == "excluded" and _zeros(net[0].raw) == 0 and _zeros(net[0].fc.weight) == 16
    assert classify(net, strict=False).kept["0.raw"] == "uncovered"  # read-only reports list it instead


def test_named_keep_rules():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok, self.position_embeddings = nn.Embedding(10, 8), nn.Embedding(6, 8)
            self.cls_token, self.pos_embed = nn.Parameter(torch.zeros(1, 1, 8)), nn.Parameter(torch.zeros(1, 6, 8))
            self.attn = nn.MultiheadAttention(8, 2, add_bias_kv=True)
            self.norm = nn.LayerNorm(8)
            self.steps = nn.Parameter(torch.zeros(2, 2, dtype=torch.long), requires_grad=False)
            self.fc = nn.Linear(8, 3)
            self.lm_head = nn.Linear(8, 10)

    net = Net()
    kept = classify(net, heads=["fc"]).kept
    assert kept["tok.weight"] == "embedding" and kept["cls_token"] == "token" and kept["pos_embed"] == "position"
    assert kept["attn.bias_k"] == "bias" and kept["norm.weight"] == "rank<2" and kept["steps"] == "not-floating"
    assert kept["fc.weight"] == "head" and kept["lm_head.weight"] == "excluded"
    ledger = classify(net, embeddings=True)
    assert ledger.prunable["tok.weight"].kind == "embedding" and ledger.kept["position_embeddings.weight"] == "position"
    assert set(prunable_parameters(net)) == {"attn.in_proj_weight", "attn.out_proj.weight", "fc.weight"}
    with pytest.raises(ValueError, match="include names unknown prunable layers"):
        classify(net, include=["tok"])
    assert list(classify(net, include=["attn"]).prunable) == ["attn.in_proj_weight", "attn.out_proj.weight"]


def test_weight_norm_parametrizations_are_kept_by_name():
    from torch.nn.utils.parametrizations import weight_norm

    net = nn.Sequential(weight_norm(nn.Conv1d(4, 4, 3)), nn.Linear(4, 2))
    ledger = classify(net)
    assert ledger.kept_by_reason()["parametrized"] == ["0.parametrizations.weight.original0",
                                                       "0.parametrizations.weight.original1"]
    assert list(ledger.prunable) == ["1.weight"]


def test_tied_weights_are_counted_once():
    emb = nn.Embedding(6, 4)
    net = nn.ModuleDict({"emb": emb, "lm_head": nn.Linear(4, 6, bias=False)})
    net["lm_head"].weight = emb.weight
    ledger = classify(net, exclude=())
    assert ledger.kept == {"emb.weight": "embedding", "lm_head.weight": "tied"}
    assert ledger.summary(net).all_parameters.numel == 24


@pytest.mark.parametrize("module,attr", [(nn.Linear(6, 4), "weight"), (nn.Conv2d(3, 4, 2), "weight"),
                                         (nn.ConvTranspose2d(3, 4, 2), "weight"), (nn.LSTM(3, 2), "weight_hh_l0")])
def test_matrix_views_round_trip(module, attr):
    info = classify(module).prunable[attr]
    t = torch.arange(float(module.get_parameter(attr).numel())).reshape(info.shape)
    g, out, inp = info.matrix_shape
    assert info.as_matrices(t).shape == (g, out, inp)
    assert torch.equal(info.from_matrices(info.as_matrices(t)), t)
    assert torch.equal(info.from_matrices(info.as_matrices(t, keep_kernel=True)), t)
    assert torch.equal(info.map_matrices(lambda m: -m, t), -t)


# ---------------------------------------------------------------------------------------------------------
# the ledger's three labelled figures


class _Small(nn.Module):
    """Linear(4, 2) + Embedding(3, 2) + LayerNorm(2): 8 + 2 + 6 + 4 = 20 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.emb, self.norm = nn.Linear(4, 2), nn.Embedding(3, 2), nn.LayerNorm(2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.arange(1.0, 9.0).reshape(2, 4))
            self.fc.bias.copy_(torch.tensor([0.0, 1.0]))
            self.emb.weight.fill_(1.0)  # norm: weight ones, bias zeros (PyTorch's init)


def test_ledger_figures_are_labelled_and_agree_with_totals(caplog):
    net = _Small()
    with caplog.at_level(logging.WARNING, logger="prunekit"):
        rep = pk.prune_(net, pk.Magnitude(0.5))
    # pruned weights: 4 of fc's 8 (the smallest |w|: 1, 2, 3, 4... ranked per layer) -> 0.5
    # all weight matrices: fc 8 + emb 6 = 14 entries, 4 zeros -> 0.2857
    # all parameters: 20 entries; zeros 4 + fc.bias[0] + norm.bias (2) = 7 -> 0.35
    s = rep.ledger.measured
    counted = (s.pruned_weights.zeros, s.all_weights.numel, s.all_parameters.numel, s.all_parameters.zeros)
    assert counted == (4, 14, 20, 7)
    line = "sparsity (pruned weights) 0.5000 · all weight matrices 0.2857 · all parameters incl. biases 0.3500"
    assert s.line() == line and line in rep.to_markdown()
    d = rep.to_dict()["ledger"]
    assert d["summary"]["sparsity_all_weights"] == pytest.approx(4 / 14) and d["kept"]["embedding"] == ["emb.weight"]
    assert d["summary"]["labels"]["all_parameters"] == "all parameters incl. biases"
    assert caplog.text.count("kept by rule") == 1 and "embedding 1" in caplog.text
    t = totals(net)  # inspect's figures: the same numbers, the same labels
    assert t["sparsity"] == pytest.approx(0.35) and t["sparsity_label"] == "all parameters incl. biases"
    assert t["sparsity_pruned_weights"] == 0.5 and t["sparsity_line"] == line
    assert pk.sparsity_report(copy.deepcopy(net)).ledger.measured.line() == line


def test_an_exclude_that_matches_nothing_is_reported(caplog) -> None:
    """A typo in exclude would prune what the user meant to keep: the ledger and the log say it matched nothing."""
    import logging

    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with caplog.at_level(logging.WARNING):
        ledger = classify(net, exclude=["lm_head", "1", "fc9"])
    assert ledger.unmatched == ["fc9"]  # the default lm_head is not reported; "1" kept layer 1
    assert ledger.kept["1.weight"] == "excluded" and ledger.to_dict()["unmatched_exclude"] == ["fc9"]
    assert any("fc9" in r.getMessage() for r in caplog.records)
    assert classify(net, exclude=["1"]).unmatched == []
