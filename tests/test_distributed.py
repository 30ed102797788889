"""Two gloo processes make the updates one process makes on the same tasks.

The first test drives the library's pieces directly (float64, exact to 1e-12);
the last runs the real command, ``torchrun --nproc_per_node=2 -m metabook
pretrain``, against ``metabook pretrain`` in one process.
"""
from __future__ import annotations

import os
import socket
import subprocess

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from metabook.distributed import (all_reduce_gradients, broadcast_parameters,
                                  distributed_meta_loss, shard)
from metabook.learners import MAML
from metabook.models import ResidualMLP
from metabook.samplers import UniformSampler
from metabook.tasks import EpisodeSource
from metabook.rundir import RunDir
from tests.helpers import BIN, command_env, write_config

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


# --- the real command: torchrun --nproc_per_node=2 -m metabook pretrain --------------------

def _command(*argv: str) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, env=command_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    return result


def test_torchrun_two_processes_equal_one_process(tmp_path):
    # SGD, not Adam: Adam divides every gradient by its running size, so a parameter whose
    # true gradient is exactly zero (the attention's key bias: softmax ignores a shift
    # shared by all keys) takes steps of about outer_lr driven by rounding noise alone, and
    # two runs that sum in another order drift apart there by design. SGD moves it by
    # outer_lr times the noise, so every weight of the two runs must agree tightly.
    config = write_config(tmp_path, meta_batch=4, val_episodes=3, optimizer="sgd", outer_lr=0.1)
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "metabook",
                "pretrain", "--out", str(tmp_path / "two"), "--quiet"]
    first = _command(*torchrun, "--config", str(config))  # steps 1-4, then a resume to 8
    assert first.stdout.count("meta-pretraining finished at step 4") == 1  # process 0 reports
    _command(*torchrun, "--resume", "--steps", "8")
    _command(str(BIN / "metabook"), "pretrain", "--config", str(config), "--steps", "8",
             "--out", str(tmp_path / "one"), "--quiet")

    two, one = (RunDir(tmp_path / run).read_log() for run in ("two", "one"))
    assert [r["step"] for r in two if "loss" in r] == list(range(1, 9))  # one writer, no repeats
    # The logged loss is the mean over the whole meta-batch, as in one process.
    torch.testing.assert_close([r["loss"] for r in two if "loss" in r],
                               [r["loss"] for r in one if "loss" in r], rtol=0, atol=1e-6)
    assert ([(r["step"], r["accuracy"]) for r in two if r.get("event") == "validation"]
            == [(r["step"], r["accuracy"]) for r in one if r.get("event") == "validation"])

    weights = [load_file(tmp_path / run / "checkpoints/step-000008/model.safetensors")
               for run in ("two", "one")]
    start = load_file(tmp_path / "one/checkpoints/step-000002/model.safetensors")
    moved = {n: float((weights[1][n] - start[n]).abs().max()) for n in start}
    assert min(v for n, v in moved.items() if not n.endswith("qkv.bias")) > 1e-4  # it trained
    # Not bitwise: each process sums its own tasks' gradients and the all-reduce adds the
    # two sums, a different order of float32 additions than one process's.
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=1e-6)
