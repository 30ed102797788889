"""Two gloo processes make exactly the updates one process makes on the same tasks."""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from metabook.distributed import (all_reduce_gradients, broadcast_parameters,
                                  distributed_meta_loss, shard)
from metabook.learners import MAML
from metabook.models import ResidualMLP
from metabook.samplers import UniformSampler
from metabook.tasks import EpisodeSource

STEPS, META_BATCH = 3, 5


def _setup():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    y = [i % 8 for i in range(200)]
    sampler = UniformSampler([EpisodeSource(x, y, 3, 2, 3, name="toy")], seed=4)
    learner = MAML(ResidualMLP(6, hidden=16, depth=1, out_dim=3).double(), lr=0.3, steps=2)
    return learner, sampler


def _train(learner, sampler, loss_fn):
    opt = torch.optim.SGD(learner.parameters(), lr=0.1)
    for _ in range(STEPS):
        opt.zero_grad()
        loss_fn(learner, sampler.sample_batch(META_BATCH)).backward()
        all_reduce_gradients(learner)
        opt.step()
    return {k: v.detach().clone() for k, v in learner.state_dict().items()}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    learner, sampler = _setup()
    broadcast_parameters(learner)
    state = _train(learner, sampler, distributed_meta_loss)
    if rank == 0:
        torch.save(state, out)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shard_covers_every_item_once():
    items = list(range(11))
    parts = [shard(items, r, 4) for r in range(4)]
    assert sum(parts, []) == items and max(map(len, parts)) - min(map(len, parts)) <= 1


def test_two_gloo_processes_equal_one_process(tmp_path):
    learner, sampler = _setup()
    single = _train(learner, sampler, lambda l, tasks: l.meta_batch_loss(tasks))
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    multi = torch.load(out, weights_only=True)
    assert single.keys() == multi.keys()
    for name in single:
        torch.testing.assert_close(multi[name], single[name], rtol=0, atol=1e-12)
    assert any(not torch.equal(v, _setup()[0].state_dict()[k]) for k, v in single.items()), \
        "training must have changed the weights for the comparison to mean anything"
