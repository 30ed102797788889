"""learn2learn and higher give metabook's meta-gradients (float64), as Chapter 7 shows on its page.

`make peers` (run by `make test`) installs both into the book's environment. Where
they are missing the tests are skipped with the command that installs them, except
under CI, where a missing peer is a failure.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import warnings

import pytest
import torch
import torch.nn.functional as F

from metabook import MAML, FirstOrderMAML, Task
from metabook.models import ResidualMLP

STEPS, LR, N_WAY = 3, 0.1, 3
TOL = 1e-10  # float64: correct implementations differ by rounding, about 1e-17 here


def peer(module: str):
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")  # gym, which learn2learn imports, warns on import
            return importlib.import_module(module)
    except Exception as err:
        if os.environ.get("CI"):
            pytest.fail(f"{module} must import under CI (`make peers` installs it): {err!r}")
        pytest.skip(f"{module} is not installed here (`make peers` installs it): {err!r}")


def tasks(n: int = 3, seed: int = 0) -> list[Task]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        centres = torch.randn(N_WAY, 8, generator=g, dtype=torch.float64)
        sets = []
        for k in (2, 4):
            y = torch.arange(N_WAY).repeat_interleave(k)
            sets += [centres[y] + 0.5 * torch.randn(len(y), 8, generator=g, dtype=torch.float64), y]
        out.append(Task(*sets))
    return out


def model() -> ResidualMLP:
    torch.manual_seed(0)
    return ResidualMLP(in_dim=8, hidden=16, depth=2, out_dim=N_WAY).double()


def grads(m: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in m.parameters()]


def maxdiff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def metabook_grads(first_order: bool) -> list[torch.Tensor]:
    m = model()
    learner = (FirstOrderMAML if first_order else MAML)(m, lr=LR, steps=STEPS)
    learner.meta_batch_loss(tasks()).backward()
    return grads(m)


def learn2learn_grads(first_order: bool) -> list[torch.Tensor]:
    l2l = peer("learn2learn")
    m = model()
    maml = l2l.algorithms.MAML(m, lr=LR, first_order=first_order)
    batch = tasks()
    for t in batch:
        learner = maml.clone()
        for _ in range(STEPS):
            learner.adapt(F.cross_entropy(learner(t.support_x), t.support_y))
        (F.cross_entropy(learner(t.query_x), t.query_y) / len(batch)).backward()
    return grads(m)


@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
def test_learn2learn_maml_gives_metabooks_meta_gradient(first_order):
    expected = metabook_grads(first_order)
    assert maxdiff(learn2learn_grads(first_order), expected) <= TOL
    assert max(float(g.abs().max()) for g in expected) > 1e-4  # a gradient worth comparing


def test_higher_innerloop_gives_metabooks_meta_gradient():
    higher = peer("higher")
    m = model()
    opt = torch.optim.SGD(m.parameters(), lr=LR)
    batch = tasks()
    for t in batch:
        with higher.innerloop_ctx(m, opt, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(STEPS):
                diffopt.step(F.cross_entropy(fmodel(t.support_x), t.support_y))
            (F.cross_entropy(fmodel(t.query_x), t.query_y) / len(batch)).backward()
    assert maxdiff(grads(m), metabook_grads(first_order=False)) <= TOL


def test_the_comparison_can_fail():
    """A different inner learning rate must show up as a gap far above the tolerance."""
    peer("learn2learn")
    m = model()
    MAML(m, lr=2 * LR, steps=STEPS).meta_batch_loss(tasks()).backward()
    assert maxdiff(grads(m), learn2learn_grads(first_order=False)) > 1e3 * TOL
