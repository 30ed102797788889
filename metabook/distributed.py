"""Meta-training across processes with ``torch.distributed``.

Every process draws the same meta-batch (the samplers are seeded), computes
the meta-loss of its own share of the tasks, and the gradients are summed
across processes with an all-reduce. Each share's loss is weighted by its
fraction of the meta-batch, so the summed gradient is the gradient of the mean
over the whole meta-batch: the same update a single process would make.

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

__all__ = ["shard", "is_distributed", "rank", "world_size", "init_from_env",
           "distributed_meta_loss", "all_reduce_gradients", "broadcast_parameters"]

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
    """Join the process group ``torchrun`` describes in the environment; False when not launched so."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return True


def distributed_meta_loss(learner: Learner, tasks: Sequence[Task]) -> Tensor:
    """This process's share of the meta-batch loss, weighted so that shares sum to the mean."""
    mine = shard(tasks, rank(), world_size())
    if not mine:  # more processes than tasks: contribute a zero that still touches every parameter
        return sum(p.sum() * 0.0 for p in learner.parameters())
    return learner.meta_batch_loss(mine) * (len(mine) / len(tasks))


def all_reduce_gradients(module: nn.Module) -> None:
    """Sum every parameter's ``.grad`` across processes (a no-op in a single process)."""
    if not is_distributed():
        return
    for p in module.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def broadcast_parameters(module: nn.Module, src: int = 0) -> None:
    """Copy process ``src``'s parameters and buffers to every process."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src)
