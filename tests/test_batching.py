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
from metabook import batching
from metabook.batching import (auto_chunk_size, batched_adapt, batched_loss, batched_meta_loss,
                               stack_tasks)
from metabook.errors import ConfigError
from metabook.learners import MAML, FirstOrderMAML, MetaSGD, Reptile
from metabook.models import HFEncoder, ResidualMLP, TextClassifier, TextEncoder, tiny_bert
from metabook.tasks import Task

from tests.helpers import (DIM, N_WAY, VOCAB, MetaBatch, attention_model, feature_task,
                           finite_difference_check, text_task)

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
    return [feature_task(s) for s in range(n)]


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


@pytest.mark.parametrize("steps", [1, 3])
def test_batched_maml_meta_gradient_matches_finite_differences(steps, no_fallback):
    learner = MAML(attention_model(), lr=0.5, steps=steps, batched=True)
    finite_difference_check(MetaBatch(learner), _text_tasks())


def test_batched_metasgd_meta_gradient_matches_finite_differences(no_fallback):
    learner = MetaSGD(attention_model(), lr=0.3, steps=2, batched=True)
    finite_difference_check(MetaBatch(learner), _text_tasks())


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
    tasks = [feature_task(0, k=2), feature_task(1, k=3)]
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
    stacked = stack_tasks([feature_task(0)] * 4)  # four copies of one task
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


# --- chunks: the meta-gradient taken a chunk of tasks at a time ----------------------------

def _autograd_loop_meta_gradient(model: nn.Module, tasks: list[Task], steps: int, lr: float,
                                 adapted=lambda name: True) -> list[torch.Tensor]:
    """The reference, written out: plain autograd, one task at a time, backward() per task."""
    params = dict(model.named_parameters())
    model.zero_grad(set_to_none=True)
    for t in tasks:
        fast = params
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(model, fast, (t.support_x,)), t.support_y)
            names = [n for n in fast if adapted(n)]
            grads = torch.autograd.grad(loss, [fast[n] for n in names], create_graph=True)
            fast = {**fast, **{n: fast[n] - lr * g for n, g in zip(names, grads)}}
        (F.cross_entropy(functional_call(model, fast, (t.query_x,)), t.query_y) / len(tasks)).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


def _backward_meta_gradient(learner: nn.Module, tasks: list[Task]) -> tuple[float, list[torch.Tensor]]:
    """Loss and ``.grad`` as a meta-trainer gets them: ``meta_batch_loss(tasks).backward()``."""
    learner.zero_grad(set_to_none=True)
    loss = learner.meta_batch_loss(tasks)
    loss.backward()
    grads = [p.grad.clone() for p in learner.parameters()]
    learner.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


@pytest.mark.parametrize("chunk", [1, 2, 4, 5, 9])  # one task; not a divisor of 5; all; more
@pytest.mark.parametrize("adapted", ["all", "head-only"])
def test_chunked_meta_gradient_equals_unchunked_and_the_autograd_loop(chunk, adapted, no_fallback):
    model = ResidualMLP(5, hidden=16, depth=2, out_dim=N_WAY)
    tasks = _feature_tasks(5)
    keep = (lambda n: True) if adapted == "all" else (lambda n: n.startswith("head"))
    reference = _autograd_loop_meta_gradient(model, tasks, steps=3, lr=0.3, adapted=keep)
    whole_loss, whole = _backward_meta_gradient(
        MAML(model, lr=0.3, steps=3, batched=True, chunk_size=len(tasks), adapt_filter=keep), tasks)
    chunked_loss, chunked = _backward_meta_gradient(
        MAML(model, lr=0.3, steps=3, batched=True, chunk_size=chunk, adapt_filter=keep), tasks)
    assert chunked_loss == pytest.approx(whole_loss, abs=1e-12)
    assert any(g.abs().max() > 1e-3 for g in reference)  # a meta-gradient worth comparing
    for a, b, c in zip(chunked, whole, reference):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        torch.testing.assert_close(a, c, rtol=0, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 2])
def test_chunked_metasgd_learns_its_step_sizes_as_the_loop_does(chunk, no_fallback):
    model = ResidualMLP(5, hidden=8, depth=1, out_dim=N_WAY)
    tasks = _feature_tasks(3)
    _, looped = _backward_meta_gradient(MetaSGD(model, lr=0.2, steps=2), tasks)
    _, chunked = _backward_meta_gradient(MetaSGD(model, lr=0.2, steps=2, batched=True,
                                                 chunk_size=chunk), tasks)
    assert len(chunked) > len(list(model.parameters()))  # the step sizes are parameters too
    for a, b in zip(chunked, looped):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_a_chunked_loss_scales_its_gradient_like_any_loss(no_fallback):
    """A distributed trainer multiplies its share by a weight before backward()."""
    model = ResidualMLP(5, hidden=8, depth=1, out_dim=N_WAY)
    learner = MAML(model, lr=0.3, steps=2, batched=True, chunk_size=1)
    tasks = _feature_tasks(3)
    loss = learner.meta_batch_loss(tasks)
    assert type(loss.grad_fn).__name__ == "_KnownGradientBackward"  # the chunked path ran
    (0.25 * loss).backward()
    quarter = [p.grad.clone() for p in model.parameters()]
    _, full = _backward_meta_gradient(learner, tasks)
    for a, b in zip(quarter, full):
        torch.testing.assert_close(a, 0.25 * b, rtol=0, atol=1e-14)


def test_tasks_that_need_their_own_gradient_are_one_chunk(no_fallback):
    """Features computed upstream (an encoder outside the learner) must get their gradient."""
    model = ResidualMLP(5, hidden=8, depth=1, out_dim=N_WAY)
    tasks = _feature_tasks(3)
    x = [t.support_x.clone().requires_grad_() for t in tasks]
    mine = [Task(xi, t.support_y, t.query_x, t.query_y) for xi, t in zip(x, tasks)]
    MAML(model, lr=0.3, steps=2, batched=True, chunk_size=1).meta_batch_loss(mine).backward()
    chunked = [xi.grad.clone() for xi in x]
    for xi in x:
        xi.grad = None
    MAML(model, lr=0.3, steps=2).meta_batch_loss(mine).backward()
    for a, xi in zip(chunked, x):
        torch.testing.assert_close(a, xi.grad, rtol=0, atol=1e-12)


def test_auto_chunk_size_fits_the_graphs_of_a_chunk_in_the_budget():
    params = {"w": torch.zeros(1000, dtype=torch.float64)}  # 8000 bytes: 16000 per inner step
    budget = 3 * 2 * 4 * 8000 / 2**20  # three tasks of 4 second-order steps
    assert auto_chunk_size(params, n_tasks=8, steps=4, budget_mb=budget) == 3
    assert auto_chunk_size(params, n_tasks=8, steps=4, budget_mb=budget * 0.99) == 2
    assert auto_chunk_size(params, n_tasks=2, steps=4, budget_mb=budget) == 2  # at most the tasks
    assert auto_chunk_size(params, n_tasks=8, steps=4, budget_mb=1e-9) == 1    # at least one
    # first order keeps one step's worth per task; no steps keep no graph of the inner loop
    assert auto_chunk_size(params, n_tasks=8, steps=4, first_order=True, budget_mb=budget) == 8
    assert auto_chunk_size(params, n_tasks=8, steps=0, budget_mb=1e-9) == 8
    # make bench's model: one task at a time by default
    bench = params_of(ResidualMLP(64, hidden=256, depth=3, out_dim=5).float())
    assert auto_chunk_size(bench, n_tasks=8, steps=5) == 1


def test_learners_chunk_by_the_rule_unless_told(monkeypatch, no_fallback):
    model = ResidualMLP(5, hidden=8, depth=1, out_dim=N_WAY)
    tasks = _feature_tasks(4)
    chosen = []
    rule = batching.auto_chunk_size
    monkeypatch.setattr(batching, "auto_chunk_size", lambda *a, **k: chosen.append(rule(*a, **k))
                        or chosen[-1])
    whole = MAML(model, lr=0.3, steps=2, batched=True).meta_batch_loss(tasks)
    assert chosen == [4] and type(whole.grad_fn).__name__ != "_KnownGradientBackward"
    monkeypatch.setattr(batching, "CHUNK_BUDGET_MB", 1e-9)
    chunked = MAML(model, lr=0.3, steps=2, batched=True).meta_batch_loss(tasks)
    assert chosen == [4, 1] and type(chunked.grad_fn).__name__ == "_KnownGradientBackward"
    told = MAML(model, lr=0.3, steps=2, batched=True, chunk_size=4).meta_batch_loss(tasks)
    assert chosen == [4, 1] and type(told.grad_fn).__name__ != "_KnownGradientBackward"
    with pytest.raises(ConfigError, match="chunk_size must be at least 1"):
        MAML(model, batched=True, chunk_size=0)


class _SharedScale(nn.Module):
    """A linear layer whose logits are scaled by the sum of a parameter: autograd hands that
    parameter's gradient back as an expanded scalar, which cannot be added to in place."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(5, N_WAY)
        self.scale = nn.Parameter(torch.full((3,), 0.4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.scale.sum()


def test_chunks_add_up_gradients_that_autograd_returns_as_views(no_fallback):
    model = _SharedScale()
    tasks = _feature_tasks(3)
    for steps in (0, 2):  # with no inner step, the query loss is the scale's only use
        _, looped = _backward_meta_gradient(MAML(model, lr=0.3, steps=steps), tasks)
        _, chunked = _backward_meta_gradient(
            MAML(model, lr=0.3, steps=steps, batched=True, chunk_size=1), tasks)
        for a, b in zip(chunked, looped):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_a_chunked_loss_hands_out_its_gradient_once(no_fallback):
    model = ResidualMLP(5, hidden=8, depth=1, out_dim=N_WAY)
    loss = MAML(model, lr=0.3, steps=1, batched=True, chunk_size=1).meta_batch_loss(_feature_tasks(2))
    loss.backward()
    with pytest.raises(RuntimeError, match="already handed out; compute the loss again"):
        loss.backward()
