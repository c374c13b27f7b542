"""LLM-Pruner and LoRAPrune group importances: hand-computed on a tiny MLP, and on a tiny GQA LLaMA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.structured import Structured, remove_
from prunekit.structured.graph import build_graph
from prunekit.structured.hf import llm_pruner_elements, loraprune_elements, task_loss
from prunekit.structured.importance import group_scores


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


X = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))


def true_grads(net: nn.Module) -> dict[str, torch.Tensor]:
    net.zero_grad()
    net(X).pow(2).mean().backward()  # the label-free loss task_loss uses for a plain tensor output
    g = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)
    return g


def test_llm_pruner_is_abs_g_dot_w_per_member_summed():
    net = MLP()
    g = true_grads(net)
    graph = build_graph(net, X)
    (grp,) = [gr for gr in graph.groups() if gr.size == 4]  # fc1's outputs = fc2's inputs
    got = group_scores(net, graph, [grp], "llm-pruner", "sum", example_inputs=X)[grp.id]
    w1, b1, w2 = net.fc1.weight.detach(), net.fc1.bias.detach(), net.fc2.weight.detach()
    want = ((g["fc1.weight"] * w1).sum(1).abs() + (g["fc1.bias"] * b1).abs() + (g["fc2.weight"] * w2).sum(0).abs())
    assert torch.allclose(got, want, atol=1e-6)
    assert all(p.grad is None for p in net.parameters())  # the caller's .grad fields untouched


def test_llm_pruner_element_uses_diagonal_fisher_term():
    net = MLP()
    g = true_grads(net)
    gw = g["fc2.weight"] * net.fc2.weight.detach()
    assert torch.allclose(llm_pruner_elements(net, X, second_order=True)["fc2.weight"], (gw - gw**2 / 2).abs(),
                          atol=1e-7)


def test_loraprune_with_identity_a_and_zero_b_is_exact_taylor():
    net = MLP()
    g = true_grads(net)
    adapters = {"fc1": (torch.eye(3), torch.zeros(4, 3)), "fc2": (torch.eye(4), torch.zeros(2, 4))}
    got = loraprune_elements(net, X, adapters=adapters)
    for k in ("fc1.weight", "fc2.weight"):
        assert torch.allclose(got[k], (net.get_parameter(k).detach() * g[k]).abs(), atol=1e-6)


def test_loraprune_formula_with_trained_adapter():
    net = MLP()
    a, b = torch.randn(2, 4, generator=torch.Generator().manual_seed(3)), torch.randn(2, 2)
    got = loraprune_elements(net, X, adapters={"fc2": (a, b)})
    assert set(got) == {"fc2.weight"}  # only adapted layers are scored
    aa, bb = a.clone().requires_grad_(), b.clone().requires_grad_()
    h = torch.relu(net.fc1(X)).detach()
    y = net.fc2(h).detach() + h @ aa.T @ bb.T
    y.pow(2).mean().backward()
    w = net.fc2.weight.detach()
    want = ((w + b @ a) * (bb.grad @ a + b @ aa.grad)).abs()
    assert torch.allclose(got["fc2.weight"], want, atol=1e-6)


@pytest.fixture
def llama():
    import transformers as T

    torch.manual_seed(0)
    cfg = T.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=64, vocab_size=96, max_position_embeddings=64)
    return T.LlamaForCausalLM(cfg).eval()


IDS = {"input_ids": torch.randint(3, 96, (2, 16), generator=torch.Generator().manual_seed(0))}


@pytest.mark.parametrize("importance", ["llm-pruner", "loraprune"])
def test_gqa_llama_heads_and_channels_are_scored_and_removed(llama, importance):
    assert task_loss(llama, IDS)[1] == "lm-cross-entropy"
    graph = build_graph(llama, IDS)
    groups = graph.groups()
    scores = group_scores(llama, graph, groups, importance, "mean", example_inputs=IDS)
    kinds = {g.kind for g in groups}
    assert "head" in kinds and "channel" in kinds
    assert all(torch.isfinite(scores[g.id]).all() and scores[g.id].shape == (g.size,) for g in groups)
    assert all(scores[g.id].max() > 0 for g in groups)  # a real signal in every group
    remove_(llama, IDS, Structured(sparsity=0.5, importance=importance))
    assert llama.config.num_key_value_heads == 1 and llama.config.intermediate_size == 32
    assert llama(**IDS).logits.shape == (2, 16, 96)
