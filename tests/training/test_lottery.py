"""IMP and lottery tickets: exact level sparsities, rewinding, optimizer-state policies, reinit control."""

import pytest
import torch

from prunekit.masks import attached
from prunekit.training import (
    Callback,
    RewindPoint,
    fit,
    iterative_magnitude,
    lottery_ticket,
    random_reinit_control,
    reinitialize_,
)

RECIPE = dict(steps=12, batch_size=16, lr=0.05)


class FirstStep(Callback):
    """Records the weights and optimizer state the first time a level's training starts."""

    def __init__(self) -> None:
        self.starts: list[tuple[dict, dict, int]] = []

    def on_fit_start(self, state):
        w = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
        opt = {id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
               for p, s in state.optimizer.state.items()}
        self.starts.append((w, opt, state.step))


def test_lottery_ticket_rewinds_survivors_to_init_and_hits_exact_sparsities(tiny_net, tiny_data):
    init = {k: v.detach().clone() for k, v in tiny_net.state_dict().items()}
    spy = FirstStep()
    res = iterative_magnitude(tiny_net, tiny_data, rounds=3, fraction=0.2, rewind_step=0, callbacks=[spy], **RECIPE)
    assert [lv.level for lv in res.levels] == [0, 1, 2, 3]
    total = sum(m.numel() for m in res.masks().values())
    for lv in res.levels[1:]:
        kept = sum(int(m.sum()) for m in lv.masks.values())
        assert kept == round(0.8 ** lv.level * total)  # 1 - (1 - fraction)^r, exactly
    for r, (w, opt_state, step) in enumerate(spy.starts[1:], start=1):
        masks = res.levels[r].masks
        assert step == 0 and opt_state == {}  # optimizer_state="reset": no momentum carried over
        for k, v in w.items():
            if k in masks:
                torch.testing.assert_close(v, init[k] * masks[k])  # survivors rewound, pruned ones zero
            else:
                torch.testing.assert_close(v, init[k])  # biases rewound too
    # pruned stays pruned: masks are nested
    for a, b in zip(res.levels[1:], res.levels[2:]):
        assert all((b.masks[k] <= a.masks[k]).all() for k in a.masks)


def test_late_rewinding_restores_step_k_weights_and_optimizer_state(tiny_net, tiny_data):
    spy = FirstStep()
    res = iterative_magnitude(tiny_net, tiny_data, rounds=1, rewind_step=3, optimizer_state="rewind",
                              callbacks=[spy], **RECIPE)
    w_k = res.rewind.weights
    saved = res.rewind.optimizer_state["state"]
    w, opt_state, step = spy.starts[1]
    assert step == 3  # the level resumes the LR schedule at step k
    masks = res.levels[1].masks
    for k, v in w.items():
        torch.testing.assert_close(v, w_k[k] * masks[k] if k in masks else w_k[k])
    assert len(opt_state) == len(saved) > 0  # momentum rewound with the weights
    names = [n for n, _ in tiny_net.named_parameters()]
    params = dict(tiny_net.named_parameters())
    for i, n in enumerate(names):
        buf = [s for pid, s in opt_state.items() if pid == id(params[n])][0]["momentum_buffer"]
        expect = saved[i]["momentum_buffer"] * (masks[n] if n in masks else 1)
        torch.testing.assert_close(buf, expect)


def test_fine_tuning_and_keep_policy(tiny_net, tiny_data):
    spy = FirstStep()
    res = iterative_magnitude(tiny_net, tiny_data, rounds=1, rewind_step=None, optimizer_state="keep",
                              callbacks=[spy], **RECIPE)
    assert res.rewind is None
    (w0, _, _), (w1, opt1, step1) = spy.starts
    assert step1 == 0 and len(opt1) > 0  # the previous optimizer, state kept
    assert not torch.equal(w1["fc1.weight"][res.levels[1].masks["fc1.weight"]],
                           w0["fc1.weight"][res.levels[1].masks["fc1.weight"]])  # trained weights, not rewound


def test_random_reinit_control_uses_the_same_masks_on_new_weights(tiny_net, tiny_data):
    res = lottery_ticket(tiny_net, tiny_data, 0.36, **RECIPE)
    assert len(res.levels) == 3  # 1 - 0.8^2 = 0.36
    masks = res.masks()
    before = tiny_net.fc1.weight.detach().clone()
    out = random_reinit_control(tiny_net, masks, tiny_data, seed=123, **RECIPE)
    ms = attached(tiny_net)
    assert all(torch.equal(ms.masks[k], masks[k]) for k in masks)
    assert not torch.equal(tiny_net.fc1.weight.detach(), before)
    assert (tiny_net.fc1.weight.detach()[~masks["fc1.weight"]] == 0).all()
    assert "train_loss" in out.final


def test_reinitialize_is_seeded(tiny_net):
    a = reinitialize_(tiny_net, 5).fc1.weight.detach().clone()
    b = reinitialize_(tiny_net, 5).fc1.weight.detach().clone()
    c = reinitialize_(tiny_net, 6).fc1.weight.detach().clone()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_lottery_bad_input(tiny_net, tiny_data):
    before = tiny_net.fc1.weight.detach().clone()
    with pytest.raises(ValueError, match=r"rewind_step=100 is beyond the training length \(12 steps\)"):
        iterative_magnitude(tiny_net, tiny_data, rounds=2, rewind_step=100, **RECIPE)
    with pytest.raises(ValueError, match="beyond the training length"):
        fit(tiny_net, tiny_data, steps=5, callbacks=[RewindPoint(6)])
    with pytest.raises(ValueError, match="fraction"):
        iterative_magnitude(tiny_net, tiny_data, rounds=2, fraction=1.0, **RECIPE)
    with pytest.raises(ValueError, match="exactly one of rounds"):
        iterative_magnitude(tiny_net, tiny_data, **RECIPE)
    with pytest.raises(ValueError, match="optimizer_state must be one of"):
        iterative_magnitude(tiny_net, tiny_data, rounds=1, optimizer_state="warm", **RECIPE)
    with pytest.raises(ValueError, match="needs rewind_step"):
        iterative_magnitude(tiny_net, tiny_data, rounds=1, rewind_step=None, optimizer_state="rewind", **RECIPE)
    with pytest.raises(ValueError, match="rewind step must be an integer"):
        RewindPoint(-1)
    assert torch.equal(tiny_net.fc1.weight, before)  # every error came before any training
