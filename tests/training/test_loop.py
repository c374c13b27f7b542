import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.training import Callback, evaluate, fit


class Counter(Callback):
    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.indices: list[int] = []

    def _hit(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def on_fit_start(self, state):
        self._hit("fit_start")

    def on_epoch_start(self, state):
        self._hit("epoch_start")

    def on_step_end(self, state, batch):
        self._hit("step_end")
        self.indices.extend(batch.index.tolist())

    def loss(self, state, batch, loss):
        self._hit("loss")
        return loss


def test_fit_learns_and_calls_hooks(tiny_data):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    cb = Counter()
    before = evaluate(net, tiny_data)["loss"]
    res = fit(net, tiny_data, epochs=20, batch_size=16, lr=0.05, callbacks=[cb], val_data=tiny_data)
    assert res.final["val_loss"] < before
    assert cb.calls["fit_start"] == 1 and cb.calls["epoch_start"] == 20 and cb.calls["step_end"] == 80
    assert cb.calls["loss"] == 80 and sorted(set(cb.indices)) == list(range(64))


def test_fit_with_steps_and_finetune_keeps_masks(tiny_net, tiny_data):
    pk.prune_(tiny_net, pk.Magnitude(0.7, scope="global"))
    fit(tiny_net, tiny_data, steps=30, batch_size=16, lr=0.05)
    assert pk.sparsity_report(tiny_net).sparsity == pytest.approx(0.7, abs=1e-3)


def test_fit_bad_input(tiny_net, tiny_data):
    with pytest.raises(ValueError, match="exactly one of epochs= or steps="):
        fit(tiny_net, tiny_data)
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        fit(tiny_net, tiny_data, epochs=0)
    with pytest.raises(ValueError, match="empty"):
        fit(tiny_net, (torch.zeros(0, 4, 8), torch.zeros(0, dtype=torch.long)), epochs=1)


def test_resume_mid_epoch_matches_an_uninterrupted_run(tiny_data):
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))

    straight = net()
    fit(straight, tiny_data, steps=10, batch_size=16, lr=0.05, seed=3)  # 4 batches an epoch
    resumed2 = net()
    part = fit(resumed2, tiny_data, steps=10, batch_size=16, lr=0.05, seed=3, callbacks=[_StopAt(6)])
    assert part.state.step == 6
    part.state.stop = False
    fit(resumed2, tiny_data, steps=10, batch_size=16, lr=0.05, seed=3, state=part.state)
    for a, b in zip(straight.parameters(), resumed2.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


class _StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state, batch):
        state.stop = state.step >= self.step


class _PlainDataset(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_batched_tensor_fetch_equals_per_example_collation(tiny_data):
    nets = []
    for data in (tiny_data, _PlainDataset(*tiny_data)):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
        seen = Counter()
        fit(net, data, epochs=2, batch_size=16, lr=0.05, seed=5, callbacks=[seen])
        nets.append((net, seen.indices))
    assert nets[0][1] == nets[1][1]  # same example order
    for a, b in zip(nets[0][0].parameters(), nets[1][0].parameters()):
        assert torch.equal(a, b)


def test_non_finite_loss_stops_before_the_step():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(8, 3)
    x[4:, 0] = float("nan")  # the second batch of 4 holds NaN
    y = torch.zeros(8, dtype=torch.long)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 2 \(epoch 0\).*Lower lr"):
        fit(net, (x, y), epochs=1, batch_size=4, lr=0.1, sampler=torch.utils.data.SequentialSampler(range(8)))
    assert all(torch.isfinite(v).all() for v in net.state_dict().values())  # step 1 applied, step 2 not
    assert not torch.equal(net.weight, before["weight"])


class _Order(Callback):
    """Records the example indices of every batch, per epoch."""

    def __init__(self) -> None:
        self.epochs: list[list[list[int]]] = []

    def on_epoch_start(self, state):
        self.epochs.append([])

    def on_batch_start(self, state, batch):
        self.epochs[-1].append(sorted(batch.index.tolist()))


class _Flat(nn.Module):
    """Linear on the flattened (4, 8) examples."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _order(tiny_data, replicas: int, rank: int, batch_size: int) -> list[list[list[int]]]:
    from torch.utils.data import DistributedSampler, TensorDataset

    ds = TensorDataset(*tiny_data)
    rec = _Order()
    torch.manual_seed(0)
    sampler = DistributedSampler(ds, num_replicas=replicas, rank=rank, shuffle=True, seed=3)
    fit(_Flat(), ds, epochs=3, batch_size=batch_size, sampler=sampler, lr=0.01, callbacks=[rec])
    return rec.epochs


def test_distributed_sampler_reorders_every_epoch_like_one_process(tiny_data):
    # 64 examples: 2 ranks of 8 per batch are one process's batches of 16, epoch by epoch
    single = _order(tiny_data, 1, 0, 16)
    ranks = [_order(tiny_data, 2, r, 8) for r in range(2)]
    assert len(single) == 3 and all(len(e) == 4 for e in single)
    for k in range(3):
        for i in range(4):
            assert sorted(ranks[0][k][i] + ranks[1][k][i]) == single[k][i], f"epoch {k} batch {i}"
    assert single[0] != single[1] and single[1] != single[2]  # set_epoch: a new order each epoch
