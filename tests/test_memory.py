"""The saved-tensor probe: exact counts on small graphs, and what it says about the learners."""
from __future__ import annotations

import torch
from torch import nn

from metabook.learners import MAML, FirstOrderMAML
from metabook.memory import saved_tensors
from metabook.tasks import Task


def test_counts_each_saved_storage_once_and_leaves_out_what_is_excluded():
    w = torch.randn(32, 16, requires_grad=True)
    x = torch.randn(8, 32)
    probe = saved_tensors(lambda: (x @ w).tanh().sum(), exclude=[w])
    # x is saved for w's gradient, tanh's output for tanh's; w itself is excluded.
    assert probe.held_bytes == probe.peak_bytes == (8 * 32 + 8 * 16) * 4
    with_w = saved_tensors(lambda: (x @ w).tanh().sum())
    assert with_w.held_bytes == probe.held_bytes  # x @ w saves x only: w gets no extra count
    views = saved_tensors(lambda: (w[:4] * w[4:8]).sum(), exclude=[])
    assert views.held_bytes == 32 * 16 * 4  # two views of one storage: counted once


def test_peak_sees_what_a_backward_inside_has_freed():
    w = torch.randn(64, 64, requires_grad=True)
    x = torch.randn(16, 64)

    def forward_and_backward():
        (x @ w).relu().sum().backward()

    probe = saved_tensors(forward_and_backward, exclude=[w])
    assert probe.held_bytes == 0 and probe.peak_bytes >= 16 * 64 * 4 * 2


def _task(seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    return Task(torch.randn(12, 6, generator=g), torch.arange(3).repeat(4),
                torch.randn(12, 6, generator=g), torch.arange(3).repeat(4))


def test_gradients_are_unchanged_and_second_order_memory_grows_with_the_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3))
    task = _task()
    learner = MAML(model, lr=0.3, steps=2)
    expected = torch.autograd.grad(learner.meta_loss(task), list(learner.parameters()))
    probe = saved_tensors(lambda: learner.meta_loss(task), exclude=learner.parameters())
    got = torch.autograd.grad(probe.result, list(learner.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(expected, got))

    def held(cls, steps):
        learner = cls(model, lr=0.3, steps=steps)
        return saved_tensors(lambda: learner.meta_loss(task), exclude=model.parameters()).held_bytes

    second = [held(MAML, j) for j in (1, 2, 3)]
    first = [held(FirstOrderMAML, j) for j in (1, 2, 3)]
    assert second[2] - second[1] == second[1] - second[0] > 0  # one more step, as much more
    assert first[0] == first[1] == first[2] < second[0]


def test_on_the_meta_device_the_count_is_that_of_real_tensors():
    def count(device):
        w = torch.empty(32, 16, device=device, requires_grad=True)
        x = torch.empty(8, 32, device=device)
        probe = saved_tensors(lambda: (x @ w).tanh().sum() + (x[:4] @ w).sum(), exclude=[w])
        return probe.held_bytes, probe.peak_bytes

    # x (once, though x[:4] is a view of it) and tanh's output; w is excluded
    assert count("meta") == count("cpu") == ((8 * 32 + 8 * 16) * 4,) * 2
