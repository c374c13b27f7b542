"""Accounting: params, non-zeros, MACs by hand-computed cases, per-layer attribution, sparse MACs, tables."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import pack_padded_sequence

from prunekit.accounting import (
    LayerStats,
    count_macs,
    count_nonzeros,
    count_params,
    einsum_macs,
    format_table,
    layer_table,
    sparse_macs,
    totals,
)

# ---------------------------------------------------------------------------------------------------------
# hand-computed MACs of single ops


def test_linear_macs_by_hand() -> None:
    assert count_macs(nn.Linear(10, 5), torch.randn(3, 10)) == 3 * 10 * 5  # 150


def test_linear_on_3d_input_counts_every_row() -> None:
    assert count_macs(nn.Linear(10, 5, bias=False), torch.randn(2, 7, 10)) == 2 * 7 * 10 * 5


def test_conv2d_macs_by_hand() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, torch.randn(1, 3, 8, 8)) == 8 * 8 * 8 * 27  # out pixels x out ch x (3*3*3)


def test_conv2d_groups_stride_dilation_by_hand() -> None:
    conv = nn.Conv2d(4, 8, 3, groups=2, stride=2, dilation=2)
    # dilated kernel spans 5, so a 9x9 input gives (9 - 5) // 2 + 1 = 3 per side; each output sums 4/2*3*3 = 18
    assert count_macs(conv, torch.randn(2, 4, 9, 9)) == 2 * 8 * 3 * 3 * 18


def test_depthwise_conv1d_by_hand() -> None:
    conv = nn.Conv1d(6, 6, 5, groups=6, padding=2)
    assert count_macs(conv, torch.randn(1, 6, 10)) == 6 * 10 * 5


def test_conv_transpose2d_by_hand() -> None:
    conv = nn.ConvTranspose2d(4, 6, 3, stride=2)
    # every input entry meets out * k * k = 6 * 9 weights
    assert count_macs(conv, torch.randn(1, 4, 5, 5)) == 4 * 5 * 5 * 6 * 9


class _SDPA(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)


def test_sdpa_macs_by_hand() -> None:
    B, H, L, D = 2, 3, 5, 4
    q = torch.randn(B, H, L, D)
    assert count_macs(_SDPA(), (q, q, q)) == 2 * B * H * L * L * D


def test_sdpa_with_other_key_length_and_value_width() -> None:
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 5)
    assert count_macs(_SDPA(), (q, k, v)) == 1 * 2 * 3 * 6 * (4 + 5)  # QK^T then attention x V


def test_multihead_attention_by_hand() -> None:
    N, L, E = 2, 5, 8
    mha = nn.MultiheadAttention(E, 2, batch_first=True)
    x = torch.randn(N, L, E)
    expected = 4 * N * L * E * E + 2 * N * L * L * E  # q, k, v, out projections; QK^T and attention x V
    assert count_macs(mha, (x, x, x), per_layer=True) == {"": expected}
    assert count_macs(mha, (x, x, x, None, False)) == expected  # need_weights=False: the sdpa path inside


def test_transformer_encoder_layer_is_counted_not_fast_pathed() -> None:
    E, F_, N, L = 8, 16, 2, 5
    enc = nn.TransformerEncoderLayer(E, 2, F_, batch_first=True)
    per = count_macs(enc, torch.randn(N, L, E), per_layer=True)
    assert per["self_attn"] == 4 * N * L * E * E + 2 * N * L * L * E
    assert per["linear1"] == per["linear2"] == N * L * E * F_


def test_lstm_macs_by_hand_and_packed_input() -> None:
    lstm = nn.LSTM(6, 5, num_layers=2, bidirectional=True, batch_first=True)
    # per token and direction: layer 0 has (4*5, 6) + (4*5, 5) weights, layer 1 (4*5, 2*5) + (4*5, 5)
    per_token = 2 * (20 * 6 + 20 * 5) + 2 * (20 * 10 + 20 * 5)
    assert count_macs(lstm, torch.randn(3, 4, 6)) == 3 * 4 * per_token
    gru = nn.GRU(6, 5, batch_first=True)
    packed = pack_padded_sequence(torch.randn(3, 4, 6), torch.tensor([4, 3, 2]), batch_first=True)
    assert count_macs(gru, packed) == (4 + 3 + 2) * (15 * 6 + 15 * 5)  # only the real tokens


def test_einsum_macs_by_hand() -> None:
    assert einsum_macs("ij,jk->ik", [(2, 3), (3, 4)]) == 2 * 3 * 4
    assert einsum_macs("ij,jk->k", [(2, 3), (3, 4)]) == 3 * 4  # i is summed out first: additions only
    assert einsum_macs("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)]) == 2 * 3 * 4 + 2 * 4 * 5
    assert einsum_macs("...ij,...jk->...ik", [(5, 2, 3), (5, 3, 4)]) == 5 * 2 * 3 * 4
    assert einsum_macs("ij,jk", [(2, 3), (3, 4)]) == 2 * 3 * 4  # implicit output
    assert einsum_macs("ii->i", [(3, 3)]) == 0


# ---------------------------------------------------------------------------------------------------------
# attribution to the innermost module


class _Attention(nn.Module):
    """A non-leaf block whose forward does its own matmuls (as HF attention does)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)  # (B, L, d)
        a = torch.softmax(q @ k.transpose(-1, -2), -1)  # (B, L, L)
        return torch.bmm(a, v) + torch.einsum("bld,bmd->blm", q, k) @ v


class _Net(nn.Module):
    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.attn = _Attention(d)
        self.head = nn.Linear(d, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x)).sum(1) + torch.matmul(x, x.transpose(-1, -2)).sum()


def test_per_layer_attribution_goes_to_innermost_module() -> None:
    B, L, d = 2, 3, 4
    per = count_macs(_Net(d), torch.randn(B, L, d), per_layer=True)
    lin = B * L * d * d
    assert per["attn.q"] == per["attn.k"] == per["attn.v"] == lin
    assert per["attn"] == 4 * B * L * L * d  # q @ k^T, bmm, einsum, and its @ v
    assert per["head"] == B * L * d * 2
    assert per[""] == B * L * L * d  # the matmul in the root forward
    assert count_macs(_Net(d), torch.randn(B, L, d)) == sum(per.values())


def test_shared_module_called_twice_counts_twice() -> None:
    lin = nn.Linear(4, 4)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = lin

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(self.lin(x))

    assert count_macs(Twice(), torch.randn(1, 4), per_layer=True) == {"lin": 2 * 16}


# ---------------------------------------------------------------------------------------------------------
# sparse MACs and parameter counts


def _half_masked_linear() -> nn.Linear:
    lin = nn.Linear(10, 4)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(1.0, 41.0).view(4, 10))
        lin.weight[:, ::2] = 0  # half the weights are zero
        lin.bias.fill_(1.0)
    return lin


def test_sparse_macs_of_half_masked_linear() -> None:
    lin, x = _half_masked_linear(), torch.randn(3, 10)
    assert count_macs(lin, x) == 120
    assert sparse_macs(lin, x) == 60
    [row] = layer_table(lin, x)
    assert (row.params, row.nonzeros, row.sparse_macs, row.macs) == (44, 24, 60, 120)
    assert row.sparsity == pytest.approx(20 / 44)
    assert row.shape == (4, 10) and row.kind == "Linear"


def test_sparse_macs_leave_activation_products_dense() -> None:
    net = _Net(4)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    x = torch.randn(2, 3, 4)
    per = sparse_macs(net, x, per_layer=True)
    assert per["attn.q"] == 0 and per["head"] == 0
    assert per["attn"] == count_macs(net, x, per_layer=True)["attn"]


def test_sparse_macs_of_a_parameter_matmul() -> None:
    class GPT2Conv1D(nn.Module):  # transformers' Conv1D: addmm with an (in, out) weight
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(6, 4))
            self.bias = nn.Parameter(torch.zeros(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.addmm(self.bias, x, self.weight)

    m = GPT2Conv1D()
    with torch.no_grad():
        m.weight[:3] = 0
    x = torch.randn(5, 6)
    assert count_macs(m, x) == 5 * 6 * 4
    assert sparse_macs(m, x) == 5 * 6 * 4 // 2


def test_parametrized_mask_is_seen_by_counts_and_sparse_macs() -> None:
    class Mask(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return w * (torch.arange(w.numel()).view_as(w) % 4 == 0)

    lin = nn.Linear(8, 2, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    parametrize.register_parametrization(lin, "weight", Mask())
    x = torch.randn(1, 8)
    assert count_nonzeros(lin) == 4 and count_params(lin) == 16
    assert sparse_macs(lin, x) == 4
    assert [r.name for r in layer_table(lin)] == [""]


def test_count_params_and_nonzeros_by_hand() -> None:
    lin = _half_masked_linear()
    assert count_params(lin) == 44 and count_nonzeros(lin) == 24
    assert count_params(lin.weight) == 40 and count_nonzeros(lin.weight) == 20
    assert count_params([lin.weight, lin.bias, lin.weight]) == 44  # repeated tensor counted once
    assert count_nonzeros(p for p in lin.parameters()) == 24


def test_tied_weights_count_once_in_totals() -> None:
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, head)
    assert count_params(model) == 40
    t = totals(model, torch.tensor([[1, 2, 3]]))
    assert t["params"] == 40 and t["macs"] == 3 * 4 * 10
    assert sum(r.params for r in layer_table(model)) == 80  # each row shows what it holds


def test_bad_inputs_raise_before_running() -> None:
    calls = []
    lin = nn.Linear(2, 2)
    lin.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(TypeError, match="example_inputs"):
        count_macs(lin, "x")
    with pytest.raises(TypeError, match="model"):
        count_macs("model", torch.randn(1, 2))
    with pytest.raises(TypeError, match="model_or_params"):
        count_params(3)
    with pytest.raises(TypeError, match="only tensors"):
        count_nonzeros([lin.weight, 2])
    assert calls == []


def test_counting_restores_training_flags_and_leaves_batchnorm_stats_alone() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Dropout(0.5))
    model.train()
    model[2].eval()
    before = model[1].running_mean.clone()
    count_macs(model, torch.randn(2, 1, 3, 3) + 5)
    assert [m.training for m in model] == [True, True, False] and model.training
    assert torch.equal(model[1].running_mean, before)
    assert not model._forward_hooks and not model[0]._forward_pre_hooks  # hooks removed


# ---------------------------------------------------------------------------------------------------------
# tables


def test_layer_table_rows_and_totals(tiny_net: nn.Module) -> None:
    x = torch.randn(2, 4, 8)
    rows = layer_table(tiny_net, x)
    assert [r.name for r in rows] == ["conv1", "conv2", "fc1", "fc2"]
    assert all(isinstance(r, LayerStats) for r in rows)
    by = {r.name: r for r in rows}
    assert by["conv1"].macs == 2 * 8 * 8 * (4 * 3)
    assert by["fc1"].macs == 2 * 64 * 16
    t = totals(tiny_net, x)
    assert t["macs"] == sum(r.macs for r in rows) == count_macs(tiny_net, x)
    assert t["params"] == count_params(tiny_net) == sum(r.params for r in rows)
    assert t["sparsity"] == 0.0 and t["sparse_macs"] == t["macs"]
    assert totals(tiny_net)["macs"] is None and layer_table(tiny_net)[0].macs == 0


def test_format_table_markdown_and_text() -> None:
    lin, x = _half_masked_linear(), torch.randn(3, 10)
    rows = layer_table(nn.Sequential(lin), x)
    md = format_table(rows).splitlines()
    assert md[0].startswith("| name | kind | shape |") and len(md) == 6
    assert md[4] == "" and md[5].startswith("sparsity: zeros over all of a row's own parameters")
    assert len(format_table(rows, note=False).splitlines()) == 4
    assert md[2] == "| 0 | Linear | 4x10 | 44 | 24 | 0.4545 | 120 | 60 |"
    assert md[3].startswith("| total |")
    text = format_table(rows, fmt="text").splitlines()
    assert text[0].split() == ["name", "kind", "shape", "params", "nonzeros", "sparsity", "MACs", "sparse", "MACs"]
    assert text[2].split() == ["0", "Linear", "4x10", "44", "24", "0.4545", "120", "60"]
    with pytest.raises(ValueError, match="fmt must be one of"):
        format_table(rows, fmt="html")


# ---------------------------------------------------------------------------------------------------------
# Hugging Face models (tiny, random, built in code)

B, L, E, I, H = 2, 7, 32, 64, 4  # batch, tokens, hidden, intermediate, heads


def test_bert_macs_by_hand() -> None:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(hidden_size=E, num_hidden_layers=2, num_attention_heads=H, intermediate_size=I,
                     vocab_size=50, max_position_embeddings=16)
    model = BertModel(cfg)
    ids = {"input_ids": torch.randint(0, 50, (B, L))}
    per_block = 4 * B * L * E * E + 2 * B * L * E * I + 2 * B * L * L * E  # q k v o, FFN, QK^T and AV
    assert count_macs(model, ids) == 2 * per_block + B * E * E  # + pooler on the first token
    per = count_macs(model, ids, per_layer=True)
    assert per["encoder.layer.0.attention.self.query"] == B * L * E * E
    assert per["encoder.layer.0.attention.self"] == 2 * B * L * L * E  # sdpa inside a non-leaf module


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_llama_macs_by_hand(attn: str) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    kv, V = 2, 50
    cfg = LlamaConfig(hidden_size=E, num_hidden_layers=2, num_attention_heads=H, num_key_value_heads=kv,
                      intermediate_size=I, vocab_size=V, max_position_embeddings=16, attn_implementation=attn)
    model = LlamaForCausalLM(cfg)
    ids = {"input_ids": torch.randint(0, V, (B, L))}
    hd = E // H
    per_block = 2 * B * L * E * E + 2 * B * L * E * kv * hd + 3 * B * L * E * I + 2 * B * H * L * L * hd
    assert count_macs(model, ids) == 2 * per_block + B * L * E * V
    rows = {r.name: r for r in layer_table(model, ids)}
    assert rows["model.layers.1.self_attn"].macs == 2 * B * H * L * L * hd
    assert rows["model.layers.1.self_attn.k_proj"].shape == (kv * hd, E)
