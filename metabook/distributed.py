"""Meta-training across processes with ``torch.distributed``.

Every process draws the same meta-batch (the samplers are seeded), computes
the meta-loss of its own share of the tasks, and the gradients are summed
across processes with an all-reduce. Each share's loss is weighted by its
fraction of the meta-batch, so the summed gradient is the gradient of the mean
over the whole meta-batch: the same update a single process would make, up to
the order in which floating-point sums are taken.

Launch with ``torchrun --nproc_per_node=2 -m metabook pretrain ...`` (one
machine) or add ``--nnodes``/``--rdzv-endpoint`` for several; the gloo backend
works on CPUs, NCCL on GPUs.

    >>> shard(list(range(8)), rank=1, world_size=3)
    [2, 3, 4]
"""
from __future__ import annotations

import os
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from metabook.learners import Learner
from metabook.tasks import Task

__all__ = ["shard", "is_distributed", "rank", "world_size", "init_from_env", "barrier",
           "all_reduce_sum", "max_over_processes", "gather_shards", "distributed_meta_loss",
           "all_reduce_gradients", "broadcast_parameters"]

T = TypeVar("T")


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Contiguous share ``rank`` of ``items`` split into ``world_size`` parts (sizes differ by ≤ 1)."""
    n = len(items)
    start = rank * n // world_size
    return list(items[start: (rank + 1) * n // world_size])


def is_distributed() -> bool:
    """Whether a process group is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group ``torchrun`` describes in the environment; False when not launched so.

    ``backend`` defaults to NCCL when a GPU is present, else gloo. With NCCL
    each process takes the GPU numbered by its ``LOCAL_RANK``.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    return True


def barrier() -> None:
    """Wait until every process gets here (a no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """``tensor`` summed over every process, in place (unchanged in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def _device() -> torch.device:
    """Where a collective's tensors must be: the GPU of this process for NCCL, else the CPU."""
    return (torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl"
            else torch.device("cpu"))


def max_over_processes(value: int) -> int:
    """The largest ``value`` that any process passes (``value`` itself in a single process)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def gather_shards(values: Sequence[float], total: int) -> list[float]:
    """The per-item results of every process's :func:`shard` of ``total`` items, in item order.

    Each process passes the results of its own share. Every process gets the
    same list, equal to what one process computing all items would have, so
    decisions taken from it (the best step, early stopping) agree everywhere.
    """
    if not is_distributed():
        return list(values)
    slots = torch.zeros(total, dtype=torch.float64, device=_device())
    start = rank() * total // world_size()
    slots[start: start + len(values)] = torch.tensor(list(values), dtype=torch.float64)
    # x + 0.0 == x exactly, so the summed slots are each process's values bit for bit.
    return all_reduce_sum(slots).tolist()


def distributed_meta_loss(learner: Learner, tasks: Sequence[Task]) -> Tensor:
    """This process's share of the meta-batch loss, weighted so that shares sum to the mean."""
    mine = shard(tasks, rank(), world_size())
    if not mine:  # more processes than tasks: contribute a zero that still touches every parameter
        return sum(p.sum() * 0.0 for p in learner.parameters())
    return learner.meta_batch_loss(mine) * (len(mine) / len(tasks))


def all_reduce_gradients(module: nn.Module) -> None:
    """Sum every parameter's ``.grad`` across processes (a no-op in a single process).

    A parameter no process has a gradient for keeps ``grad = None``, as it
    would in a single process (Adam skips it; a zero gradient would move it).
    """
    if not is_distributed():
        return
    params = list(module.parameters())
    if not params:
        return
    has = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)
    all_reduce_sum(has)
    used = [p for p, n in zip(params, has.tolist()) if n > 0]
    groups: dict[tuple[torch.dtype, torch.device], list[nn.Parameter]] = {}
    for p in used:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        groups.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    # One collective per dtype over a flat buffer instead of one per tensor: fewer round trips.
    for group in groups.values():
        flat = all_reduce_sum(torch.cat([p.grad.reshape(-1) for p in group]))
        offset = 0
        for p in group:
            p.grad.copy_(flat[offset: offset + p.numel()].view_as(p.grad))
            offset += p.numel()

def broadcast_parameters(module: nn.Module, src: int = 0) -> None:
    """Copy process ``src``'s parameters and buffers to every process."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src)
