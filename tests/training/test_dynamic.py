"""SET / RigL / GraNet: drop/grow arithmetic, constant active counts, zero-started grown weights, bad input."""

import pytest
import torch

from prunekit.masks import attached
from prunekit.training import SET, Callback, GraNet, RigL, fit
from prunekit.training.dynamic import active_counts, drop_grow, reset_grown_, update_count


def test_drop_grow_hand_case():
    mask = torch.tensor([True, True, True, False, False, False])
    w = torch.tensor([0.5, -0.1, 0.9, 0.0, 0.0, 0.0])  # active: 0.5, 0.1, 0.9
    g = torch.tensor([9.0, 0.0, 9.0, 0.2, 3.0, 1.0])  # inactive grads: 0.2, 3.0, 1.0
    new = drop_grow(mask, w.abs(), g.abs(), k=1)  # drop index 1 (|w| = 0.1), grow index 4 (|g| = 3)
    assert new.tolist() == [True, False, True, False, True, False]
    # k=2 drops indices 1 and 0; outside the kept {2} the largest gradients are index 0 (9.0, comes back) and 4
    assert drop_grow(mask, w.abs(), g.abs(), k=2).tolist() == [True, False, True, False, True, False]


def test_drop_grow_keeps_count_and_can_regrow_a_dropped_unit():
    mask = torch.tensor([True, False, False, False])
    w = torch.tensor([0.1, 0.0, 0.0, 0.0])
    g = torch.tensor([5.0, 1.0, 2.0, 3.0])  # the dropped unit has the largest gradient: it comes back
    assert drop_grow(mask, w.abs(), g, k=1).tolist() == [True, False, False, False]
    torch.manual_seed(0)
    for _ in range(20):
        m = torch.rand(50) < 0.3
        out = drop_grow(m, torch.rand(50), torch.rand(50), k=update_count(0.3, int(m.sum())))
        assert int(out.sum()) == int(m.sum())


def test_update_count_rounds():
    assert update_count(0.3, 10) == 3 and update_count(0.25, 10) == 2 and update_count(0.0, 7) == 0


def test_reset_grown_zeroes_weight_and_moments():
    p = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.ones(4)
    opt.step()
    grown = torch.tensor([False, True, False, True])
    reset_grown_(p, grown, [opt])
    assert p.detach()[grown].eq(0).all() and p.detach()[~grown].ne(0).all()
    st = opt.state[p]
    assert st["exp_avg"][grown].eq(0).all() and st["exp_avg_sq"][grown].eq(0).all()
    assert st["exp_avg"][~grown].ne(0).all()


@pytest.mark.parametrize("cls", [RigL, SET])
def test_dst_keeps_active_counts_and_starts_grown_at_zero(cls, tiny_net, tiny_data):
    cb = cls(0.8, update_every=5, update_fraction=0.4, allocation="erk")
    seen = {}

    class Check(Callback):  # a plain Callback
        def on_fit_start(self, state):
            seen["counts"] = active_counts(attached(tiny_net).masks)

        def on_step_end(self, state, batch):
            ms = attached(tiny_net)
            assert active_counts(ms.masks) == seen["counts"]
            for k, p in ms.params.items():
                assert (p.detach()[~ms.masks[k]] == 0).all()

    before = {}

    class Before(Callback):
        def on_batch_start(self, state, batch):
            ms = attached(tiny_net)
            before["masks"] = {k: m.clone() for k, m in ms.masks.items()}

    class After(Callback):
        def on_step_end(self, state, batch):
            if not cb.is_update(state.step):
                return
            ms = attached(tiny_net)
            opt = state.optimizer
            for k, p in ms.params.items():
                grown = ms.masks[k] & ~before["masks"][k]
                assert (p.detach()[grown] == 0).all(), "grown weights start at exactly zero"
                for v in opt.state[p].values():
                    if torch.is_tensor(v) and v.shape == p.shape:
                        assert (v[grown] == 0).all(), "grown weights' optimizer moments are reset"

    fit(tiny_net, tiny_data, steps=40, batch_size=16, lr=0.05, optimizer="adamw", callbacks=[Before(), cb, After(),
                                                                                              Check()])
    assert [h["step"] for h in cb.history] == [5, 10, 15, 20, 25]  # T_end = 0.75 * 40 = 30, exclusive
    assert sum(h["changed"] for h in cb.history) > 0
    fractions = [h["fraction"] for h in cb.history]
    assert fractions == sorted(fractions, reverse=True) and fractions[0] < 0.4  # cosine decay
    assert attached(tiny_net).sparsity() == pytest.approx(0.8, abs=1 / 500)


def test_rigl_grows_where_the_dense_gradient_is_largest(tiny_net, tiny_data):
    cb = RigL(0.8, update_every=4, update_fraction=0.5, end_step=5)
    grads = {}

    class Grab(Callback):
        def on_after_backward(self, state, batch):
            if state.step + 1 == 4:  # after RigL stashed the dense gradient of this update step
                grads.update({k: g.clone() for k, g in cb._grads.items()})
                grads["_masks"] = {k: m.clone() for k, m in attached(tiny_net).masks.items()}
                ms = attached(tiny_net)
                for k, p in ms.params.items():  # the optimizer itself still gets masked gradients
                    assert (p.grad[~ms.masks[k]] == 0).all()

    fit(tiny_net, tiny_data, steps=5, batch_size=16, lr=0.05, callbacks=[cb, Grab()])
    ms = attached(tiny_net)
    for k, old in grads["_masks"].items():
        grown = ms.masks[k] & ~old
        if grown.any():
            not_grown = ~ms.masks[k] & ~old
            assert grads[k].abs()[grown].min() >= grads[k].abs()[not_grown].max()
    assert any((grads[k] != 0).logical_and(~grads["_masks"][k]).any() for k in grads["_masks"]), "dense gradients"


def test_granet_follows_the_cubic_schedule_and_regrows(tiny_net, tiny_data):
    cb = GraNet(0.8, update_every=5, update_fraction=0.3, begin_step=0, end_step=30)
    fit(tiny_net, tiny_data, steps=40, batch_size=16, lr=0.05, callbacks=[cb])
    sp = [h["sparsity"] for h in cb.history]
    assert [h["step"] for h in cb.history] == [5, 10, 15, 20, 25, 30]
    assert sp == sorted(sp) and sp[-1] == pytest.approx(0.8)
    assert sum(h["changed"] for h in cb.history) > 0
    ms = attached(tiny_net)
    total = sum(m.numel() for m in ms.masks.values())
    assert sum(int(m.sum()) for m in ms.masks.values()) == round(0.2 * total)


def test_granet_sparse_to_sparse_layer_scope(tiny_net, tiny_data):
    cb = GraNet(0.9, initial_sparsity=0.5, scope="layer", update_every=5, begin_step=0, end_step=20)
    fit(tiny_net, tiny_data, steps=25, batch_size=16, lr=0.05, callbacks=[cb])
    ms = attached(tiny_net)
    assert ms.sparsity() == pytest.approx(0.9, abs=2 / 500)
    assert cb.history[0]["sparsity"] > 0.5


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.1, True])
def test_update_fraction_outside_open_unit_interval_is_an_error(bad):
    with pytest.raises(ValueError, match=r"update_fraction .* must be in \(0, 1\)"):
        RigL(0.9, update_fraction=bad)
    with pytest.raises(ValueError, match="update_fraction"):
        SET(0.9, update_fraction=bad)


def test_dst_bad_input(tiny_net, tiny_data):
    with pytest.raises(ValueError, match="sparsity"):
        RigL(1.0)
    with pytest.raises(ValueError, match="allocation"):
        RigL(0.9, allocation="lamp")
    with pytest.raises(ValueError, match="update_every"):
        SET(0.9, update_every=0)
    with pytest.raises(ValueError, match="beyond the training length"):
        fit(tiny_net, tiny_data, steps=10, callbacks=[RigL(0.9, end_step=50)])
    with pytest.raises(ValueError, match="none are"):
        fit(tiny_net, tiny_data, steps=10, callbacks=[RigL(None)])
    with pytest.raises(ValueError, match="initial_sparsity"):
        GraNet(0.5, initial_sparsity=0.8)
