"""Contract over every sparse-training method: exact sparsity after every optimizer step, pruned weights
exactly zero, DST active counts constant per layer, output shape unchanged, masks save/load, seeded."""

import pytest
import torch

import prunekit as pk
from prunekit.masks import attached
from prunekit.training import (
    SET,
    SRSTE,
    Callback,
    Distillation,
    GradualMagnitude,
    GradualMovement,
    GraNet,
    PruneAtInit,
    RigL,
    fit,
)

S = 0.8
STEPS = 24


def _methods(data):
    return {
        "rigl": lambda: [RigL(S, update_every=4)],
        "set": lambda: [SET(S, update_every=4)],
        "granet": lambda: [GraNet(S, update_every=4, begin_step=0, end_step=16)],
        "granet_s2s": lambda: [GraNet(S, initial_sparsity=0.5, update_every=4, begin_step=0, end_step=16)],
        "gradual": lambda: [GradualMagnitude(S, begin_step=0, end_step=16, frequency=4, scope="global")],
        "movement": lambda: [GradualMovement(S, begin_step=0, end_step=16, frequency=4, scope="global")],
        "srste_2_4": lambda: [SRSTE(2, 4)],
        "srste_1_4": lambda: [SRSTE(1, 4)],
        "snip": lambda: [PruneAtInit("snip", S, data=data)],
        "grasp": lambda: [PruneAtInit("grasp", S, data=data)],
        "synflow": lambda: [PruneAtInit("synflow", S, data=data, options={"iterations": 10})],
        "random_erk": lambda: [PruneAtInit("random", S)],
        "rigl_distilled": lambda: [RigL(S, update_every=4), Distillation(torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(32, 4)), alpha=0.5)],
    }


def _expected_kept(cb, step: int, total: int, start_kept: int) -> int:
    """Kept weights after ``step`` optimizer steps, from the schedule alone (not from the callback's state)."""
    if isinstance(cb, (GraNet, GradualMagnitude)):
        sched = cb.prune_schedule if isinstance(cb, GraNet) else cb.schedule
        updates = [u for u in range(1, step + 1) if sched.is_update_step(u)]
        if not updates:
            return start_kept
        return round((1 - sched.sparsity_at(updates[-1])) * total)
    return round((1 - S) * total)


class Contract(Callback):
    def __init__(self, method_cb, net) -> None:
        self.cb, self.net, self.steps = method_cb, net, 0

    def on_fit_start(self, state):
        ms = attached(self.net)
        self.start = {k: int(m.sum()) for k, m in ms.masks.items()} if ms is not None else None

    def on_step_end(self, state, batch):
        self.steps += 1
        if isinstance(self.cb, SRSTE):
            for k, p in self.cb._params.items():
                g = (p.detach() != 0).movedim(1, -1) if p.dim() > 2 else (p.detach() != 0)
                assert (g.reshape(-1, self.cb.m).sum(-1) <= self.cb.n).all(), (k, state.step)
                kept = int(self.cb.masks[k].sum())
                assert kept * self.cb.m == p.numel() * self.cb.n, (k, state.step)
            return
        ms = attached(self.net)
        total = sum(m.numel() for m in ms.masks.values())
        kept = sum(int(m.sum()) for m in ms.masks.values())
        assert kept == _expected_kept(self.cb, state.step, total, sum(self.start.values())), state.step
        for k, p in ms.params.items():
            assert (p.detach()[~ms.masks[k]] == 0).all(), (k, state.step)
        if isinstance(self.cb, (RigL, SET)):  # drop/grow keeps every layer's active count
            assert {k: int(m.sum()) for k, m in ms.masks.items()} == self.start


def _train(name, net, data):
    cbs = _methods(data)[name]()
    check = Contract(cbs[0], net)
    fit(net, data, steps=STEPS, batch_size=16, lr=0.05, callbacks=[*cbs, check], seed=0)
    assert check.steps == STEPS
    return attached(net)


@pytest.mark.parametrize("name", list(_methods(None)))
def test_every_method_is_exact_at_every_step(name, tiny_net, tiny_data, tmp_path):
    x, _ = tiny_data
    shape = tiny_net(x).shape
    init = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    ms = _train(name, tiny_net, tiny_data)
    assert tiny_net(x).shape == shape
    masks = {k: m.clone() for k, m in ms.masks.items()}
    pk.save_masks(tmp_path / "m.safetensors", masks, {"method": name})
    loaded, meta = pk.load_masks(tmp_path / "m.safetensors")
    assert meta == {"method": name} and all(torch.equal(loaded[k], masks[k]) for k in masks)
    # determinism: the same seed and initial weights give the same masks
    twin = type(tiny_net)()
    twin.load_state_dict(init)
    ms2 = _train(name, twin, tiny_data)
    assert all(torch.equal(ms2.masks[k], masks[k]) for k in masks)
