"""torch.distributed helpers for sparse training: unwrap DDP, average statistics, check that masks agree.

Every mask update in this package is computed from statistics that are equal on every rank (weights
kept equal by DDP, gradients averaged by DDP or by ``all_reduce_mean_``, seeded generators), and then
verified with ``check_masks_synced``: a mask that differs between ranks is an error naming the layer
and the ranks, never a silent divergence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch import distributed as dist

_PRIME = 1_000_003  # modulus of the second position checksum (keeps int64 products exact)


class MaskSyncError(ValueError):
    """Masks differ between distributed ranks."""


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (else ``model``)."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def is_ddp(model: nn.Module) -> bool:
    """True when ``model`` is wrapped in ``DistributedDataParallel`` (its gradients arrive averaged)."""
    return isinstance(model, nn.parallel.DistributedDataParallel)


def world_size() -> int:
    """Number of processes in the default group (1 when torch.distributed is not initialized)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """Rank of this process in the default group (0 when torch.distributed is not initialized)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@torch.no_grad()
def all_reduce_mean_(tensors: Sequence[Tensor]) -> None:
    """Average ``tensors`` in place over all ranks (a no-op for one process)."""
    n = world_size()
    if n == 1:
        return
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(n)


@torch.no_grad()
def mask_fingerprint(mask: Tensor) -> Tensor:
    """``[kept, sum of kept positions, sum of squared positions mod p]``: equal masks give equal rows."""
    idx = torch.nonzero(mask.reshape(-1)).reshape(-1).to(torch.int64)  # (kept,)
    r = idx % _PRIME
    return torch.stack([idx.new_tensor(idx.numel()), idx.sum(), (r * r % _PRIME).sum()])


@torch.no_grad()
def check_masks_synced(masks: Mapping[str, Tensor], where: str = "") -> None:
    """Raise ``MaskSyncError`` naming each layer whose mask differs between ranks (collective call)."""
    n = world_size()
    if n == 1 or not masks:
        return
    names = sorted(masks)
    local = torch.stack([mask_fingerprint(masks[k]).cpu() for k in names])  # (layers, 3)
    backend = dist.get_backend()
    dev = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    gathered = [torch.empty_like(local, device=dev) for _ in range(n)]
    dist.all_gather(gathered, local.to(dev))
    rows = torch.stack([g.cpu() for g in gathered])  # (ranks, layers, 3)
    bad = []
    for i, name in enumerate(names):
        differ = [r for r in range(1, n) if not torch.equal(rows[r, i], rows[0, i])]
        if differ:
            kept = [int(rows[r, i, 0]) for r in range(n)]
            bad.append(f"{name} (rank 0 vs ranks {differ}; kept per rank {kept})")
    if bad:
        at = f" {where}" if where else ""
        raise MaskSyncError(f"masks diverge between ranks{at}: {'; '.join(bad)}. Masks must be computed from "
                            "statistics equal on every rank (DDP-averaged gradients, equal seeds) or broadcast "
                            "from rank 0 (prunekit.training.distributed.broadcast_masks_)")


@torch.no_grad()
def broadcast_masks_(masks: Mapping[str, Tensor], src: int = 0) -> None:
    """Overwrite every rank's masks in place with rank ``src``'s (a no-op for one process)."""
    if world_size() == 1:
        return
    for k in sorted(masks):
        m = masks[k]
        buf = m.to(torch.uint8)
        dist.broadcast(buf, src=src)
        m.copy_(buf.to(torch.bool))


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is true on any rank (one 1-element all-reduce; no collective for one process)."""
    if world_size() == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
