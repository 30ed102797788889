"""iMAML's meta-gradient against closed forms on quadratic task families (float64)."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metabook.errors import ConfigError
from metabook.implicit import IMAML, conjugate_gradient
from metabook.memory import saved_tensors
from metabook.tasks import Task

D, N_SUPPORT, N_QUERY, LAM = 5, 20, 15, 1.5


pytestmark = pytest.mark.usefixtures("float64")  # every check here runs in float64


def _regression_task(seed: int = 1, d: int = D) -> Task:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, 1, generator=g)
    xs, xq = torch.randn(N_SUPPORT, d, generator=g), torch.randn(N_QUERY, d, generator=g)
    return Task(xs, xs @ w + 0.1 * torch.randn(N_SUPPORT, 1, generator=g),
                xq, xq @ w + 0.1 * torch.randn(N_QUERY, 1, generator=g))


def _closed_form(theta: torch.Tensor, task: Task, lam: float = LAM):
    """For L(w; D) = mean((Xw - y)²): φ* = (H + λI)⁻¹(b + λθ), meta-gradient λ(H + λI)⁻¹ ∇L_Q(φ*)."""
    x, y = task.support
    h = 2 * x.T @ x / len(x)
    b = 2 * x.T @ y / len(x)
    a = h + lam * torch.eye(len(h))
    phi = torch.linalg.solve(a, b + lam * theta)
    xq, yq = task.query
    g_q = 2 * xq.T @ (xq @ phi - yq) / len(xq)
    return phi, lam * torch.linalg.solve(a, g_q), g_q


def _linear_learner(steps: int = 400, cg_steps: int = D, lam: float = LAM) -> IMAML:
    model = nn.Linear(D, 1, bias=False)
    return IMAML(model, lr=0.2, steps=steps, lam=lam, cg_steps=cg_steps, loss=F.mse_loss)


def test_conjugate_gradient_matches_linalg_solve():
    g = torch.Generator().manual_seed(3)
    m = torch.randn(12, 12, generator=g)
    a = m @ m.T / 12 + 0.5 * torch.eye(12)
    b = torch.randn(12, generator=g)
    x, residual = conjugate_gradient(lambda v: a @ v, b, steps=12, tol=1e-14)
    assert torch.allclose(x, torch.linalg.solve(a, b), rtol=1e-10, atol=1e-12)
    assert residual < 1e-10
    # Too few iterations leave a residual that the function reports honestly.
    _, early = conjugate_gradient(lambda v: a @ v, b, steps=2)
    assert early > 1e-3


def test_conjugate_gradient_zero_right_hand_side_and_bad_steps():
    x, residual = conjugate_gradient(lambda v: 2 * v, torch.zeros(3))
    assert torch.equal(x, torch.zeros(3)) and residual == 0.0
    with pytest.raises(ConfigError):
        conjugate_gradient(lambda v: v, torch.ones(3), steps=0)


def test_inner_loop_converges_to_the_proximal_minimiser():
    task, learner = _regression_task(), _linear_learner()
    theta = learner.model.weight.detach().T.clone()
    phi_star, _, _ = _closed_form(theta, task)
    adapted = learner.adapt(*task.support)["weight"].detach().T
    torch.testing.assert_close(adapted, phi_star, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_meta_gradient_equals_the_closed_form(seed: int):
    task, learner = _regression_task(seed), _linear_learner()
    theta = learner.model.weight.detach().T.clone()
    phi_star, expected, first_order = _closed_form(theta, task)
    loss = learner.meta_loss(task)
    loss.backward()
    got = learner.model.weight.grad.T
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert learner.last_residual < 1e-8
    # The loss value is the query loss at φ*.
    xq, yq = task.query
    torch.testing.assert_close(loss.detach(), F.mse_loss(xq @ phi_star, yq))
    # The first-order gradient ∇L_Q(φ*) is a different vector: a formula that dropped
    # (I + H/λ)⁻¹ would fail the check above.
    gap = (first_order - expected).norm() / expected.norm()
    assert gap > 0.05


def test_too_few_cg_steps_are_visible_in_the_residual_and_the_error():
    task = _regression_task()
    exact = _linear_learner(cg_steps=D)
    rough = _linear_learner(cg_steps=1)
    rough.load_state_dict(exact.state_dict())
    _, g_exact, r_exact = exact.meta_gradient(task)
    _, g_rough, r_rough = rough.meta_gradient(task)
    assert r_rough > 1e3 * max(r_exact, 1e-16)
    assert (g_rough["weight"] - g_exact["weight"]).norm() > 1e-6


def test_frozen_parameters_get_the_implicit_term():
    """Adapt only the head of a two-layer net; the body's gradient includes dφ*/dw.

    For a linear head on features z = body(x) and the squared loss, φ* is a ridge
    solution; differentiating it with autograd gives the exact total gradient.
    """
    torch.manual_seed(5)
    task = _regression_task(seed=4)
    model = nn.Sequential(nn.Linear(D, 4), nn.Tanh(), nn.Linear(4, 1))
    learner = IMAML(model, lr=0.2, steps=600, lam=LAM, cg_steps=10, loss=F.mse_loss,
                    adapt_filter=lambda n: n.startswith("2."))
    learner.meta_loss(task).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}

    def objective(w1, b1, w2, b2):
        def feats(x):
            z = torch.tanh(x @ w1.T + b1)
            return torch.cat([z, torch.ones(len(z), 1)], 1)
        zs, zq = feats(task.support_x), feats(task.query_x)
        theta = torch.cat([w2.reshape(-1), b2]).unsqueeze(1)
        h = 2 * zs.T @ zs / len(zs)
        b = 2 * zs.T @ task.support_y / len(zs)
        phi = torch.linalg.solve(h + LAM * torch.eye(len(h)), b + LAM * theta)
        return F.mse_loss(zq @ phi, task.query_y)

    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    expected = torch.autograd.grad(objective(*params), params)
    for (name, _), e in zip(model.named_parameters(), expected):
        torch.testing.assert_close(got[name], e, rtol=1e-8, atol=1e-10, msg=name)


def _peak_saved_bytes(learner: IMAML, task: Task) -> int:
    """Largest number of bytes autograd holds for backward passes at any moment."""
    return saved_tensors(lambda: learner.meta_loss(task).backward()).peak_bytes


def test_memory_does_not_grow_with_inner_steps():
    task = _regression_task()
    few = _peak_saved_bytes(_linear_learner(steps=2), task)
    many = _peak_saved_bytes(_linear_learner(steps=40), task)
    assert few == many > 0


def test_config_errors():
    with pytest.raises(ConfigError):
        IMAML(nn.Linear(2, 2), lam=0.0)
    with pytest.raises(ConfigError):
        IMAML(nn.Linear(2, 2)).clone()


def test_classification_meta_gradient_matches_finite_differences_of_the_proximal_objective():
    """Cross-entropy (not quadratic): compare with central differences of L_Q(φ*(θ))."""
    torch.manual_seed(2)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(12, 3, generator=g)
    y = torch.tensor([0, 1, 2] * 4)
    task = Task(x[:6], y[:6], x[6:], y[6:])
    learner = IMAML(nn.Linear(3, 3), lr=0.3, steps=800, lam=2.0, cg_steps=12)
    learner.meta_loss(task).backward()
    params = list(learner.model.parameters())
    analytic = torch.cat([p.grad.reshape(-1) for p in params])
    direction = torch.randn(analytic.shape, generator=g)
    eps = 1e-5

    def loss_at(shift: float) -> float:
        with torch.no_grad():
            start = 0
            for p in params:
                p.add_(shift * direction[start:start + p.numel()].view_as(p))
                start += p.numel()
        value = float(learner.meta_gradient(task)[0])
        with torch.no_grad():
            start = 0
            for p in params:
                p.sub_(shift * direction[start:start + p.numel()].view_as(p))
                start += p.numel()
        return value

    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    assert abs(numeric - float(analytic @ direction)) <= 1e-6 * abs(numeric) + 1e-9
