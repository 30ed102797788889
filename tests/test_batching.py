"""Batched meta-batches (metabook.batching) give the loop's meta-gradient, checked in float64."""
from __future__ import annotations

import warnings

import pytest
import torch
import transformers
import torch.nn.functional as F
from torch import nn
from packaging.version import Version
from torch.func import functional_call, vmap

from metabook.adaptation import adapt, make_loss_fn, params_of
from metabook.batching import batched_adapt, batched_loss, batched_meta_loss, stack_tasks
from metabook.errors import ConfigError
from metabook.learners import MAML, FirstOrderMAML, MetaSGD, Reptile
from metabook.models import HFEncoder, ResidualMLP, TextClassifier, TextEncoder, tiny_bert
from metabook.tasks import Task

from tests.helpers import (DIM, N_WAY, VOCAB, attention_model, finite_difference_check,
                           text_task)

# transformers 5 builds BERT's attention mask with value-dependent branches that vmap cannot
# follow; 4.x takes the model's own path.
HF5 = Version(transformers.__version__) >= Version("5")


pytestmark = pytest.mark.usefixtures("float64")  # every check here runs in float64


@pytest.fixture
def no_fallback():
    """Turn the batched path's fall-back warning into an error, so a test cannot pass by looping."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


def _feature_task(seed: int, k: int = 2, q: int = 3, dim: int = 5) -> Task:
    g = torch.Generator().manual_seed(seed)
    return Task(torch.randn(N_WAY * k, dim, generator=g), torch.arange(N_WAY).repeat(k),
                torch.randn(N_WAY * q, dim, generator=g), torch.arange(N_WAY).repeat(q))


class _PreparedMaskEncoder(HFEncoder):
    """:class:`HFEncoder` that hands the model a ready 4D additive mask, which Hugging Face
    uses as is; the stock one passes a 2D mask, whose values Hugging Face branches on."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        keep = ids != self.pad_id
        dtype = torch.get_default_dtype()
        bias = torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, torch.finfo(dtype).min)
        hidden = self.model(input_ids=ids, attention_mask=bias[:, None, None, :]).last_hidden_state
        w = keep.unsqueeze(-1).to(hidden.dtype)
        return (hidden * w).sum(1) / w.sum(1).clamp_min(1.0)


def _bert() -> TextClassifier:
    bert = tiny_bert(VOCAB, dim=DIM, layers=1, heads=2, max_len=8)
    encoder = _PreparedMaskEncoder(bert.model, bert.pad_id) if HF5 else bert
    return TextClassifier(encoder, DIM, N_WAY)


def _text_tasks(n: int = 3) -> list[Task]:
    return [text_task(seed=s) for s in range(n)]


def _feature_tasks(n: int = 3) -> list[Task]:
    return [_feature_task(s) for s in range(n)]


def _meta_gradient(learner: nn.Module, tasks: list[Task]) -> tuple[float, list[torch.Tensor]]:
    params = [p for p in learner.parameters() if p.requires_grad]
    loss = learner.meta_batch_loss(tasks)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return float(loss.detach()), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _assert_batched_equals_looped(build_learner, tasks: list[Task]) -> None:
    looped_loss, looped = _meta_gradient(build_learner(batched=False), tasks)
    batched_loss_, batched = _meta_gradient(build_learner(batched=True), tasks)
    assert batched_loss_ == pytest.approx(looped_loss, abs=1e-12)
    assert any(g.abs().max() > 1e-3 for g in looped)  # a meta-gradient worth comparing
    for a, b in zip(batched, looped):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


class _MetaBatch(nn.Module):
    """``meta_loss`` of a whole meta-batch, the interface ``_finite_difference_check`` probes."""

    def __init__(self, learner: nn.Module):
        super().__init__()
        self.learner = learner

    def meta_loss(self, tasks: list[Task]) -> torch.Tensor:
        return self.learner.meta_batch_loss(tasks)


@pytest.mark.parametrize("steps", [1, 3])
def test_batched_maml_meta_gradient_matches_finite_differences(steps, no_fallback):
    learner = MAML(attention_model(), lr=0.5, steps=steps, batched=True)
    finite_difference_check(_MetaBatch(learner), _text_tasks())


def test_batched_metasgd_meta_gradient_matches_finite_differences(no_fallback):
    learner = MetaSGD(attention_model(), lr=0.3, steps=2, batched=True)
    finite_difference_check(_MetaBatch(learner), _text_tasks())


MODELS = {
    "residual-mlp": (lambda: ResidualMLP(5, hidden=16, depth=2, out_dim=N_WAY), _feature_tasks),
    "text-encoder": (lambda: TextClassifier(TextEncoder(VOCAB, dim=DIM, heads=2, layers=2, max_len=8),
                                            DIM, N_WAY), _text_tasks),
    "bert": (_bert, _text_tasks),
}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("learner", ["maml", "metasgd", "first-order", "head-only", "no-steps"])
def test_batched_meta_batch_loss_equals_the_loop(name, learner, no_fallback):
    model = MODELS[name][0]()
    build = {
        "maml": lambda **kw: MAML(model, lr=0.3, steps=3, **kw),
        "metasgd": lambda **kw: MetaSGD(model, lr=0.2, steps=2, granularity="tensor", **kw),
        "first-order": lambda **kw: FirstOrderMAML(model, lr=0.3, steps=2, **kw),
        "head-only": lambda **kw: MAML(model, lr=0.3, steps=2,
                                       adapt_filter=lambda n: n.startswith("head"), **kw),
        "no-steps": lambda **kw: MAML(model, steps=0, **kw),
    }[learner]
    _assert_batched_equals_looped(build, MODELS[name][1]())


def test_batched_adapt_gives_every_task_its_own_adaptation():
    model = ResidualMLP(5, hidden=8, depth=1, out_dim=N_WAY)
    loss_fn = make_loss_fn(model, F.cross_entropy)
    stacked = stack_tasks(_feature_tasks(4))
    fast = batched_adapt(loss_fn, params_of(model), stacked.support_x, stacked.support_y,
                         steps=3, lr=0.4)
    for t in range(4):
        alone = adapt(loss_fn, params_of(model), stacked.support_x[t], stacked.support_y[t],
                      steps=3, lr=0.4)
        for name, value in alone.items():
            torch.testing.assert_close(fast[name][t], value, rtol=0, atol=1e-12)
    assert not torch.allclose(fast["head.weight"][0], fast["head.weight"][1])


def test_tasks_of_different_shapes_are_looped_without_a_warning(no_fallback):
    tasks = [_feature_task(0, k=2), _feature_task(1, k=3)]
    assert stack_tasks(tasks) is None
    model = ResidualMLP(5, hidden=8, depth=1, out_dim=N_WAY)
    loss_fn = make_loss_fn(model, F.cross_entropy)
    assert batched_meta_loss(loss_fn, params_of(model), tasks, steps=2, lr=0.3) is None
    _assert_batched_equals_looped(lambda **kw: MAML(model, lr=0.3, steps=2, **kw), tasks)


@pytest.mark.skipif(not HF5, reason="transformers 4.x's BERT runs under vmap: nothing falls back")
def test_a_model_that_vmap_cannot_run_falls_back_to_the_loop_with_a_warning():
    """Stock Hugging Face encoders branch on the values of their 2D attention mask."""
    model = TextClassifier(tiny_bert(VOCAB, dim=DIM, layers=1, heads=2, max_len=8), DIM, N_WAY)
    with pytest.warns(RuntimeWarning, match="task by task.*data-dependent control flow"):
        _assert_batched_equals_looped(lambda **kw: MAML(model, lr=0.3, steps=1, **kw), _text_tasks())


def test_learners_that_adapt_their_own_way_refuse_batching():
    with pytest.raises(ConfigError, match="Reptile.*batched=False"):
        Reptile(nn.Linear(5, N_WAY), batched=True)


def test_dropout_draws_a_different_mask_for_every_task():
    model = nn.Sequential(nn.Linear(5, 64), nn.Dropout(0.5), nn.Linear(64, N_WAY))
    stacked = stack_tasks([_feature_task(0)] * 4)  # four copies of one task
    params = {n: p.expand(4, *p.shape) for n, p in params_of(model).items()}
    losses = batched_loss(make_loss_fn(model, F.cross_entropy))(params, stacked.support_x,
                                                                 stacked.support_y)
    assert len(set(losses.tolist())) == 4


def _vmap_of_torch_func_grad(model: nn.Module, tasks: list[Task], steps: int, lr: float) -> list:
    """The usual functorch recipe: ``vmap`` over tasks of an inner loop of ``torch.func.grad``."""
    params = dict(model.named_parameters())
    stacked = stack_tasks(tasks)

    def loss(p, x, y):
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    def task_loss(p, sx, sy, qx, qy):
        for _ in range(steps):
            grads = torch.func.grad(loss)(p, sx, sy)
            p = {n: p[n] - lr * grads[n] for n in p}
        return loss(p, qx, qy)

    total = vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(params, *stacked.support, *stacked.query).mean()
    return list(torch.autograd.grad(total, list(params.values())))


@pytest.mark.skipif(not torch.__version__.startswith(("2.13.", "2.14.")),
                    reason="the vmap bug was seen on torch 2.13 and 2.14")
def test_vmap_of_torch_func_grad_is_wrong_before_a_layer_norm_and_batching_is_not():
    """Documents the torch bug that metabook.batching avoids by vmapping the forward pass only."""
    tasks = _feature_tasks()
    with_norm = nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.Linear(8, N_WAY))
    without_norm = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, N_WAY))
    for model, wrong in [(with_norm, True), (without_norm, False)]:
        _, looped = _meta_gradient(MAML(model, lr=0.5, steps=1), tasks)
        _, batched = _meta_gradient(MAML(model, lr=0.5, steps=1, batched=True), tasks)
        functorch = _vmap_of_torch_func_grad(model, tasks, steps=1, lr=0.5)
        worst = max(float((a - b).abs().max()) for a, b in zip(functorch, looped))
        assert (worst > 1e-6) == wrong, f"vmap(torch.func.grad) differs from the loop by {worst:.1e}"
        assert max(float((a - b).abs().max()) for a, b in zip(batched, looped)) < 1e-12
    # the wrong entries are those of the layer before the LayerNorm
    _, looped = _meta_gradient(MAML(with_norm, lr=0.5, steps=1), tasks)
    functorch = _vmap_of_torch_func_grad(with_norm, tasks, steps=1, lr=0.5)
    wrong = [name for (name, _), a, b in zip(with_norm.named_parameters(), functorch, looped)
             if not torch.allclose(a, b, rtol=0, atol=1e-10)]
    assert wrong == ["0.weight", "0.bias"]
