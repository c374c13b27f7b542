import pytest
import torch

import prunekit as pk
from prunekit.masks import attached
from prunekit.training import GradualMagnitude, fit


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
