"""Fused MoE experts: each expert matrix gets the statistics of the tokens routed to it; an expert that no
token reaches is pruned by magnitude, and the report and the log say so."""

from __future__ import annotations

import logging

import pytest
import torch

from prunekit.calibrate import Wanda, prune_blocks
from prunekit.calibrate import solvers as S
from prunekit.calibrate.stats import stats_from_inputs

from .test_hf_models import hf_config, ids


def _mixtral():
    import transformers as T

    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.manual_seed(0)
    return T.MixtralForCausalLM(hf_config("MixtralForCausalLM")).eval()


def _fixed_routing(model) -> None:
    """Token t goes to experts (t % 2, 2) with weights 0.5 / 0.5: expert 3 never gets a token."""
    for layer in model.model.layers:
        def route(h, E=4):
            h = h.reshape(-1, h.shape[-1])
            t = torch.arange(h.shape[0])
            index = torch.stack([t % 2, torch.full_like(t, 2)], dim=1)  # (T, 2)
            return torch.zeros(h.shape[0], E), torch.full((h.shape[0], 2), 0.5), index

        layer.mlp.gate.forward = route


def test_routed_statistics_and_the_unrouted_expert_fallback(caplog):
    model = _mixtral()
    _fixed_routing(model)
    experts = model.model.layers[0].mlp.experts
    seen = []
    h = experts.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    x = ids(n=4, seq=8)
    with torch.no_grad():
        model(input_ids=x)  # the dense layer-0 expert inputs (the first block sees the same when pruning)
    h.remove()
    dense = {k: v.detach().clone() for k, v in experts.named_parameters()}
    router = model.model.layers[0].mlp.gate.weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger="prunekit.calibrate.engine"):
        report = prune_blocks(model, "wanda", Wanda(0.5, batch_size=4), x)
    info = report.extra["experts"]["model.layers.0.mlp.experts.gate_up_proj"]
    assert info["tokens"] == [16, 16, 32, 0]  # 32 tokens: half to expert 0, half to 1, all to 2, none to 3
    assert info["fallback_magnitude"] == [3]
    assert report.extra["expert_fallbacks"]["model.layers.1.mlp.experts.down_proj"] == [3]
    assert "model.layers.0.mlp.experts.gate_up_proj.3 received no calibration token" in caplog.text
    Wgu, Wd = dense["gate_up_proj"], dense["down_proj"]
    for e in range(4):
        rows = seen[0][e % 2::2] if e < 2 else seen[0] if e == 2 else None
        if rows is None:  # expert 3: magnitude over the whole matrix
            want_gu = S.magnitude(Wgu[e], None, 0.5)[1]
            want_d = S.magnitude(Wd[e], None, 0.5)[1]
        else:  # Wanda |W| * ||X_j|| with X = the routed tokens, and for down_proj their gated activations
            gate, up = (rows @ Wgu[e].t()).chunk(2, dim=-1)
            act = torch.nn.functional.silu(gate) * up
            want_gu = S.wanda(Wgu[e], stats_from_inputs(rows), 0.5)[1]
            want_d = S.wanda(Wd[e], stats_from_inputs(act), 0.5)[1]
        assert torch.equal(experts.gate_up_proj[e] != 0, want_gu), e
        assert torch.equal(experts.down_proj[e] != 0, want_d), e
    assert torch.equal(model.model.layers[0].mlp.gate.weight, router)  # the router is kept
    assert "model.layers.0.mlp.gate.weight" not in report.masks.masks


def test_magnitude_on_an_unrouted_expert_is_no_fallback():
    model = _mixtral()
    _fixed_routing(model)
    report = prune_blocks(model, "magnitude", prune_config(), ids(n=2, seq=8))
    assert report.extra["expert_fallbacks"] == {}
    assert report.sparsity == pytest.approx(0.5)


def prune_config():
    from prunekit.calibrate import CalibratedMagnitude

    return CalibratedMagnitude(0.5)


class _ListMoE(torch.nn.Module):
    """Unfused experts (a ModuleList of Linear), a Linear router, top-1: token t goes to expert t % 2 of 3."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.gate = torch.nn.Linear(d, 3, bias=False)
        self.experts = torch.nn.ModuleList(torch.nn.Linear(d, d, bias=False) for _ in range(3))

    def forward(self, x):
        self.gate(x)  # the router runs, its choice is fixed here so the test can count
        flat = x.reshape(-1, x.shape[-1])
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            tok = (torch.arange(flat.shape[0]) % 2 == e).nonzero().squeeze(-1)
            if tok.numel():
                out[tok] = expert(flat[tok])
        return (x + out.reshape(x.shape),)


class _TinyLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(96, 8)
        self.layers = torch.nn.ModuleList(_ListMoE() for _ in range(2))

    def forward(self, input_ids):
        h = self.embed(input_ids)
        for layer in self.layers:
            h = layer(h)[0]
        return h


def test_unfused_linear_experts_and_their_unrouted_fallback(caplog):
    torch.manual_seed(0)
    model = _TinyLM().eval()
    dense2 = model.layers[0].experts[2].weight.detach().clone()
    router = model.layers[0].gate.weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger="prunekit.calibrate.engine"):
        report = prune_blocks(model, "wanda", Wanda(0.5), ids(n=2, seq=8))
    names = {r.name for r in report.layers}
    assert {f"layers.{i}.experts.{e}.weight" for i in range(2) for e in range(3)} == names  # router kept
    assert torch.equal(model.layers[0].gate.weight, router)
    assert torch.equal(model.layers[0].experts[2].weight != 0, S.magnitude(dense2, None, 0.5)[1])
    assert "layers.0.experts.2 received no calibration token" in caplog.text
    assert report.extra["expert_fallbacks"] == {"layers.0.experts.2.weight": [2], "layers.1.experts.2.weight": [2]}
