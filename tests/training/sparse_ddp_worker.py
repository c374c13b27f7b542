"""Worker of test_ddp.py, a top-level module so spawned processes can import it (pytest's importlib mode
gives test modules names that a fresh interpreter cannot import)."""

import gc
import os

import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler, TensorDataset

from prunekit.io import save_tensors
from prunekit.masks import attach, attached
from prunekit.training import (
    SET,
    SRSTE,
    Callback,
    Distillation,
    GradualMagnitude,
    GradualMovement,
    GraNet,
    MaskSyncError,
    PruneAtInit,
    RigL,
    fit,
    lottery_ticket,
)

WORLD, GLOBAL_BATCH, STEPS, ORDER_EPOCHS = 2, 16, 12, 3


def teacher() -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(nn.Flatten(), nn.Linear(32, 4))


# every sparse-training callback; each entry makes a fresh list of callbacks, the first one owns the masks
METHODS = {
    "rigl": lambda: [RigL(0.8, update_every=3)],
    "set": lambda: [SET(0.8, update_every=3)],
    "granet": lambda: [GraNet(0.8, update_every=3, begin_step=0)],
    "gradual": lambda: [GradualMagnitude(0.8, begin_step=0, end_step=9, frequency=3, scope="global")],
    "movement": lambda: [GradualMovement(0.8, begin_step=0, end_step=9, frequency=3, scope="global")],
    "srste": lambda: [SRSTE(2, 4)],
    "snip": lambda: [PruneAtInit("snip", 0.8, data=data(), options={"batch_size": 8})],
    "grasp": lambda: [PruneAtInit("grasp", 0.8, data=data(), options={"batch_size": 8})],
    "synflow": lambda: [PruneAtInit("synflow", 0.8, data=data(), options={"iterations": 5})],
    "random": lambda: [PruneAtInit("random", 0.8)],
    "rigl_distilled": lambda: [RigL(0.8, update_every=3), Distillation(teacher(), alpha=0.5)],
}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3, padding=1)
        self.fc1 = nn.Linear(64, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, 8, generator=g)
    return TensorDataset(x, (x[:, 0].sum(1) > 0).long() + 2 * (x[:, 1].sum(1) > 0).long())


def make_net() -> Net:
    torch.manual_seed(0)
    return Net()


def result(model: Net, cbs: list) -> dict[str, torch.Tensor]:
    """Weights and masks of a finished run, flat for safetensors."""
    masks = cbs[0].masks if isinstance(cbs[0], SRSTE) else attached(model).masks
    return {**{f"w/{k}": v for k, v in model.state_dict().items()}, **{f"m/{k}": m for k, m in masks.items()}}


def ticket(model: nn.Module, sampler=None, batch_size: int = GLOBAL_BATCH) -> None:
    """Two IMP levels with rewinding to step 2 (20% then 36% sparsity), 6 steps a level."""
    lottery_ticket(model, data(), 0.36, rewind_step=2, steps=6, batch_size=batch_size, sampler=sampler, lr=0.05)


class Order(Callback):
    """Records the example indices of every batch in visiting order, ``(steps, batch)``."""

    def __init__(self) -> None:
        self.rows: list[torch.Tensor] = []

    def on_batch_start(self, state, batch) -> None:
        self.rows.append(batch.index.clone())


def shuffled_order(model: nn.Module, sampler, batch_size: int) -> torch.Tensor:
    """The batches of 3 shuffled epochs (``fit`` must call ``sampler.set_epoch`` for them to differ)."""
    rec = Order()
    fit(model, data(), epochs=ORDER_EPOCHS, batch_size=batch_size, sampler=sampler, lr=0.05, callbacks=[rec])
    return torch.stack(rec.rows)


def _run(rank: int, out: str) -> None:
    """Every method under DDP, IMP with rewinding, then masks that diverge on purpose."""
    ds = data()
    sampler = DistributedSampler(ds, WORLD, rank, shuffle=True, seed=3)
    order = shuffled_order(nn.parallel.DistributedDataParallel(make_net()), sampler, GLOBAL_BATCH // WORLD)
    save_tensors(os.path.join(out, f"order-{rank}.safetensors"), {"order": order})
    model = make_net()
    ticket(nn.parallel.DistributedDataParallel(model), DistributedSampler(ds, WORLD, rank, shuffle=False),
           GLOBAL_BATCH // WORLD)
    save_tensors(os.path.join(out, f"lottery-{rank}.safetensors"), result(model, [None]))
    for name, make in METHODS.items():
        model, cbs = make_net(), make()
        ddp = nn.parallel.DistributedDataParallel(model)
        sampler = DistributedSampler(ds, num_replicas=WORLD, rank=rank, shuffle=False)
        fit(ddp, ds, steps=STEPS, batch_size=GLOBAL_BATCH // WORLD, sampler=sampler, lr=0.05, callbacks=cbs)
        save_tensors(os.path.join(out, f"{name}-{rank}.safetensors"), result(model, cbs))
    model = make_net()
    ddp = nn.parallel.DistributedDataParallel(model)
    g = torch.Generator().manual_seed(rank)  # a bug on purpose: each rank draws its own conv mask
    attach(model, {"conv.weight": torch.rand(model.conv.weight.shape, generator=g) < 0.5})
    try:
        fit(ddp, ds, steps=2, batch_size=8, callbacks=[RigL(None)])
        msg = "no error"
    except MaskSyncError as e:
        msg = str(e)
    with open(os.path.join(out, f"diverge-{rank}.txt"), "w") as f:
        f.write(msg)


def worker(rank: int, port: int, out: str) -> None:
    """One rank. The DDP wrappers are freed and both ranks meet at a barrier before the process group is
    destroyed: a gloo group torn down while a peer is still using it, or with reducers alive at interpreter
    exit, can abort the process ("terminate called without an active exception")."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        _run(rank, out)
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()
