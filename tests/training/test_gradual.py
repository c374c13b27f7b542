import pytest
import torch

import prunekit as pk
from prunekit.masks import attached
from prunekit.training import GradualMagnitude, GradualMovement, fit, load_checkpoint, save_checkpoint


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.05), ("adamw", 3e-3)])
def test_every_masked_weight_is_zero_after_100_steps(optimizer, lr, tiny_net, tiny_data):
    cb = GradualMagnitude(0.8, begin_step=10, end_step=60, frequency=10, scope="global")
    fit(tiny_net, tiny_data, steps=100, batch_size=16, optimizer=optimizer, lr=lr, momentum=0.9, callbacks=[cb])
    ms = attached(tiny_net)
    assert ms is not None
    for k, p in ms.params.items():
        assert (p[~ms.masks[k]] == 0.0).all(), k
        for v in ms._optimizers[0].state[p].values():
            if torch.is_tensor(v) and v.shape == p.shape:
                assert (v[~ms.masks[k]] == 0.0).all()
    # sparsity followed the cubic schedule, monotone, ending at the target
    steps = [s for s, _ in cb.history]
    assert steps == [10, 20, 30, 40, 50, 60]
    sp = [s for _, s in cb.history]
    assert sp == sorted(sp) and sp[-1] == pytest.approx(0.8, abs=1e-3)
    assert pk.sparsity_report(tiny_net).sparsity >= 0.8 - 1e-3


def test_gradual_bad_input(tiny_net, tiny_data):
    with pytest.raises(ValueError, match="fixed sparsity"):
        GradualMagnitude(0.5, pattern=pk.NM(2, 4))
    with pytest.raises(ValueError, match="sparsity"):
        GradualMagnitude(1.5)
    with pytest.raises(ValueError, match="beyond the training length"):
        fit(tiny_net, tiny_data, steps=10, callbacks=[GradualMagnitude(0.5, begin_step=0, end_step=50)])


def _movement_run(cb, steps=2):
    """Linear(4 -> 1), one example x = 1, target 0, squared error, plain SGD lr 0.1 (hand-computed below)."""
    lin = torch.nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, 1.0, -0.5, 0.25]]))
    data = (torch.ones(1, 4), torch.zeros(1))
    fit(lin, data, steps=steps, batch_size=1, lr=0.1, momentum=0.0, weight_decay=0.0, lr_schedule="constant",
        loss_fn=lambda out, y: (out[:, 0] - y) ** 2, callbacks=[cb], eval_every_epoch=False)
    return lin


def test_movement_scores_and_masks_by_hand():
    # step 1: out 2.75, dL/dw = 2 * 2.75 = 5.5 each; S = -w * g = [-11, -5.5, 2.75, -1.375]; w <- w - 0.55
    #         = [1.45, 0.45, -1.05, -0.3]
    # step 2: out 0.55, g = 1.1; S -= w * g -> [-12.595, -5.995, 3.905, -1.045]; w <- [1.34, 0.34, -1.16, -0.41]
    # pruning to 50% at step 2 drops the two lowest S: w0 and w1, although w0 is the largest weight
    cb = GradualMovement(0.5, begin_step=1, end_step=2, frequency=1)
    lin = _movement_run(cb)
    torch.testing.assert_close(cb.movement["weight"], torch.tensor([[-12.595, -5.995, 3.905, -1.045]]))
    assert attached(lin).masks["weight"].tolist() == [[False, False, True, True]]
    torch.testing.assert_close(lin.weight.detach(), torch.tensor([[0.0, 0.0, -1.16, -0.41]]))
    assert [s for _, s in cb.history] == [0.0, 0.5]
    mag = _movement_run(GradualMagnitude(0.5, begin_step=1, end_step=2, frequency=1))
    assert attached(mag).masks["weight"].tolist() == [[True, False, True, False]]  # |w|: 1.34, 1.16 stay


def test_movement_of_pruned_weights_stops_and_state_round_trips(tmp_path):
    cb = GradualMovement(0.5, begin_step=1, end_step=2, frequency=1)
    lin = _movement_run(cb, steps=4)
    s = cb.movement["weight"]
    assert s[0, :2].tolist() == pytest.approx([-12.595, -5.995])  # held at zero from step 2: no more movement
    assert attached(lin).masks["weight"].tolist() == [[False, False, True, True]]
    save_checkpoint(tmp_path / "ck", lin, callbacks=[cb], step=4)
    twin = GradualMovement(0.5, begin_step=1, end_step=2, frequency=1)
    load_checkpoint(tmp_path / "ck", _movement_run(GradualMagnitude(0.5, begin_step=1, end_step=2, frequency=1)),
                    callbacks=[twin])
    assert torch.equal(twin.movement["weight"], s) and twin.history == cb.history
