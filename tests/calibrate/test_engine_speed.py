"""What the engine's speed work must not change: selections equal the stable sorts they replace, the
error report costs nothing unless asked, and the uniform-arguments probe captures what a full pass does."""

from __future__ import annotations

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
