"""Nested depth: block removal over nested stacks is planned and applied on the dense model's names."""

import copy

import torch
from torch import nn

from prunekit.accounting import count_macs
from prunekit.structured import Structured, apply_plan_, remove_
from prunekit.structured.plan import keep_blocks_
from prunekit.structured.remove import Undo

from ._util import forward


class _Res(nn.Module):
    def __init__(self, scale: float, tag: str) -> None:
        super().__init__()
        self.tag = tag
        self.lin = nn.Linear(8, 8)
        with torch.no_grad():
            self.lin.weight.mul_(scale)
            self.lin.bias.mul_(scale)

    def forward(self, x):
        return x + self.lin(x)


SCALES = [(0.0, 0.0, 0.0), (1.0, 0.01, 0.5), (0.02, 1.0, 0.7), (0.8, 0.9, 0.6)]


def _nested() -> nn.Module:
    torch.manual_seed(0)
    stages = [nn.Sequential(*[_Res(s, f"s{i}b{j}") for j, s in enumerate(sc)]) for i, sc in enumerate(SCALES)]
    return nn.Sequential(nn.Linear(4, 8), nn.Sequential(*stages), nn.Linear(8, 2))


def _tags(m: nn.Module) -> list[list[str]]:
    return [[b.tag for b in stage] for stage in m[1]]


def test_keep_lists_name_the_dense_model_so_an_outer_removal_cannot_shift_them():
    m = _nested()
    # the old one-pass application removed stage 0 first, then applied "1.1"'s list to what had been stage 2
    keep_blocks_(m, {"1": [1, 2, 3], "1.1": [0, 2], "1.2": [1, 2]}, Undo())
    assert _tags(m) == [["s1b0", "s1b2"], ["s2b1", "s2b2"], ["s3b0", "s3b1", "s3b2"]]
    undo = Undo()
    m = _nested()
    keep_blocks_(m, {"1.2": [0], "1": [0, 2]}, undo)  # any order of the keys means the same
    assert _tags(m) == [["s0b0", "s0b1", "s0b2"], ["s2b0"]]
    undo.rollback()
    assert _tags(m) == [[f"s{i}b{j}" for j in range(3)] for i in range(4)]


def test_remove_blocks_auto_over_nested_stacks_removes_the_least_influential_blocks():
    x = torch.randn(4, 4)
    m = _nested()
    dense = copy.deepcopy(m)
    # MACs at batch 4: stem 128, each block 256 (12 of them), head 64 -> 3264. Keep 0.6 -> 1958.4.
    # Lowest influence: stage 0 (identity, 768 MACs), then blocks s1b1 (0.01) and s2b0 (0.02): 1984 left;
    # every other block costs 256, which would cross the budget.
    assert count_macs(m, x) == 3264
    plan = remove_(m, x, Structured(target_macs=0.6, remove_blocks="auto"))
    assert plan.blocks == {"1": [1, 2, 3], "1.1": [0, 2], "1.2": [1, 2]}
    assert _tags(m) == [["s1b0", "s1b2"], ["s2b1", "s2b2"], ["s3b0", "s3b1", "s3b2"]]
    assert count_macs(m, x) <= 0.6 * 3264
    # the plan replays on the dense model to the same blocks and outputs
    apply_plan_(dense, plan)
    assert _tags(dense) == _tags(m)
    assert torch.allclose(forward(dense, x)[0], forward(m, x)[0])


def test_remove_blocks_fraction_skips_stacks_inside_removed_blocks():
    x = torch.randn(4, 4)
    m = _nested()
    plan = remove_(m, x, Structured(remove_blocks=0.5))
    # outer stack: 2 of 4 stages go (stage 0 and the next least influential); inner stacks of the two
    # surviving stages lose 1 of 3 each, and no entry names a stage that is gone
    assert len(plan.blocks["1"]) == 2
    gone = {f"1.{i}" for i in range(4)} - {f"1.{i}" for i in plan.blocks["1"]}
    assert not gone & set(plan.blocks) and "s0b0" not in sum(_tags(m), [])
    assert [len(s) for s in m[1]] == [2, 2]
