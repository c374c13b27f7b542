"""remove_: budgets met, outputs keep their shapes, zeroed units remove exactly, plans round-trip."""

import copy
import json

import pytest
import torch
from torch import nn

from prunekit.accounting import count_macs
from prunekit.structured import Plan, Structured, TraceError, load_pruned, remove_, save_pruned
from prunekit.zoo import example_inputs, get_model

from ._util import forward, removal_error

ZOO = ["mlp", "lenet5", "cnn1d", "resnet20", "resnet56", "vgg", "mobilenetv2", "vit"]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_coverage_30_and_50_percent_macs_exact_removal_and_round_trip(name, tmp_path):
    x = example_inputs(name)
    err, _ = removal_error(get_model(name, seed=0), x)
    assert err < 1e-5
    for target in (0.7, 0.5):
        m = get_model(name, seed=0)
        base = count_macs(m, x)
        shapes = [o.shape for o in forward(m, x)]
        plan = remove_(m, x, Structured(target_macs=target))
        ratio = count_macs(m, x) / base
        assert target - 0.06 <= ratio <= target + 1e-9, ratio
        assert plan.summary["macs_after"] == count_macs(m, x)
        assert [o.shape for o in forward(m, x)] == shapes
    save_pruned(m, plan, tmp_path, source={"zoo": name, "kwargs": {}})
    m2 = load_pruned(tmp_path)  # built from the plan's source, no pickle
    assert torch.equal(forward(m, x)[0], forward(m2, x)[0])


def test_plan_replays_on_a_fresh_copy_of_the_same_weights():
    x = example_inputs("resnet20")
    m, fresh = get_model("resnet20", seed=1), get_model("resnet20", seed=1)
    plan = remove_(m, x, Structured(target_params=0.5, importance="l1"))
    again = remove_(fresh, x, Plan.from_dict(json.loads(plan.to_json())))  # a plan replays via remove_ too
    assert again is not None and torch.equal(forward(m, x)[0], forward(fresh, x)[0])
    assert sum(p.numel() for p in m.parameters()) <= 0.5 * sum(p.numel() for p in get_model("resnet20").parameters())


@pytest.mark.parametrize("importance", ["l1", "l2", "taylor", "fpgm", "bn_scale", "random", "fluctuation"])
def test_every_importance_meets_the_budget(importance):
    x = example_inputs("vgg")
    m = get_model("vgg", seed=0)
    base = count_macs(m, x)
    remove_(m, x, Structured(target_macs=0.5, importance=importance, allocation="global"))
    assert 0.42 <= count_macs(m, x) / base <= 0.5


def test_l1_keeps_the_largest_channels():
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0, 1, 1], [9, 9, 9], [0.1, 0, 0], [5, 5, 5]]))
    remove_(m, torch.randn(2, 3), Structured(sparsity=0.5, importance="l1"))
    assert m[0].weight[:, 0].tolist() == [9.0, 5.0] and m[2].in_features == 2


def test_round_to_and_global_allocation():
    x = example_inputs("resnet20")
    m = get_model("resnet20", seed=0)
    remove_(m, x, Structured(target_macs=0.6, round_to=4, allocation="global"))
    assert all(c.out_channels % 4 == 0 for c in m.modules() if isinstance(c, nn.Conv2d))


def test_unreachable_target_is_an_error_and_model_is_untouched():
    x = example_inputs("lenet5")
    m = get_model("lenet5", seed=0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=r"target_macs=0\.01 is unreachable.*accepted: target_macs in \["):
        remove_(m, x, Structured(target_macs=0.01))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize("kwargs, match", [
    ({}, "needs target_macs or target_params"),
    ({"target_macs": 0.5, "target_params": 0.5}, "give one of"),
    ({"target_macs": 1.5}, r"target_macs must be in \(0, 1\]"),
    ({"target_macs": 0.5, "importance": "l3"}, "importance must be one of"),
    ({"target_macs": 0.5, "allocation": "erk"}, "allocation must be one of"),
    ({"target_macs": 0.5, "round_to": 0}, "round_to must be a positive integer"),
    ({"target_macs": 0.5, "ignore": "fc"}, "ignore must be a list"),
])
def test_bad_config_is_rejected_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Structured(**kwargs)


def test_config_json_round_trip():
    cfg = Structured(target_macs=0.5, ignore=["fc"], importance="fpgm")
    from prunekit.config import Config

    assert Config.from_json(cfg.to_json()) == cfg


def test_ignored_layer_keeps_its_shape():
    x = example_inputs("vgg")
    m = get_model("vgg", seed=0)
    before = m.features[0].weight.shape
    remove_(m, x, Structured(target_macs=0.6, ignore=["features.0"]))
    assert m.features[0].weight.shape == before


def test_unknown_op_fails_before_any_change():
    class FFT(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(torch.fft.fft(self.a(x)).real)

    m = FFT()
    with pytest.raises(TraceError, match="top-level model"):
        remove_(m, torch.randn(2, 4), Structured(sparsity=0.5))
    assert m.a.out_features == 8


def test_remove_blocks_by_block_influence():
    x = example_inputs("vit")
    m = get_model("vit", seed=0)
    plan = remove_(m, x, Structured(remove_blocks=0.5))
    assert len(m.blocks) == 2 and plan.blocks == {"blocks": plan.blocks["blocks"]}
    assert forward(m, x)[0].shape == (2, 10)


def test_bias_compensation_adds_the_mean_of_removed_inputs():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3, bias=False))
    x = torch.randn(64, 4)
    y0 = forward(m, x)[0]
    m2 = copy.deepcopy(m)
    plan = remove_(m, x, Structured(sparsity=0.5, bias_compensation=True))
    remove_(m2, x, Structured(sparsity=0.5))
    assert "2.bias" in plan.added and m[2].bias is not None
    # compensation removes the mean error over the calibration inputs
    assert abs(float((forward(m, x)[0] - y0).mean(0).abs().max())) < 1e-5
    assert float((forward(m2, x)[0] - y0).mean(0).abs().max()) > 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_removal_on_gpu_keeps_tensors_on_the_device():
    x = example_inputs("resnet20").cuda()
    m = get_model("resnet20", seed=0).cuda()
    remove_(m, x, Structured(target_macs=0.5, importance="taylor"))
    assert all(p.is_cuda for p in m.parameters()) and forward(m, x)[0].shape == (2, 10)


def test_two_removals_in_a_row_save_and_rebuild_from_the_dense_model(tmp_path):
    x = example_inputs("resnet20")
    m = get_model("resnet20", seed=0)
    remove_(m, x, Structured(target_macs=0.7))
    plan = remove_(m, x, Structured(target_macs=0.5 / 0.7))
    assert len(plan.previous) == 1
    save_pruned(m, plan, tmp_path, source={"zoo": "resnet20", "kwargs": {}})
    assert torch.equal(forward(load_pruned(tmp_path), x)[0], forward(m, x)[0])


class _Res(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        with torch.no_grad():
            self.lin.weight.mul_(scale)
            self.lin.bias.mul_(scale)

    def forward(self, x):
        return x + self.lin(x)


def _stack() -> nn.Module:
    torch.manual_seed(0)
    # block influence grows with the scale of a block's residual branch: blocks 1 and 3 matter least
    return nn.Sequential(nn.Linear(4, 8), nn.Sequential(*[_Res(s) for s in (1.0, 0.01, 0.5, 0.02)]), nn.Linear(8, 2))


def test_remove_blocks_auto_goes_depth_first_down_to_the_budget():
    x = torch.randn(4, 4)
    # MACs at batch 4: stem 4*4*8 = 128, each block 4*8*8 = 256, head 4*8*2 = 64; total 1216.
    # Budget 0.5 -> 608: removing two blocks leaves 704 >= 608, a third would leave 448 < 608.
    m = _stack()
    assert count_macs(m, x) == 1216
    plan = remove_(m, x, Structured(target_macs=0.5, remove_blocks="auto"))
    assert plan.blocks == {"1": [0, 2]}
    assert len(m[1]) == 2 and m[1][0].lin.weight.abs().mean() > 0.1
    assert 0.44 <= count_macs(m, x) / 1216 <= 0.5  # widths took the remaining 96 MACs
    # a budget that no block fits in: widths only
    m = _stack()
    plan = remove_(m, x, Structured(target_macs=0.9, remove_blocks="auto"))
    assert plan.blocks == {} and len(m[1]) == 4
    # the same by parameters: stem 40, blocks 72 each, head 18 -> 346. Keep 0.6 -> 207.6: one block goes (a second
    # would leave 202); keep 0.55 -> 190.3: two go (a third would leave 130)
    for keep, kept in ((0.6, [0, 2, 3]), (0.55, [0, 2])):
        m = _stack()
        plan = remove_(m, x, Structured(target_params=keep, remove_blocks="auto"))
        assert plan.blocks == {"1": kept}
        assert sum(p.numel() for p in m.parameters()) / 346 <= keep  # widths of 8 are coarse: 6 of 8 kept


def test_remove_blocks_auto_needs_a_budget_and_names_its_values():
    with pytest.raises(ValueError, match="target_macs or target_params"):
        Structured(remove_blocks="auto")
    with pytest.raises(ValueError, match="remove_blocks.*auto"):
        Structured(target_macs=0.5, remove_blocks="deep")
    cfg = Structured(target_macs=0.5, remove_blocks="auto")
    assert Structured.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_a_removal_that_removes_nothing_says_so(caplog):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    with caplog.at_level("WARNING", logger="prunekit.structured.api"):
        plan = remove_(m, x, Structured(target_macs=1.0))  # the budget is met at full width
    assert plan.summary["removed_nothing"] is True and "already met" in plan.summary["removed_nothing_reason"]
    assert "removed nothing" in caplog.text and m[0].out_features == 8
    with caplog.at_level("WARNING", logger="prunekit.structured.api"):
        plan = remove_(m, x, Structured(sparsity=0.5, ignore=["0", "2"]))  # every group ignored
    assert plan.summary["removed_nothing"] is True and "no removable group" in plan.summary["removed_nothing_reason"]
    plan = remove_(m, x, Structured(sparsity=0.5))
    assert plan.summary["removed_nothing"] is False and m[0].out_features == 4


class _MlpThenLstm(nn.Module):
    """Linear 8->32, ReLU, Linear 32->8, then an LSTM(8, 8): 256 + 256 + 4*(64 + 64) = 1024 MACs a token."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up, self.down, self.rnn = nn.Linear(8, 32), nn.Linear(32, 8), nn.LSTM(8, 8, batch_first=True)

    def forward(self, x):
        return self.rnn(self.down(torch.relu(self.up(x))))[0]


def test_macs_target_counts_ops_the_graph_has_no_term_for_as_fixed():
    x = torch.randn(1, 5, 8)  # 5 tokens: 5120 MACs, 2560 of them in the (ignored) LSTM
    m = _MlpThenLstm()
    plan = remove_(m, x, Structured(target_macs=0.6, ignore=["rnn"]))
    # budget 0.6 * 5120 = 3072 = 2560 fixed + 16 MACs a token per hidden unit -> at most 6 of 32 units kept
    assert plan.summary["macs_untraced"] == 2560
    assert m.up.out_features == 6
    assert plan.summary["macs_after"] == count_macs(m, x) == 2560 + 5 * 16 * 6
    assert plan.summary["macs_before"] == 5120
    with pytest.raises(ValueError, match="keeps 0.562"):  # floor: 4 units (max_group_sparsity 0.9) + the LSTM
        remove_(_MlpThenLstm(), x, Structured(target_macs=0.5, ignore=["rnn"]))
