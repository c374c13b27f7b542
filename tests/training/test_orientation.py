"""Sparse training sees every weight as the one-shot engine does: N:M and Block along the input dimension of a
GPT-2 ``Conv1D`` (stored (in, out)), and each expert matrix of a fused (E, out, in) MoE tensor on its own."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import prunekit as pk
from prunekit import allocation as alloc
from prunekit.masks import attached
from prunekit.training import (
    SNIP,
    SRSTE,
    GradualMagnitude,
    PruneAtInit,
    RigL,
    fit,
    random_masks,
    snip_masks,
)

RECIPE = dict(batch_size=16, lr=0.05, seed=0)


# ---------------------------------------------------------------------------------------------- models
class GPT2MLP(nn.Module):
    """Two GPT-2 ``Conv1D``: weights stored (in, out) = (8, 16) and (16, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.c_fc, self.c_proj = Conv1D(16, 8), Conv1D(4, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(torch.relu(self.c_fc(x)))


class Experts(nn.Module):
    """Fused experts as transformers 5.x stores them: gate_up (E, 2I, H), down (E, H, I)."""

    def __init__(self, e: int, h: int, i: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(e, 2 * i, h) / h ** 0.5)
        self.down_proj = nn.Parameter(torch.randn(e, h, i) / i ** 0.5)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        gate, up = torch.einsum("th,eoh->teo", x, self.gate_up_proj).chunk(2, dim=-1)  # (T, E, I) each
        y = torch.einsum("tei,ehi->teh", nn.functional.silu(gate) * up, self.down_proj)  # (T, E, H)
        return (weights.unsqueeze(-1) * y).sum(1)  # (T, H)


class MoE(nn.Module):
    """A router (kept) and 3 fused experts, H = 8, I = 4; expert 1 is 1000x smaller than the others."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(8, 3, bias=False)
        self.experts = Experts(3, 8, 4)
        with torch.no_grad():  # one ranking over a whole tensor would prune expert 1 first
            self.experts.gate_up_proj[1] *= 1e-3
            self.experts.down_proj[1] *= 1e-3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.experts(x, self.gate(x).softmax(-1))


def _data(classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g)
    return x, x[:, :classes].argmax(1)


@pytest.fixture
def gpt2() -> GPT2MLP:
    torch.manual_seed(0)
    return GPT2MLP()


@pytest.fixture
def moe() -> MoE:
    torch.manual_seed(0)
    return MoE()


# --------------------------------------------------------------------------------------------- checks
def two_of_four_along_input(mask: torch.Tensor) -> bool:
    """A GPT-2 Conv1D mask (in, out): on the transposed (out, in) view every 4 inputs keep exactly 2."""
    groups = mask.t().reshape(mask.shape[1], -1, 4)  # (out, in/4, 4)
    return bool((groups.sum(-1) == 2).all())


def experts_two_of_four(mask: torch.Tensor) -> bool:
    """A fused (E, out, in) mask: every 4 inputs of every expert's rows keep exactly 2."""
    return bool((mask.reshape(mask.shape[0], mask.shape[1], -1, 4).sum(-1) == 2).all())


def kept_per_expert(mask: torch.Tensor) -> list[int]:
    return mask.flatten(1).sum(1).tolist()


def assert_half_per_expert(masks: dict[str, torch.Tensor]) -> None:
    for name in ("experts.gate_up_proj", "experts.down_proj"):
        m = masks[name]
        assert kept_per_expert(m) == [m[0].numel() // 2] * 3, name


CONV1D = ("c_fc.weight", "c_proj.weight")
EXPERTS = ("experts.gate_up_proj", "experts.down_proj")


# ------------------------------------------------------------------------- (a) GPT-2 Conv1D, 2:4 / 1x4
def test_the_check_tells_the_orientation_apart():
    m = torch.tensor([[1, 1, 0, 0]] * 4, dtype=torch.bool)  # stored (in=4, out=4): 2:4 along out, not in
    assert two_of_four_along_input(m.t()) and not two_of_four_along_input(m)


def test_snip_two_of_four_runs_along_conv1d_inputs(gpt2):
    data = _data(4)
    masks = snip_masks(gpt2, data, 0.5, pattern=pk.NM(2, 4), batch_size=16)
    assert set(masks) == set(CONV1D) and all(two_of_four_along_input(masks[k]) for k in CONV1D)
    report = pk.prune_(gpt2, SNIP(pattern=pk.NM(2, 4), batch_size=16), data=data)  # the registered config
    assert all(two_of_four_along_input(report.masks.masks[k]) for k in CONV1D)


def test_random_pai_two_of_four_runs_along_conv1d_inputs(gpt2):
    cb = PruneAtInit("random", 0.5, options={"pattern": "2:4"})
    fit(gpt2, _data(4), steps=2, callbacks=[cb], **RECIPE)
    ms = attached(gpt2)
    for k in CONV1D:
        assert two_of_four_along_input(ms.masks[k]), k
        assert torch.all(ms.params[k].detach()[~ms.masks[k]] == 0), k


def test_srste_two_of_four_runs_along_conv1d_inputs(gpt2):
    cb = SRSTE(2, 4)
    fit(gpt2, _data(4), steps=3, callbacks=[cb], **RECIPE)
    assert all(two_of_four_along_input(cb.masks[k]) for k in CONV1D)
    for k in CONV1D:  # the model holds the sparse W~ and the final masks are attached
        assert two_of_four_along_input(attached(gpt2).masks[k])
        w = dict(gpt2.named_parameters())[k].detach()
        assert torch.all(w[~cb.masks[k]] == 0), k


def test_gradual_block_tiles_run_along_conv1d_inputs(gpt2):
    cb = GradualMagnitude(0.5, begin_step=0, end_step=4, frequency=2, pattern=pk.Block(1, 4))
    fit(gpt2, _data(4), steps=6, callbacks=[cb], **RECIPE)
    for k in CONV1D:
        m = attached(gpt2).masks[k].t()  # (out, in)
        tiles = m.reshape(m.shape[0], -1, 4)  # 4 consecutive inputs of one output: kept or pruned whole
        assert bool((tiles.all(-1) | ~tiles.any(-1)).all()), k
        assert int(m.sum()) == m.numel() // 2, k


def test_rigl_keeps_each_conv1d_layer_at_its_count(gpt2):
    cb = RigL(0.5, update_every=1, update_fraction=0.3, allocation="uniform", end_step=3)
    fit(gpt2, _data(4), steps=4, callbacks=[cb], **RECIPE)
    ms = attached(gpt2)
    assert sum(h["changed"] for h in cb.history) > 0
    for k in CONV1D:
        assert int(ms.masks[k].sum()) == ms.masks[k].numel() // 2, k
        assert torch.all(ms.params[k].detach()[~ms.masks[k]] == 0), k


# -------------------------------------------------------------------------- (b) fused MoE experts
def test_rigl_keeps_every_expert_at_the_target(moe):
    cb = RigL(0.5, update_every=1, update_fraction=0.3, allocation="uniform", end_step=3)
    fit(moe, _data(8), steps=4, callbacks=[cb], **RECIPE)
    ms = attached(moe)
    assert set(ms.masks) == set(EXPERTS)  # the router is kept
    assert sum(h["changed"] for h in cb.history) > 0
    assert_half_per_expert(ms.masks)  # drop/grow by |W| within each expert: tiny expert 1 keeps its half
    for k in EXPERTS:
        assert torch.all(ms.params[k].detach()[~ms.masks[k]] == 0), k


def test_gradual_prunes_every_expert_to_the_target(moe):
    cb = GradualMagnitude(0.5, begin_step=0, end_step=4, frequency=2)
    fit(moe, _data(8), steps=6, callbacks=[cb], **RECIPE)
    assert_half_per_expert(attached(moe).masks)


def test_snip_prunes_every_expert_to_the_target(moe):
    data = _data(8)
    assert_half_per_expert(snip_masks(moe, data, 0.5, scope="layer", batch_size=16))
    masks = snip_masks(moe, data, 0.5, scope="global", batch_size=16)  # one ranking, shared evenly
    for k in EXPERTS:
        counts = kept_per_expert(masks[k])
        assert max(counts) - min(counts) <= 1, (k, counts)


def test_srste_two_of_four_along_each_experts_input(moe):
    cb = SRSTE(2, 4)
    fit(moe, _data(8), steps=3, callbacks=[cb], **RECIPE)
    assert all(experts_two_of_four(cb.masks[k]) for k in EXPERTS)
    assert all(experts_two_of_four(attached(moe).masks[k]) for k in EXPERTS)


def test_random_pai_prunes_every_expert_to_the_target(moe):
    assert_half_per_expert(random_masks(moe, 0.5, allocation="uniform"))
    masks = random_masks(moe, 0.5, allocation="erk")  # ERK counts each expert as one (out, in) matrix
    targets = alloc.erk({k: tuple(masks[k].shape) for k in EXPERTS}, 0.5,
                        groups={"experts.gate_up_proj": 3, "experts.down_proj": 3})
    for k in EXPERTS:
        assert int(masks[k].sum()) == round((1 - targets[k]) * masks[k].numel()), k
        counts = kept_per_expert(masks[k])
        assert max(counts) - min(counts) <= 1, (k, counts)
    fit(moe, _data(8), steps=2, callbacks=[PruneAtInit("random", 0.5, options={"pattern": pk.NM(2, 4)})], **RECIPE)
    assert all(experts_two_of_four(attached(moe).masks[k]) for k in EXPERTS)


def test_granet_prunes_and_regrows_within_each_expert(moe):
    from prunekit.training import GraNet

    cb = GraNet(0.5, update_every=2, scope="layer", end_step=4, allocation="uniform")
    fit(moe, _data(8), steps=6, callbacks=[cb], **RECIPE)
    assert cb.history and cb.history[-1]["sparsity"] == pytest.approx(0.5)
    assert_half_per_expert(attached(moe).masks)


def test_masks_ledger_orients_what_a_mask_set_holds(gpt2, moe):
    from prunekit.layers import ledger_of

    led = ledger_of(gpt2, ["c_fc.weight"])
    assert led.prunable["c_fc.weight"].kind == "conv1d-gpt2" and led.prunable["c_fc.weight"].matrix_shape == (1, 16, 8)
    led = ledger_of(moe, ["experts.down_proj", "gate.weight"])  # a mask on the router: a plain matrix
    assert led.prunable["experts.down_proj"].matrix_shape == (3, 8, 4)
    assert led.prunable["gate.weight"].matrix_shape == (1, 3, 8)
    with pytest.raises(ValueError, match=r"\['nope'\] are not parameters of the model"):
        ledger_of(moe, ["nope"])


def test_select_masks_names_scores_the_ledger_lacks(gpt2):
    from prunekit.layers import classify
    from prunekit.training.pai import select_masks

    with pytest.raises(ValueError, match=r"ledger does not hold: \['other'\]"):
        select_masks({"other": torch.ones(4, 4)}, 0.5, ledger=classify(gpt2))
