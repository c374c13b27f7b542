"""Federated methods without Flower: payload sizes equal the serialised bytes, aggregation rules by hand."""

import math

import pytest
import torch

from prunekit.federated.data import client_splits
from prunekit.federated.methods import SERVERS, FedSpec, client_accuracy, client_update, decode
from prunekit.federated.payload import bits, floats, payload_bytes, quantized, unfloats, unquantized


def _spec(method: str, sparsity: float = 0.5, pai: str = "magnitude", vote_rate: float = 1.0) -> FedSpec:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat_interleave(20)
    x = torch.randn(4, 8, generator=g)[y] * 2 + 0.5 * torch.randn(80, 8, generator=g)
    splits = client_splits(y, 2, 1.0, seed=0)
    return FedSpec(method, "mlp", {"in_features": 8, "hidden": [16], "num_classes": 4}, sparsity, 0, x, y, splits,
                   rounds=2, batch_size=16, pai=pai, vote_rate=vote_rate)


# weights: 16 x 8 = 128 and 4 x 16 = 64; biases 16 and 4; 212 floats in all
N_W, N_ALL = (128, 64), 212


def test_payload_codecs_hand_computed():
    t = {"a": torch.tensor([1.0, -2.0]), "b": torch.zeros(2, 3)}
    p = floats(t, ["a", "b"])
    assert payload_bytes(p) == 4 * 8
    assert torch.equal(unfloats(p, {"a": (2,), "b": (2, 3)})["a"], t["a"])
    with pytest.raises(ValueError, match="'b' has 6 values"):
        unfloats(p, {"a": (2,), "b": (7,)})
    assert payload_bytes(bits([torch.ones(9, dtype=torch.bool), torch.ones(8, dtype=torch.bool)])) == 2 + 1
    q = unquantized(quantized([torch.tensor([0.0, 0.5, 1.0])]), [3])[0]
    assert torch.allclose(q, torch.tensor([0.0, 128 / 255, 1.0]))


def test_fedavg_bytes_and_weighted_mean():
    spec = _spec("fedavg", 0.0)
    srv = SERVERS["fedavg"](spec)
    down = srv.downlink()
    assert payload_bytes(down) == 4 * N_ALL
    replies = [client_update(spec, down, p, 1) for p in range(2)]
    assert all(payload_bytes(r.payload) == 4 * N_ALL for r in replies)
    ups = [unfloats(r.payload, {k: tuple(v.shape) for k, v in srv.state.items()}) for r in replies]
    n0, n1 = replies[0].examples, replies[1].examples
    srv.aggregate([(r.payload, r.examples) for r in replies])
    k = "head.weight"
    assert torch.allclose(srv.state[k], (n0 * ups[0][k] + n1 * ups[1][k]) / (n0 + n1))


def test_hidenseek_sends_one_bit_per_kept_weight():
    spec = _spec("hidenseek", 0.5)
    srv = SERVERS["hidenseek"](spec)
    kept = [int(srv.keep[n].sum()) for n in srv.wnames]
    assert sum(kept) == round(0.5 * sum(N_W))
    down = srv.downlink()  # keep mask as bits + theta as one byte per kept weight
    assert payload_bytes(down) == sum(math.ceil(n / 8) for n in N_W) + sum(kept)
    r = client_update(spec, down, 0, 1)
    assert payload_bytes(r.payload) == sum(math.ceil(k / 8) for k in kept)
    net = decode(spec, down)  # theta starts at 1: every sign +1, the SynFlow/magnitude-pruned frozen net
    w = dict(net.named_parameters())["features.0.weight"]
    assert int((w != 0).sum()) <= int(srv.keep["features.0.weight"].sum())
    acc, n = client_accuracy(spec, down, 1)
    assert 0.0 <= acc <= 1.0 and n == len(spec.splits[1].test)


def test_hidenseek_theta_is_the_weighted_mean_of_sign_bits():
    spec = _spec("hidenseek", 0.5)
    srv = SERVERS["hidenseek"](spec)
    k = [int(srv.keep[n].sum()) for n in srv.wnames]
    plus = bits([torch.ones(x, dtype=torch.bool) for x in k])
    minus = bits([torch.zeros(x, dtype=torch.bool) for x in k])
    srv.aggregate([(plus, 30), (minus, 10)])
    assert all(torch.allclose(t, torch.full_like(t, 0.75)) for t in srv.theta.values())
    mem = SERVERS["hidenseek"](_spec("hidenseek", 0.5, vote_rate=0.25))  # theta_0 = 1: 0.75 * 1 + 0.25 * 0.75
    mem.aggregate([(plus, 30), (minus, 10)])
    assert all(torch.allclose(t, torch.full_like(t, 0.9375)) for t in mem.theta.values())
    mem.aggregate([(minus, 1)])  # 0.75 * 0.9375 + 0.25 * 0
    assert all(torch.allclose(t, torch.full_like(t, 0.703125)) for t in mem.theta.values())


def test_binary_supermask_votes_keep_exact_counts():
    spec = _spec("binary-supermask", 0.5)
    srv = SERVERS["binary-supermask"](spec)
    down = srv.downlink()  # the mask as bits + the keep votes as one byte per weight
    assert payload_bytes(down) == sum(math.ceil(n / 8) for n in N_W) + sum(N_W)
    replies = [client_update(spec, down, p, 1) for p in range(2)]
    assert all(payload_bytes(r.payload) == sum(math.ceil(n / 8) for n in N_W) for r in replies)
    srv.aggregate([(r.payload, r.examples) for r in replies])
    assert {n: int(m.sum()) for n, m in srv.masks.items()} == srv.k


def test_binary_supermask_vote_memory_hand_computed():
    spec = _spec("binary-supermask", 0.5, vote_rate=0.5)
    srv = SERVERS["binary-supermask"](spec)
    first = {n: m.clone() for n, m in srv.masks.items()}  # v_0 = the initial mask (0 / 1)
    ones = bits([torch.ones(n, dtype=torch.bool) for n in N_W])
    zeros = bits([torch.zeros(n, dtype=torch.bool) for n in N_W])
    srv.aggregate([(ones, 3), (zeros, 1)])  # this round's mean: 0.75 everywhere
    for n in srv.wnames:  # v_1 = 0.5 v_0 + 0.5 * 0.75: 0.875 where kept before, 0.375 elsewhere
        assert torch.allclose(srv.votes[n], torch.where(first[n], 0.875, 0.375))
        assert torch.equal(srv.masks[n], first[n])  # the memory keeps the old top-k


def test_fedavg_prune_prunes_at_its_round():
    spec = _spec("fedavg-prune", 0.75)
    srv = SERVERS["fedavg-prune"](spec)
    srv.end_round(1)  # prune_round = rounds // 2 = 1
    kept = sum(int(m.sum()) for m in srv.masks.values())
    assert kept == round(0.25 * sum(N_W))
    down = srv.downlink()  # masks as bits + kept values + biases
    assert payload_bytes(down) == sum(math.ceil(n / 8) for n in N_W) + 4 * (kept + 16 + 4)
    r = client_update(spec, down, 0, 2)
    assert payload_bytes(r.payload) == 4 * (kept + 16 + 4)


def test_hidenseek_needs_a_pai_mask():
    with pytest.raises(ValueError, match="--pai"):
        SERVERS["hidenseek"](_spec("hidenseek", 0.5, pai="none"))


def test_fedtiny_follows_the_cubic_schedule_and_never_regrows():
    spec = _spec("fedtiny", 0.5)
    spec.rounds = 4  # prune_round = 2: s_1 = 0.5 (1 - 0.5^3) = 0.4375, s_2 = 0.5
    srv = SERVERS["fedtiny"](spec)
    srv.end_round(1)
    first = {k: m.clone() for k, m in srv.masks.items()}
    assert sum(int(m.sum()) for m in first.values()) == round(0.5625 * sum(N_W))
    srv.end_round(2)
    assert sum(int(m.sum()) for m in srv.masks.values()) == round(0.5 * sum(N_W))
    assert all((srv.masks[k] <= first[k]).all() for k in first)  # pruned stays pruned
    srv.end_round(3)
    assert sum(int(m.sum()) for m in srv.masks.values()) == round(0.5 * sum(N_W))
