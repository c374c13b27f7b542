"""Supermask training (edge-popup, HideNseek sign supermask, Lottery Jackpots): scores learn, weights stay frozen."""

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.masks import attached
from prunekit.training import Callback, fit
from prunekit.training.loop import TrainState
from prunekit.training.methods import training_callbacks
from prunekit.training.supermask import (
    Supermask,
    load_supermask,
    pack_bits,
    rescale_kept_,
    save_supermask,
    short_restriction,
    topk_keep,
    unpack_bits,
)

METHODS = ("edge-popup", "sign-supermask", "jackpot")
OPTS = {"pai_options": {"iterations": 5}}


def _start(net: nn.Module, cb: Supermask) -> TrainState:
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    state = TrainState(net, opt, 4, 1, torch.device("cpu"))
    cb.on_fit_start(state)
    return state


def test_topk_keep_hand_computed():
    s = torch.tensor([0.1, -0.5, 0.3, 0.2])
    assert topk_keep(s, 2).tolist() == [False, True, True, False]  # |s| ranks: -0.5, 0.3
    forced = topk_keep(s, 2, fixed_keep=torch.tensor([True, False, False, False]))
    assert forced.tolist() == [True, True, False, False]


def test_short_restriction_hand_computed():
    w = torch.tensor([0.9, 0.1, 0.5, 0.7, 0.3, 0.2, 0.8, 0.4, 0.6, 0.05])  # magnitude ranks 0..9
    keep, drop = short_restriction(w, k=5, restriction=0.2)  # r = 2: ranks < 3 kept, ranks >= 7 pruned
    assert torch.nonzero(keep).flatten().tolist() == [0, 3, 6]  # 0.9, 0.7, 0.8
    assert sorted(torch.nonzero(drop).flatten().tolist()) == [1, 5, 9]  # 0.1, 0.2, 0.05


def test_pack_bits_round_trip_and_size():
    m = torch.tensor([[True, False, True], [False, False, True], [True, True, True]])
    bits = pack_bits(m)
    assert bits.dtype == np.uint8 and bits.size == 2  # 9 bits -> 2 bytes
    assert bits[0] == 0b10100111  # row-major bits, most significant first
    assert torch.equal(unpack_bits(bits.tobytes(), (3, 3)), m)
    with pytest.raises(ValueError, match="needs 2"):
        unpack_bits(np.zeros(3, np.uint8), (3, 3))


@pytest.mark.parametrize("name", METHODS)
def test_gradients_reach_only_the_scores(name, tiny_net, tiny_data):
    cb = training_callbacks(name, 0.5, data=tiny_data, **OPTS)[0]
    _start(tiny_net, cb)
    x, y = tiny_data
    nn.functional.cross_entropy(tiny_net(x), y).backward()
    for n, p in tiny_net.named_parameters():
        if n.endswith(".scores"):
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n


def test_straight_through_gradients_hand_computed():
    def linear() -> nn.Linear:
        lin = nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor([[1.0, -2.0, 3.0]]))
        return lin

    lin = linear()
    cb = Supermask("edge-popup", 0.0, weight_init="model", init_scores={"weight": torch.tensor([[0.5, -0.2, 0.1]])})
    _start(lin, cb)
    x = torch.tensor([[1.0, 1.0, 2.0]])
    lin(x).sum().backward()  # dL/dW_eff = x; edge-popup: dL/ds = x * w * sign(s)
    assert torch.allclose(cb._masked["weight"].scores.grad, torch.tensor([[1.0, 2.0, 6.0]]))
    cb = Supermask("sign", 1 / 3, weight_init="model", pai="magnitude",
                   init_scores={"weight": torch.tensor([[0.5, -0.2, 0.1]])})
    lin = linear()
    _start(lin, cb)  # magnitude keeps -2 and 3; signs +1, -1, +1
    out = lin(x).sum()
    assert float(out.detach()) == pytest.approx(2.0 + 6.0)  # -2 * -1 * 1 + 3 * 1 * 2
    out.backward()  # sign STE: dL/ds = x * w * M
    assert torch.allclose(cb._masked["weight"].scores.grad, torch.tensor([[0.0, -2.0, 6.0]]))


class _Watch(Callback):
    """Asserts after every step that the frozen tensors are bit-identical and signs are only -1 or +1."""

    def __init__(self, sm: Supermask, init: dict) -> None:
        self.sm, self.init, self.steps = sm, init, 0

    def on_step_end(self, state, batch):
        self.steps += 1
        sd = state.model.state_dict()
        for k, v in self.init.items():
            key = k if k in sd else k.replace(".weight", ".parametrizations.weight.original")
            assert torch.equal(sd[key], v), (k, state.step)
        for m in self.sm._masked.values():
            keep, sign = m.hard()
            if sign is not None:
                assert set(sign.unique().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize("name", METHODS)
def test_frozen_weights_bit_identical_and_export(name, tiny_net, tiny_data):
    sm = training_callbacks(name, 0.5, data=tiny_data, **OPTS)[0]
    sm.weight_init = "model"  # the frozen weights are then the model's own
    init = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    watch = _Watch(sm, init)
    fit(tiny_net, tiny_data, epochs=2, batch_size=16, lr=0.1, callbacks=[sm, watch], seed=0)
    assert watch.steps == 8
    st = sm.state
    assert all(torch.equal(st.frozen[k], v) for k, v in init.items())
    sd = tiny_net.state_dict()
    for k, v in init.items():
        if k in st.masks:
            sign = torch.where(st.signs[k], 1.0, -1.0) if k in st.signs else 1.0
            assert torch.equal(sd[k], v * st.masks[k].float() * sign), k
        else:
            assert torch.equal(sd[k], v), k  # biases: frozen, untouched
    kept = sum(int(m.sum()) for m in st.masks.values())
    assert kept == round(0.5 * sum(m.numel() for m in st.masks.values()))
    assert attached(tiny_net) is not None
    assert all(p.requires_grad for p in tiny_net.parameters())
    assert (name == "sign-supermask") == bool(st.signs)


def test_scores_learn_and_signs_flip(tiny_net, tiny_data):
    sm = training_callbacks("sign-supermask", 0.5, data=tiny_data, **OPTS)[0]
    fit(tiny_net, tiny_data, epochs=3, batch_size=16, lr=1.0, optimizer="sgd", callbacks=[sm], seed=0)
    assert sum(int((~s[sm.state.masks[k]]).sum()) for k, s in sm.state.signs.items()) > 0  # started all +1


def test_jackpot_starts_from_magnitude(tiny_net, tiny_data):
    sm = Supermask("jackpot", 0.5)
    init = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    fit(tiny_net, tiny_data, epochs=1, batch_size=64, lr=0.0, callbacks=[sm], seed=0)  # no score moves
    for k, m in sm.state.masks.items():
        w = init[k].abs().flatten()
        assert torch.equal(m.flatten(), topk_keep(w, int(m.sum()))), k


def test_rescale_kept_hand_computed():
    w = torch.tensor([[3.0, 4.0, 9.0], [1.0, 0.0, 2.0], [5.0, 5.0, 5.0]])
    keep = torch.tensor([[True, True, False], [False, False, False], [False, True, False]])
    # kept energy per row: 9 + 16 = 25, 0 (no kept weight: not counted), 25 -> mean 25 -> factor sqrt(2 / 25)
    f = rescale_kept_({"w": w}, {"w": keep})
    assert f["w"] == pytest.approx((2 / 25) ** 0.5)
    assert torch.allclose(w[0], torch.tensor([3.0, 4.0, 9.0]) * (2 / 25) ** 0.5)
    kept = (w * keep).pow(2).sum(1)
    assert kept[[0, 2]].mean().item() == pytest.approx(2.0)


@pytest.mark.parametrize("rescale", [True, False])
def test_sign_supermask_kept_weights_carry_kaiming_variance(tiny_net, rescale):
    sm = Supermask("sign", 0.8, input_shape=(4, 8), synflow_iterations=5, rescale=rescale)
    _start(tiny_net, sm)
    for name, m in sm._masked.items():
        keep, _ = m.hard()
        w = sm._frozen[name]
        energy = (w * keep).reshape(w.shape[0], -1).pow(2).sum(1)
        mean = energy[energy > 0].mean().item()
        assert (mean == pytest.approx(2.0, rel=1e-4)) == rescale, (name, mean)


def test_sign_needs_a_pai_mask(tiny_net):
    with pytest.raises(ValueError, match="needs masks attached"):
        _start(tiny_net, Supermask("sign", 0.5, pai="attached"))
    with pytest.raises(ValueError, match="input_shape"):
        _start(tiny_net, Supermask("sign", 0.5))


def test_save_load_bits(tiny_net, tiny_data, tmp_path):
    sm = training_callbacks("sign-supermask", 0.5, data=tiny_data, **OPTS)[0]
    fit(tiny_net, tiny_data, epochs=1, batch_size=16, lr=0.5, callbacks=[sm], seed=0)
    save_supermask(tmp_path / "sm", sm.state)
    back = load_supermask(tmp_path / "sm")
    assert all(torch.equal(back.masks[k], m) for k, m in sm.state.masks.items())
    assert all(torch.equal(back.signs[k][m], sm.state.signs[k][m]) for k, m in sm.state.masks.items())
    assert all(torch.equal(back.export()[k], v) for k, v in sm.state.export().items())
    from safetensors import safe_open

    with safe_open(str(tmp_path / "sm" / "bits.safetensors"), "pt") as f:
        for k, m in sm.state.masks.items():
            assert f.get_tensor(f"{k}.mask").numel() == (m.numel() + 7) // 8
            assert f.get_tensor(f"{k}.sign").numel() == (int(m.sum()) + 7) // 8
