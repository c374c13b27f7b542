"""What the engine's speed work must not change: selections equal the stable sorts they replace, the
error report costs nothing unless asked, and the uniform-arguments probe captures what a full pass does."""

from __future__ import annotations

import re

import pytest
import torch

from prunekit.calibrate import SparseGPT, Wanda, prune_blocks
from prunekit.calibrate import solvers as S
from prunekit.calibrate.blocks import capture_stack, find_stacks, stack_runner
from prunekit.zoo.tiny_hf import tiny_hf_model
from prunekit.zoo.tiny_hf import tiny_ids as ids


def _sorted_rows(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    keep = torch.arange(scores.shape[1])[None, :] < k[:, None]
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order, keep)


def _sorted_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.zeros(scores.numel(), dtype=torch.bool)
    out[torch.argsort(scores.reshape(-1), stable=True)[:k]] = True
    return out.reshape(scores.shape)


@pytest.mark.parametrize("ties", [False, True])
def test_selections_equal_the_stable_sorts(ties):
    g = torch.Generator().manual_seed(1)
    for _ in range(60):
        r, c = torch.randint(1, 12, (2,), generator=g).tolist()
        x = torch.randint(0, 3, (r, c), generator=g).float() if ties else torch.rand(r, c, generator=g)
        k = S.row_keep_counts(r, c, float(torch.rand(1, generator=g)))
        assert torch.equal(S.row_topk_mask(x, k), _sorted_rows(x, k))
        n = int(torch.randint(0, r * c + 1, (1,), generator=g))
        assert torch.equal(S._lowest_k(x, n), _sorted_lowest(x, n))
    x = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0]])  # hand-checked: keep 3 -> the 2.0s at 1, 2 and then 3
    assert S.row_topk_mask(x, torch.tensor([2])).tolist() == [[False, True, True, False, False]]
    assert S._lowest_k(x, 3).tolist() == [[True, True, False, False, True]]


def test_error_report_only_when_asked_or_free():
    x = ids()
    plain = prune_blocks(tiny_hf_model("LlamaForCausalLM"), "wanda", Wanda(0.5), x)
    assert all(r.error is None for r in plain.layers)  # Wanda gathers no X^T X for it by default
    asked = prune_blocks(tiny_hf_model("LlamaForCausalLM"), "wanda", Wanda(0.5, error_report=True), x)
    assert all(r.error is not None and 0 < r.error < 1 for r in asked.layers)
    assert [m.tolist() for m in plain.masks.masks.values()] == [m.tolist() for m in asked.masks.masks.values()]
    sgpt = prune_blocks(tiny_hf_model("LlamaForCausalLM"), "sparsegpt", SparseGPT(0.5, blocksize=16), x)
    assert all(r.error is not None for r in sgpt.layers)  # SparseGPT has H anyway: reported by default
    off = prune_blocks(tiny_hf_model("LlamaForCausalLM"), "sparsegpt", SparseGPT(0.5, blocksize=16,
                                                                                    error_report=False), x)
    assert all(r.error is None for r in off.layers)
    with pytest.raises(ValueError, match="error_report"):
        Wanda(0.5, error_report="yes")


@pytest.mark.parametrize("name", ["LlamaForCausalLM", "T5ForConditionalGeneration"])
def test_probe_captures_what_a_full_pass_does(name):
    model = tiny_hf_model(name)
    stacks = find_stacks(model)
    batches = list(ids(n=6).split(3))
    cpu = torch.device("cpu")
    with torch.no_grad():
        a = capture_stack(stack_runner(model, stacks, 0), stacks[0].blocks, batches, cpu, cpu, probe=True)
        b = capture_stack(stack_runner(model, stacks, 0), stacks[0].blocks, batches, cpu, cpu, probe=False)
    assert a.uniform == b.uniform == (name == "LlamaForCausalLM")  # T5 passes its position bias onward
    for fa, fb in zip(a.first, b.first):
        assert torch.equal(fa.hidden, fb.hidden)
    for i in range(len(stacks[0].blocks)):
        for (aa, ka), (ab, kb) in zip(a.extras[i], b.extras[i]):
            assert len(aa) == len(ab) and ka.keys() == kb.keys()
            for key in ka:
                va, vb = ka[key], kb[key]
                if torch.is_tensor(va):
                    assert torch.equal(va, vb), key
                elif isinstance(va, tuple):
                    assert all(torch.equal(p, q) for p, q in zip(va, vb)), key


def _counting(model: torch.nn.Module, pattern: str) -> dict[str, int]:
    """Completed forward calls of every module whose name matches ``pattern``."""
    calls: dict[str, int] = {}
    for n, m in model.named_modules():
        if re.fullmatch(pattern, n):
            calls[n] = 0
            m.register_forward_hook(lambda mod, a, out, n=n: calls.__setitem__(n, calls[n] + 1))
    return calls


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name, last", [("LlamaForCausalLM", r"(model)\.layers\.(\d+)\.mlp\.down_proj"),
                                        ("BertModel", r"(encoder)\.layer\.(\d+)\.output\.dense"),
                                        ("T5ForConditionalGeneration",
                                         r"(encoder|decoder)\.block\.(\d+)\.layer\.\d\.DenseReluDense\.wo"),
                                        ("MixtralForCausalLM", None), ("Qwen2MoeForCausalLM", None)])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_statistics_passes_end_early_with_the_same_result(monkeypatch, name, last, method):
    """Six batches of one sequence, the output error on the first two: the statistics passes of the other four
    end before the block's last Linear runs (it completes 2 statistics calls + 6 re-run calls per block, the
    last block 2 + 2), and the pruned weights and masks are bit-identical to full passes. MoE blocks (fused
    experts) always run whole passes."""
    from prunekit.calibrate import engine

    cfg = (Wanda(0.5, batch_size=1) if method == "wanda" else SparseGPT(0.5, blocksize=16, batch_size=1))
    x = ids(n=6)
    runs = {}
    for mode, seqs in (("early", 2), ("full", 1 << 60)):
        monkeypatch.setattr(engine, "ERROR_SEQUENCES", seqs)
        model = tiny_hf_model(name)
        calls = _counting(model, last) if last else {}
        report = prune_blocks(model, method, cfg, x)
        runs[mode] = (_state(model), report, calls)
    (we, re_, ce), (wf, rf, cf) = runs["early"], runs["full"]
    assert we.keys() == wf.keys() and all(torch.equal(we[k], wf[k]) for k in we)
    assert all(torch.equal(re_.masks.masks[k], rf.masks.masks[k]) for k in rf.masks.masks)
    blocks_e, blocks_f = re_.extra["blocks"], rf.extra["blocks"]
    assert [b["output_error_sequences"] for b in blocks_e] == [2] * len(blocks_e)
    assert [b["output_error_sequences"] for b in blocks_f] == [6] * len(blocks_f)
    assert all(0 < b["output_error"] < 1 for b in blocks_e)
    if last:  # calls saved per block: 4 statistics passes; the last block of a stack also 4 re-runs
        where = {n: re.fullmatch(last, n).groups() for n in ce}
        final = {st: max(int(i) for s2, i in where.values() if s2 == st) for st, _ in where.values()}
        assert len(ce) == (4 if name.startswith("T5") else 2)
        assert {n: cf[n] - ce[n] for n in ce} == {n: 8 if int(i) == final[st] else 4 for n, (st, i) in where.items()}


def test_error_batches_counts_sequences():
    from prunekit.calibrate.blocks import BlockInput
    from prunekit.calibrate.engine import error_batches

    def batches(*sizes):
        return [BlockInput(torch.zeros(s, 2, 3)) for s in sizes]

    assert error_batches(batches(3, 3, 3, 3), 8) == 3  # 3 + 3 < 8 <= 3 + 3 + 3
    assert error_batches(batches(4, 4, 4), 8) == 2
    assert error_batches(batches(16, 16), 8) == 1
    assert error_batches(batches(1, 1), 8) == 2  # fewer than 8 in all: every batch
    assert error_batches([], 8) == 0


class _Twice(torch.nn.Module):
    """``a`` runs twice per pass (before and after ``b``): no pass may end at ``b``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(self.b(self.a(x)))


def test_a_layer_called_twice_keeps_whole_passes():
    from prunekit.calibrate.blocks import BlockInput
    from prunekit.calibrate.engine import gather_block

    torch.manual_seed(0)
    block = _Twice()
    inputs = [BlockInput(torch.randn(1, 4, 3)) for _ in range(3)]
    needs = {"a": frozenset({"norms"}), "b": frozenset({"norms"})}
    stats, outs = gather_block(block, {"a": block.a, "b": block.b}, needs, inputs, torch.device("cpu"), keep=1)
    assert len(outs) == 1
    assert stats["a"].n_seqs == 6 and stats["b"].n_seqs == 3  # every call of every pass was counted
    full, _ = gather_block(block, {"a": block.a, "b": block.b}, needs, inputs, torch.device("cpu"))
    assert torch.equal(stats["a"].msq, full["a"].msq) and torch.equal(stats["b"].msq, full["b"].msq)
