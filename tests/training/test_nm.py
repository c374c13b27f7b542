"""SR-STE N:M training: exact N:M forward weights at every step, the SR-STE update, bad input."""

import pytest
import torch
from torch import nn

from prunekit.masks import attached
from prunekit.patterns import NM, mask_respects
from prunekit.training import SRSTE, Callback, fit
from prunekit.training.nm import srste_grad


def _groups(t: torch.Tensor, m: int) -> torch.Tensor:
    return (t.movedim(1, -1) if t.dim() > 2 else t).reshape(-1, m)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4)])
def test_weights_are_exactly_n_of_m_at_every_step(n, m, tiny_net, tiny_data):
    cb = SRSTE(n, m, decay=2e-4)
    checked = []

    class Check(Callback):
        def on_step_end(self, state, batch):
            for k, p in cb._params.items():
                assert (_groups(p.detach() != 0, m).sum(-1) <= n).all(), k
                assert (_groups(cb.masks[k], m).sum(-1) == n).all(), k
                assert (p.detach()[~cb.masks[k]] == 0).all()
            checked.append(state.step)

    x, _ = tiny_data
    fit(tiny_net, tiny_data, steps=16, batch_size=16, lr=0.05, callbacks=[cb, Check()])
    assert checked == list(range(1, 17))
    ms = attached(tiny_net)  # the final N:M masks stay attached for fine-tuning
    assert ms is not None and all(mask_respects(mm, NM(n, m)) for mm in ms.masks.values())
    assert ms.sparsity() == pytest.approx(1 - n / m)
    assert sum(f for _, f in cb.flips) >= 0 and tiny_net(x).shape == (64, 4)


def test_srste_update_rule_hand_case():
    net = nn.Sequential(nn.Linear(4, 1, bias=False))
    w0 = torch.tensor([[1.0, -3.0, 0.5, 2.0]])
    with torch.no_grad():
        net[0].weight.copy_(w0)
    x, y = torch.tensor([[1.0, 1.0, 1.0, 1.0]]), torch.tensor([[0.0]])
    lam, lr = 0.1, 0.5
    cb = SRSTE(2, 4, decay=lam, attach_at_end=False)
    fit(net, (x, y), steps=1, batch_size=1, lr=lr, momentum=0.0, weight_decay=0.0, lr_schedule="constant",
        loss_fn=lambda out, t: ((out - t) ** 2).sum(1), callbacks=[cb])
    e = torch.tensor([[False, True, False, True]])  # keep |-3| and |2|
    out = (w0 * e).sum()  # forward with the sparse weights: -1
    g = 2 * out * x  # d(out - 0)^2 / dW~, applied straight through to W
    w1 = w0 - lr * (g + lam * (~e) * w0)
    torch.testing.assert_close(cb.dense["0.weight"], w1)
    torch.testing.assert_close(srste_grad(g, w0, e, lam), g + lam * (~e) * w0)
    e1 = torch.zeros_like(e)
    e1[0, w1.abs().argsort(descending=True)[0, :2]] = True
    torch.testing.assert_close(net[0].weight.detach(), w1 * e1)  # the model holds W~ between steps


def test_srste_bad_input(tiny_data):
    with pytest.raises(ValueError, match="0 < n < m"):
        SRSTE(4, 4)
    with pytest.raises(ValueError, match="decay"):
        SRSTE(2, 4, decay=-1.0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(32, 6), nn.ReLU(), nn.Linear(6, 4))
    before = net[1].weight.detach().clone()
    with pytest.raises(ValueError, match=r"3\.weight.*multiple of m=4"):  # 6 inputs do not split into groups of 4
        fit(net, tiny_data, steps=2, callbacks=[SRSTE(2, 4)])
    assert torch.equal(net[1].weight, before)  # raised before any training
    fit(net, tiny_data, steps=2, callbacks=[SRSTE(2, 4, exclude=["3"])])  # leaving it out works
