"""compiled=True: each task's meta-gradient as one compiled program, equal to the loop's."""
from __future__ import annotations

import warnings

import pytest
import torch

from metabook.errors import ConfigError
from metabook.learners import MAML, FirstOrderMAML, MetaSGD, Reptile
from metabook.models import ResidualMLP
from metabook.tasks import Task
from tests.helpers import (N_WAY, MetaBatch, attention_model, feature_task,
                           finite_difference_check, text_task)

pytestmark = pytest.mark.usefixtures("float64")  # every check here runs in float64


@pytest.fixture
def uncompiled(monkeypatch):
    """The compiled path's functions run as written: its arithmetic, without the compiler's wait."""
    monkeypatch.setattr(torch, "compile", lambda fn, **options: fn)


def _tasks(n: int = 3) -> list[Task]:
    return [feature_task(seed) for seed in range(n)]


def _mlp() -> ResidualMLP:
    torch.manual_seed(0)
    return ResidualMLP(5, hidden=16, depth=2, out_dim=N_WAY)


LEARNERS = {
    "maml": lambda model, **kw: MAML(model, lr=0.3, steps=3, **kw),
    "first-order": lambda model, **kw: FirstOrderMAML(model, lr=0.3, steps=2, **kw),
    "metasgd-head-only": lambda model, **kw: MetaSGD(
        model, lr=0.2, steps=2, granularity="tensor", adapt_filter=lambda n: n.startswith("head"),
        **kw),
    "no-steps": lambda model, **kw: MAML(model, steps=0, **kw),
}


def _grads(learner, tasks) -> tuple[float, list[torch.Tensor]]:
    learner.zero_grad(set_to_none=True)
    loss = learner.meta_batch_loss(tasks)
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in learner.parameters() if p.requires_grad]


def _assert_compiled_equals_looped(name: str, model_fn=_mlp, tasks=None) -> None:
    tasks = tasks or _tasks()
    loss, looped = _grads(LEARNERS[name](model_fn()), tasks)
    compiled_loss, compiled = _grads(LEARNERS[name](model_fn(), compiled=True), tasks)
    assert compiled_loss == pytest.approx(loss, abs=1e-12)
    assert any(g.abs().max() > 1e-3 for g in looped)  # a meta-gradient worth comparing
    for a, b in zip(compiled, looped):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", list(LEARNERS))
def test_the_functional_meta_gradient_equals_the_loop(name, uncompiled):
    _assert_compiled_equals_looped(name)


def test_the_functional_meta_gradient_matches_finite_differences(uncompiled):
    learner = MAML(attention_model(), lr=0.5, steps=2, compiled=True)
    finite_difference_check(MetaBatch(learner), [text_task(seed=s) for s in range(3)])


def test_compiled_by_inductor_equals_the_loop():
    """The real compiler, once: second order, learned step sizes, and parameters left unadapted."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no silent fall-back to the uncompiled path
        _assert_compiled_equals_looped("metasgd-head-only")


def test_a_failing_compiler_warns_once_and_the_step_goes_on(monkeypatch):
    def broken(fn, **options):
        def run(*args, **kwargs):
            raise RuntimeError("no C++ compiler found\nmore details")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    learner = MAML(_mlp(), lr=0.3, steps=2, compiled=True)
    with pytest.warns(RuntimeWarning, match="without compiling: torch.compile failed with "
                                            "RuntimeError: no C.. compiler found$"):
        _, first = _grads(learner, _tasks())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _, second = _grads(learner, _tasks())
    _, looped = _grads(MAML(_mlp(), lr=0.3, steps=2), _tasks())
    for a, b, c in zip(first, second, looped):
        torch.testing.assert_close(a, c, rtol=0, atol=1e-10)
        torch.testing.assert_close(b, c, rtol=0, atol=1e-10)


def test_an_unused_parameter_is_an_error_as_in_the_loop(uncompiled):
    model = _mlp()
    model.register_parameter("extra", torch.nn.Parameter(torch.zeros(2)))
    with pytest.raises(ConfigError, match="does not depend on the parameter 'extra'"):
        MAML(model, compiled=True).meta_batch_loss(_tasks())


def test_compiled_needs_a_plain_learner_and_excludes_batched():
    with pytest.raises(ConfigError, match="compiled=True works for learners that adapt by plain"):
        Reptile(_mlp(), compiled=True)
    with pytest.raises(ConfigError, match="two ways of taking a meta-batch's meta-gradient"):
        MAML(_mlp(), batched=True, compiled=True)
