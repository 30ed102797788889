"""Meta-gradients of every learner, checked against finite differences or closed forms (float64)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metabook.adaptation import adapt, make_loss_fn, params_of
from metabook.errors import ConfigError
from metabook.learners import (ANIL, MAML, FirstOrderMAML, MetaSGD, ProtoMAML, ProtoNet, Reptile,
                               _prototypes, accuracy)
from metabook.models import TextClassifier, TextEncoder, tiny_bert, tiny_gpt2, tiny_xlnet
from metabook.tasks import Task
from tests.helpers import (DIM, N_WAY, VOCAB, MetaBatch, attention_model,
                           finite_difference_check, text_task)


pytestmark = pytest.mark.usefixtures("float64")  # every check here runs in float64


@pytest.mark.parametrize("steps", [1, 3])
def test_maml_meta_gradient_matches_finite_differences(steps):
    finite_difference_check(MAML(attention_model(), lr=0.5, steps=steps), text_task())


def test_metasgd_meta_gradient_matches_finite_differences_for_weights_and_step_sizes():
    learner = MetaSGD(attention_model(), lr=0.3, steps=2)
    task = text_task()
    finite_difference_check(learner, task)
    # the step sizes themselves receive a non-zero meta-gradient
    learner.meta_loss(task).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.step_size.values())


def test_anil_meta_gradient_matches_finite_differences():
    model = attention_model()
    finite_difference_check(ANIL(model.encoder, model.head, lr=0.5, steps=3), text_task())


@pytest.mark.parametrize("adapt_encoder", [True, False])
def test_protomaml_meta_gradient_matches_finite_differences(adapt_encoder):
    enc = TextEncoder(VOCAB, dim=DIM, heads=2, layers=1, max_len=8)
    finite_difference_check(ProtoMAML(enc, lr=0.1, steps=2, adapt_encoder=adapt_encoder),
                             text_task())


def test_finite_difference_check_catches_a_wrong_gradient():
    """The checker itself must fail when the gradient is wrong (here: first-order MAML)."""
    with pytest.raises(AssertionError, match="finite difference"):
        finite_difference_check(FirstOrderMAML(attention_model(), lr=0.5, steps=2), text_task())


class _Linear(nn.Module):
    """``x @ θ``: a quadratic loss family with closed-form MAML gradients."""

    def __init__(self, d: int):
        super().__init__()
        self.theta = nn.Parameter(torch.randn(d))

    def forward(self, x):
        return x @ self.theta


def _sq(pred, y):
    return 0.5 * (pred - y).pow(2).sum()


def _quadratic_task(d: int = 4, seed: int = 0) -> tuple[Task, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    P, R = torch.randn(6, d, generator=g), torch.randn(5, d, generator=g)
    p, r = torch.randn(6, generator=g), torch.randn(5, generator=g)
    return Task(P, p, R, r), P, R


def test_first_order_maml_drops_exactly_the_second_order_term():
    task, P, R = _quadratic_task()
    alpha = 0.05
    model = _Linear(4)
    theta = model.theta.detach().clone()
    adapted = theta - alpha * P.T @ (P @ theta - task.support_y)
    outer = R.T @ (R @ adapted - task.query_y)
    maml_closed = (torch.eye(4) - alpha * P.T @ P) @ outer
    fomaml_closed = outer

    for learner, expected in [(MAML(model, lr=alpha, steps=1, loss=_sq), maml_closed),
                              (FirstOrderMAML(model, lr=alpha, steps=1, loss=_sq), fomaml_closed)]:
        model.theta.grad = None
        learner.meta_loss(task).backward()
        torch.testing.assert_close(model.theta.grad, expected, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(maml_closed, fomaml_closed)


def test_reptile_update_equals_its_definition():
    task, P, R = _quadratic_task()
    lr, steps, eps = 0.02, 4, 0.5
    model = _Linear(4)
    theta0 = model.theta.detach().clone()
    x, y = torch.cat([P, R]), torch.cat([task.support_y, task.query_y])
    phi = theta0.clone()
    for _ in range(steps):  # plain SGD on the task's examples, written out
        phi = phi - lr * x.T @ (x @ phi - y)

    learner = Reptile(model, lr=lr, steps=steps, loss=_sq)
    opt = torch.optim.SGD(learner.parameters(), lr=eps)
    learner.meta_loss(task).backward()
    torch.testing.assert_close(model.theta.grad, theta0 - phi)
    opt.step()
    torch.testing.assert_close(model.theta.detach(), theta0 + eps * (phi - theta0))


def test_protonet_logits_equal_the_closed_form():
    enc = nn.Sequential(nn.Linear(5, 7), nn.Tanh())
    x = torch.randn(9, 5)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    xq = torch.randn(4, 5)
    learner = ProtoNet(enc)
    logits = learner.predict(learner.adapt(x, y), xq)
    z, zq = enc(x), enc(xq)
    protos = torch.stack([z[y == k].mean(0) for k in range(3)])
    expected = torch.stack([-((zq - c) ** 2).sum(-1) for c in protos], dim=1)
    torch.testing.assert_close(logits, expected)


def test_first_order_protomaml_holds_the_inner_displacement_constant():
    """First-order ProtoMAML differentiates L(θ₀(θ) + D) with the inner displacement D fixed.

    θ₀(θ) is the encoder plus the prototype head built from it, so the meta-gradient
    still reaches the encoder through the prototypes; finite differences of that
    function, with D computed once at the base point, must agree with backward().
    """
    enc = TextEncoder(VOCAB, dim=DIM, heads=2, layers=1, max_len=8)
    learner = ProtoMAML(enc, lr=0.1, steps=2, first_order=True)
    task = text_task()

    def start() -> dict[str, torch.Tensor]:
        protos = _prototypes(enc(task.support_x), task.support_y, N_WAY)
        return {**params_of(enc), "head.weight": 2 * protos, "head.bias": -protos.pow(2).sum(-1)}

    base = start()
    displacement = {n: (p - base[n]).detach()
                    for n, p in learner.adapt(task.support_x, task.support_y).items()}

    def fixed_displacement_loss() -> torch.Tensor:
        s = start()
        adapted = {n: s[n] + displacement[n] for n in s}
        return F.cross_entropy(learner.predict(adapted, task.query_x), task.query_y)

    class _Fixed(nn.Module):  # meta_loss() of the checker, with D held fixed
        def __init__(self):
            super().__init__()
            self.enc = enc

        def meta_loss(self, _task):
            return fixed_displacement_loss()

    params = list(enc.parameters())
    grads = torch.autograd.grad(learner.meta_loss(task), params)
    expected = torch.autograd.grad(fixed_displacement_loss(), params)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    finite_difference_check(_Fixed(), task)


def test_protomaml_head_starts_as_protonet():
    """With zero inner steps ProtoMAML predicts exactly what ProtoNet does (up to a per-row constant)."""
    enc = nn.Sequential(nn.Linear(5, 7), nn.Tanh())
    x, y, xq = torch.randn(6, 5), torch.tensor([0, 0, 1, 1, 2, 2]), torch.randn(3, 5)
    proto = ProtoNet(enc)
    pm = ProtoMAML(enc, steps=0)
    a = proto.predict(proto.adapt(x, y), xq).log_softmax(-1)
    b = pm.predict(pm.adapt(x, y), xq).log_softmax(-1)
    torch.testing.assert_close(a, b)


def test_clone_adapt_matches_functional_adapt():
    model = attention_model()
    task = text_task()
    maml = MAML(model, lr=0.3, steps=2)
    clone = maml.clone()
    for _ in range(2):
        clone.adapt(F.cross_entropy(clone(task.support_x), task.support_y))
    reference = adapt(make_loss_fn(model, F.cross_entropy), params_of(model), task.support_x,
                      task.support_y, steps=2, lr=0.3)
    for name, value in reference.items():
        torch.testing.assert_close(clone.params[name], value)


def test_adaptation_reduces_support_loss_and_evaluate_reports_accuracy():
    task = text_task(k=3, q=3)
    learner = MAML(attention_model(), lr=0.5, steps=5)
    before = F.cross_entropy(learner(task.support_x), task.support_y)
    after = F.cross_entropy(learner.predict(learner.adapt(*task.support), task.support_x),
                            task.support_y)
    assert after < before
    result = learner.evaluate(task)
    assert set(result) == {"loss", "accuracy"} and 0.0 <= result["accuracy"] <= 1.0
    assert accuracy(torch.eye(3), torch.tensor([0, 1, 2])) == 1.0


@pytest.mark.parametrize("build", [tiny_bert, tiny_gpt2, tiny_xlnet], ids=["bert", "gpt2", "xlnet"])
def test_maml_on_transformers_backbones_matches_finite_differences(build):
    """Hugging Face models are meta-learned unchanged, with exact second-order gradients."""
    enc = build(VOCAB, dim=DIM, layers=1, heads=2, max_len=8).double()  # XLNet makes some weights float32
    learner = MAML(TextClassifier(enc, DIM, N_WAY), lr=0.1, steps=1)
    finite_difference_check(learner, text_task(), directions=2)


def test_evaluate_on_regression_reports_loss_only():
    model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
    x = torch.linspace(-1, 1, 10).unsqueeze(1)
    task = Task(x[:5], x[:5] ** 2, x[5:], x[5:] ** 2)
    result = MAML(model, lr=0.1, steps=2, loss=F.mse_loss).evaluate(task)
    assert set(result) == {"loss"} and result["loss"] > 0


class _WithUnused(nn.Module):
    """A classifier with a parameter the loss never reaches."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, N_WAY)
        self.spare = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("batched", [False, True])
def test_a_parameter_cut_off_from_the_loss_is_an_error_naming_it(batched):
    g = torch.Generator().manual_seed(0)
    tasks = [Task(torch.randn(6, 4, generator=g), torch.arange(N_WAY).repeat(2),
                  torch.randn(6, 4, generator=g), torch.arange(N_WAY).repeat(2))
             for _ in range(2)]
    with pytest.raises(ConfigError, match="does not depend on the parameter 'spare'.*"
                                          "allow_unused=True"):
        MAML(_WithUnused(), steps=2, batched=batched).meta_batch_loss(tasks)
    learner = MAML(_WithUnused(), steps=2, batched=batched, allow_unused=True)
    learner.meta_batch_loss(tasks).backward()
    adapted = learner.adapt(*tasks[0].support)
    assert adapted["spare"] is learner.model.spare  # left at its value, as asked
    assert not torch.equal(adapted["net.weight"], learner.model.net.weight)
    # Left out of adaptation, it is no longer the inner loop's business.
    only_net = MAML(_WithUnused(), steps=2, adapt_filter=lambda n: n.startswith("net"))
    assert only_net.adapt(*tasks[0].support)["spare"] is only_net.model.spare


def test_clone_steps_by_the_same_rule_with_per_parameter_rates():
    torch.manual_seed(0)
    learner = MetaSGD(nn.Linear(4, N_WAY), lr=0.2, steps=1)
    x, y = torch.randn(6, 4), torch.arange(N_WAY).repeat(2)
    clone = learner.clone()
    clone.adapt(F.cross_entropy(clone(x), y))
    reference = learner.adapt(x, y)
    for name, value in reference.items():
        torch.testing.assert_close(clone.params[name], value)


@pytest.mark.parametrize("build", [lambda m: MAML(m, lr=0.5, steps=2),
                                   lambda m: MetaSGD(m, lr=0.3, steps=2)], ids=["maml", "metasgd"])
def test_a_meta_batch_is_differentiated_task_by_task_to_the_same_meta_gradient(build):
    """The default loop frees each task's graph as it goes: one task's memory, the sum's
    gradient."""
    from metabook.memory import saved_tensors

    tasks = [text_task(seed=s) for s in range(4)]
    learner = build(attention_model())
    finite_difference_check(MetaBatch(learner), tasks)
    params = [p for p in learner.parameters() if p.requires_grad]
    by_task = torch.autograd.grad(learner.meta_batch_loss(tasks), params)
    summed = torch.autograd.grad(torch.stack([learner.meta_loss(t) for t in tasks]).mean(), params)
    for a, b in zip(by_task, summed):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    one = saved_tensors(lambda: learner.meta_loss(tasks[0]), exclude=params).peak_mib
    batch = saved_tensors(lambda: learner.meta_batch_loss(tasks), exclude=params).peak_mib
    assert batch < 1.5 * one  # not 4 tasks' graphs at once
