"""DDP with 2 gloo processes on CPU: identical masks on both ranks, the same result as one process with the
same global batch, and diverging masks detected with an error naming the layer and the ranks."""

import importlib
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler, SequentialSampler

from prunekit.io import load_tensors
from prunekit.training import fit

sys.path.insert(0, str(Path(__file__).parent))  # spawned processes inherit sys.path and import the worker
W = importlib.import_module("sparse_ddp_worker")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(tmp_path) -> None:
    """Run the 2 ranks; one retry on a fresh port, since a free port can be taken between probe and bind."""
    try:
        mp.spawn(W.worker, args=(_free_port(), str(tmp_path)), nprocs=W.WORLD, join=True)
    except mp.ProcessRaisedException as e:
        if "EADDRINUSE" not in str(e) and "address already in use" not in str(e).lower():
            raise
        mp.spawn(W.worker, args=(_free_port(), str(tmp_path)), nprocs=W.WORLD, join=True)


def test_ddp_two_gloo_ranks(tmp_path):
    _spawn(tmp_path)
    ds = W.data()
    for name, make in [*W.METHODS.items(), ("lottery", None)]:
        r0, _ = load_tensors(tmp_path / f"{name}-0.safetensors")
        r1, _ = load_tensors(tmp_path / f"{name}-1.safetensors")
        for k in r0:
            assert torch.equal(r0[k], r1[k]), f"{name}: {k} differs between ranks"
        model = W.make_net()  # one process, the same global batches
        if make is None:
            W.ticket(model, SequentialSampler(ds))
            single = W.result(model, [None])
            assert 1 - sum(int(v.sum()) for k, v in single.items() if k.startswith("m/")) / sum(
                v.numel() for k, v in single.items() if k.startswith("m/")) == pytest.approx(0.36, abs=1e-3)
        else:
            cbs = make()
            fit(model, ds, steps=W.STEPS, batch_size=W.GLOBAL_BATCH, sampler=SequentialSampler(ds), lr=0.05,
                callbacks=cbs)
            single = W.result(model, cbs)
        for k, v in r0.items():
            if k.startswith("m/"):
                assert torch.equal(v, single[k]), f"{name}: mask {k} differs from one process"
            else:
                torch.testing.assert_close(v, single[k], rtol=1e-4, atol=1e-5, msg=f"{name}: {k}")
    _check_order(tmp_path, ds)
    for r in range(W.WORLD):
        msg = (tmp_path / f"diverge-{r}.txt").read_text()
        assert "masks diverge between ranks" in msg, msg
        assert "conv.weight" in msg and "rank 0 vs ranks [1]" in msg


def _check_order(tmp_path, ds) -> None:
    """Epoch k's global batches under DDP are the one-process run's (set_epoch), and epochs differ."""
    ranks = [load_tensors(tmp_path / f"order-{r}.safetensors")[0]["order"] for r in range(W.WORLD)]
    single = W.shuffled_order(W.make_net(), DistributedSampler(ds, 1, 0, shuffle=True, seed=3), W.GLOBAL_BATCH)
    per_epoch = len(ds) // W.GLOBAL_BATCH
    assert single.shape == (W.ORDER_EPOCHS * per_epoch, W.GLOBAL_BATCH)
    merged = torch.cat(ranks, dim=1).sort(dim=1).values  # (steps, global batch)
    assert torch.equal(merged, single.sort(dim=1).values)
    epochs = single.reshape(W.ORDER_EPOCHS, -1)
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
