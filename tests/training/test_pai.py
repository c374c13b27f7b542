"""Pruning at initialization: SNIP, GraSP, SynFlow, random masks; hand cases, layer collapse, bad input."""

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.masks import attached
from prunekit.scores import get_score
from prunekit.training import (
    SNIP,
    GraSP,
    PruneAtInit,
    SynFlow,
    fit,
    grasp_masks,
    magnitude_masks,
    random_masks,
    snip_masks,
    synflow_masks,
)
from prunekit.training.pai import grasp_hessian_gradient, layer_targets, snip_scores, synflow_scores


def _linear_case():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2, bias=False))
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.0, 2.0], [0.0, 1.0, 1.0], [2.0, 0.0, -0.5]])
    y = torch.tensor([0, 1, 1, 0])
    return net, (x, y)


def test_snip_scores_are_w_times_the_cross_entropy_gradient():
    net, (x, y) = _linear_case()
    w = net[0].weight.detach()
    p = torch.softmax(x @ w.T, dim=1)  # (B, 2)
    grad = (p - nn.functional.one_hot(y, 2).float()).T @ x / len(y)  # dCE/dW, mean over the batch
    s = snip_scores(net, (x, y), batch_size=4)["0.weight"]
    torch.testing.assert_close(s, (w * grad).abs())
    assert torch.equal(get_score("snip")(w, {"grad": grad}), (w * grad).abs())


def test_grasp_hg_matches_a_hessian_vector_product(tiny_data):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(32, 6), nn.Tanh(), nn.Linear(6, 4))
    x, y = tiny_data
    shapes = [net[1].weight.shape, net[3].weight.shape]
    sizes = [s.numel() for s in shapes]

    def loss(flat):
        w1, w2 = flat[: sizes[0]].view(shapes[0]), flat[sizes[0]:].view(shapes[1])
        h = torch.tanh(x.flatten(1) @ w1.T + net[1].bias.detach())
        return nn.functional.cross_entropy((h @ w2.T + net[3].bias.detach()) / 5.0, y)

    flat = torch.cat([net[1].weight.detach().reshape(-1), net[3].weight.detach().reshape(-1)])
    g = torch.autograd.functional.jacobian(loss, flat)  # dL/dW, flattened
    _, hvp = torch.autograd.functional.hvp(loss, flat, g)
    hg = grasp_hessian_gradient(net, (x, y), temperature=5.0, batch_size=64)
    torch.testing.assert_close(torch.cat([hg["1.weight"].reshape(-1), hg["3.weight"].reshape(-1)]), hvp,
                               rtol=1e-4, atol=1e-6)
    # GraSP removes the highest -W*Hg, i.e. keeps the highest W*Hg
    masks = grasp_masks(net, (x, y), 0.5, temperature=5.0, batch_size=64)
    score = torch.cat([(net[1].weight * hg["1.weight"]).reshape(-1), (net[3].weight * hg["3.weight"]).reshape(-1)])
    kept = torch.cat([masks["1.weight"].reshape(-1), masks["3.weight"].reshape(-1)])
    assert int(kept.sum()) == len(score) // 2
    assert score[kept].min() >= score[~kept].max()


def test_synflow_scores_hand_case():
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
        net[1].weight.copy_(torch.tensor([[-4.0, 0.25]]))
    s = synflow_scores(net, (2,))
    # R = |W2| |W1| 1: dR/dW1[i, j] = |W2|[0, i]; dR/dW2[0, i] = sum_j |W1|[i, j]
    torch.testing.assert_close(s["0.weight"], torch.tensor([[4.0, 8.0], [0.75, 0.125]]))
    torch.testing.assert_close(s["1.weight"], torch.tensor([[4.0 * 3.0, 0.25 * 3.5]]))
    assert net[0].weight[0, 1] == -2.0  # the model itself is untouched


def _collapse_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        net[0].weight.mul_(10.0)  # large weights first, tiny weights in the middle
        net[2].weight.mul_(0.01)
    return net


def test_global_magnitude_collapses_a_layer_and_synflow_does_not():
    net = _collapse_net()
    mag = magnitude_masks(net, 0.95, scope="global", max_layer_sparsity=1.0)
    assert not mag["2.weight"].any() and not mag["4.weight"].any()  # whole layers pruned away
    syn = synflow_masks(net, 0.95, (4,), iterations=50, max_layer_sparsity=1.0)
    assert all(m.any() for m in syn.values())
    total = sum(m.numel() for m in syn.values())
    assert sum(int(m.sum()) for m in syn.values()) == round(0.05 * total)


def test_random_masks_exact_per_layer_and_seeded(tiny_net):
    m1 = random_masks(tiny_net, 0.8, allocation="erk", seed=3)
    m2 = random_masks(tiny_net, 0.8, allocation="erk", seed=3)
    m3 = random_masks(tiny_net, 0.8, allocation="erk", seed=4)
    targets = layer_targets({k: tuple(m.shape) for k, m in m1.items()}, 0.8, "erk")
    for k, m in m1.items():
        assert int(m.sum()) == round((1 - targets[k]) * m.numel()), k
        assert torch.equal(m, m2[k])
    assert any(not torch.equal(m1[k], m3[k]) for k in m1)
    assert len({round(t, 3) for t in targets.values()}) > 1  # ERK is not uniform
    u = random_masks(tiny_net, 0.75, allocation="uniform")
    assert all(int(m.sum()) == m.numel() // 4 for m in u.values())


def test_prune_at_init_callback_fixes_the_masks(tiny_net, tiny_data):
    cb = PruneAtInit("snip", 0.9, data=tiny_data)
    fit(tiny_net, tiny_data, steps=12, batch_size=16, lr=0.05, callbacks=[cb])
    ms = attached(tiny_net)
    assert all(torch.equal(ms.masks[k], cb.masks[k]) for k in cb.masks)
    total = sum(m.numel() for m in ms.masks.values())
    assert sum(int(m.sum()) for m in ms.masks.values()) == round(0.1 * total)
    assert pk.sparsity_report(tiny_net).sparsity >= 1 - round(0.1 * total) / total  # pruned weights are zero


@pytest.mark.parametrize("config", [SNIP(0.8), GraSP(0.8, temperature=10.0), SynFlow(0.8, iterations=10)])
def test_prune_with_pai_configs(config, tiny_net, tiny_data):
    report = pk.prune_(tiny_net, config, data=tiny_data)
    assert report.sparsity == pytest.approx(0.8, abs=1 / 1000)
    assert pk.sparsity_report(tiny_net).sparsity >= 0.8 - 1 / 1000
    assert type(config).from_json(config.to_json()) == config


def test_snip_and_synflow_masks_exact(tiny_net, tiny_data):
    for masks in (snip_masks(tiny_net, tiny_data, 0.7), synflow_masks(tiny_net, 0.7, (4, 8), iterations=5)):
        total = sum(m.numel() for m in masks.values())
        assert sum(int(m.sum()) for m in masks.values()) == round(0.3 * total)


def test_pai_bad_input(tiny_net, tiny_data):
    with pytest.raises(ValueError, match="needs data"):
        snip_masks(tiny_net, None, 0.5)
    with pytest.raises(ValueError, match="input_shape"):
        synflow_masks(tiny_net, 0.5, (0, 8))
    with pytest.raises(ValueError, match="method must be one of"):
        PruneAtInit("obd", 0.5)
    with pytest.raises(ValueError, match="needs data"):
        PruneAtInit("grasp", 0.5)
    with pytest.raises(ValueError, match="scope='layer'"):
        snip_masks(tiny_net, tiny_data, 0.5, allocation="erk")
    with pytest.raises(ValueError, match="temperature"):
        grasp_masks(tiny_net, tiny_data, 0.5, temperature=0)
    with pytest.raises(ValueError, match="sparsity"):
        random_masks(tiny_net, 1.2)
    with pytest.raises(ValueError, match="iterations"):
        synflow_masks(tiny_net, 0.5, (4, 8), iterations=0)


def test_synflow_through_prune_equals_synflow_masks(tiny_net, tiny_data):
    """The prune_ path (any pattern/scope) gives the same global unstructured masks as the PaI helper."""
    twin = type(tiny_net)()
    twin.load_state_dict(tiny_net.state_dict())
    expect = synflow_masks(twin, 0.9, (4, 8), iterations=8)
    pk.prune_(tiny_net, SynFlow(0.9, iterations=8), data=tiny_data)
    got = attached(tiny_net).masks
    assert all(torch.equal(got[k], expect[k]) for k in expect)
    ms = pk.prune_(twin, SynFlow(None, pattern=pk.NM(2, 4), iterations=8), data=tiny_data).masks
    for k, m in ms.masks.items():
        assert (m.movedim(1, -1).reshape(-1, 4).sum(-1) == 2).all(), k
