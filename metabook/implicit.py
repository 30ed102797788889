"""Implicit MAML (iMAML; Rajeswaran et al., 2019): a meta-gradient whose memory does not grow with the inner loop.

The inner loop minimises the support loss plus a proximal term that keeps the
adapted parameters near the meta-parameters,

    φ*(θ) = argmin_φ  L(φ; S) + (λ/2) ‖φ - θ‖²,

by ``steps`` plain gradient steps that keep no graph. At a minimiser the
gradient of that objective is zero, ``∇L(φ*; S) + λ (φ* - θ) = 0``, and the
implicit function theorem gives ``dφ*/dθ = (I + H/λ)⁻¹`` with
``H = ∇²L(φ*; S)``. The meta-gradient is therefore

    ∇_θ L(φ*; Q) = (I + H/λ)⁻¹ ∇L(φ*; Q),

which :class:`IMAML` obtains by conjugate gradient (:func:`conjugate_gradient`)
with Hessian-vector products, never forming ``H``. Only the last point of the
inner loop is needed, so memory is constant in the number of inner steps::

    >>> import torch
    >>> from torch import nn
    >>> from metabook.tasks import Task
    >>> learner = IMAML(nn.Linear(4, 3), lr=0.1, steps=5, lam=2.0, cg_steps=5)
    >>> x, y = torch.randn(6, 4), torch.tensor([0, 1, 2] * 2)
    >>> loss = learner.meta_loss(Task(x, y, x, y))
    >>> loss.backward()
    >>> learner.model.weight.grad.shape
    torch.Size([3, 4])

The result is exact only if the inner loop has reached the minimiser and CG
has converged; :meth:`IMAML.meta_gradient` reports the CG residual so that
this can be checked.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metabook.adaptation import Params, Proximal, sgd_step
from metabook.errors import ConfigError
from metabook.learners import GradientLearner, Loss
from metabook.tasks import Task

__all__ = ["conjugate_gradient", "IMAML"]


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, steps: int = 10,
                       tol: float = 1e-10) -> tuple[Tensor, float]:
    """Solve ``A x = b`` for a symmetric positive-definite ``A`` given only ``x ↦ A x``.

    Runs at most ``steps`` iterations from ``x = 0`` and stops early once the
    residual norm falls below ``tol · ‖b‖``. Returns ``x`` and the relative
    residual ``‖b - A x‖ / ‖b‖``. In exact arithmetic CG solves an
    ``n``-dimensional system in at most ``n`` iterations.

    >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    >>> b = torch.tensor([1.0, 2.0], dtype=torch.float64)
    >>> x, residual = conjugate_gradient(lambda v: A @ v, b, steps=2)
    >>> torch.allclose(x, torch.linalg.solve(A, b)), residual < 1e-12
    (True, True)
    """
    if steps < 1:
        raise ConfigError(f"conjugate gradient needs at least 1 step, got {steps}")
    b_norm = b.norm()
    if b_norm == 0:
        return torch.zeros_like(b), 0.0
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = r @ r
    for _ in range(steps):
        Ap = matvec(p)
        step = rr / (p @ Ap)
        x = x + step * p
        r = r - step * Ap
        rr_new = r @ r
        if rr_new.sqrt() <= tol * b_norm:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, float((b - matvec(x)).norm() / b_norm)


def _flat(tensors: list[Tensor | None], like: list[Tensor]) -> Tensor:
    return torch.cat([(torch.zeros_like(p) if t is None else t).reshape(-1)
                      for t, p in zip(tensors, like)])


def _unflat(vector: Tensor, like: list[Tensor]) -> list[Tensor]:
    out, start = [], 0
    for p in like:
        out.append(vector[start:start + p.numel()].view_as(p))
        start += p.numel()
    return out


class IMAML(GradientLearner):
    """Implicit MAML: proximal inner loop, meta-gradient ``(I + H/λ)⁻¹ ∇L(φ*; Q)`` by CG.

    ``lr`` and ``steps`` are the inner loop's step size and number of steps on
    ``L(φ; S) + (λ/2)‖φ - θ‖²``; ``lam`` is λ; ``cg_steps`` bounds the
    conjugate-gradient iterations. ``adapt_filter`` works as in
    :class:`~metabook.learners.GradientLearner`: parameters it leaves out are not
    adapted, and their meta-gradient includes the implicit term through the
    adapted ones, ``-∂/∂w ⟨∇_φ L(φ*, w; S), (H + λI)⁻¹ ∇_φ L(φ*; Q)⟩``.

    :meth:`meta_loss` returns the query loss at ``φ*``; calling ``backward()``
    on it puts the implicit meta-gradient into the parameters' ``.grad``.
    """

    def __init__(self, model: nn.Module, lr: float = 0.1, steps: int = 10, lam: float = 1.0,
                 cg_steps: int = 5, cg_tol: float = 1e-10, loss: Loss = F.cross_entropy,
                 adapt_filter: Callable[[str], bool] | None = None, allow_unused: bool = False):
        super().__init__(model, lr, steps, first_order=True, loss=loss, adapt_filter=adapt_filter,
                         allow_unused=allow_unused)
        if lam <= 0:
            raise ConfigError(f"iMAML's regularisation λ must be positive, got {lam}")
        self.lam, self.cg_steps, self.cg_tol = float(lam), cg_steps, cg_tol
        self.last_residual = float("nan")

    def adapt(self, x: Tensor, y: Tensor, first_order: bool | None = None) -> Params:
        """``steps`` gradient steps on ``L(φ; S) + (λ/2)‖φ - θ‖²`` from ``φ = θ``, without a graph.

        Each step is :mod:`metabook.adaptation`'s rule with the proximal term;
        the adapted parameters are detached leaves that require grad, and the
        parameters ``adapt_filter`` leaves out are returned as they are.
        """
        fast, frozen = self.split_params()
        pull = Proximal({n: p.detach() for n, p in fast.items()}, self.lam)
        phi = {n: p.clone().requires_grad_() for n, p in pull.anchor.items()}
        frozen_const = {n: p.detach() for n, p in frozen.items()}

        def loss_fn(p: Params, xb: Tensor, yb: Tensor) -> Tensor:
            return self.inner_loss({**frozen_const, **p}, xb, yb)

        with torch.enable_grad():
            for _ in range(self.steps):
                # Every step starts from fresh leaves: no graph links the steps.
                phi = {n: p.detach().requires_grad_() for n, p in
                       sgd_step(loss_fn, phi, x, y, self.lr, first_order=True,
                                allow_unused=self.allow_unused, proximal=pull).items()}
        return {**frozen, **phi}

    def meta_gradient(self, task: Task) -> tuple[Tensor, dict[str, Tensor], float]:
        """The query loss at ``φ*``, the implicit meta-gradient per parameter, and the CG residual.

        Memory: one support forward/backward graph at ``φ*`` (kept for the
        Hessian-vector products), independent of ``steps``.
        """
        fast, frozen = self.split_params()
        adapted = self.adapt(task.support_x, task.support_y)
        phi = {n: adapted[n] for n in fast}
        names, leaves = list(phi), list(phi.values())
        frozen_live = {n: p for n, p in frozen.items() if p.requires_grad}
        with torch.enable_grad():
            query_loss = self.loss(self.predict({**frozen, **phi}, task.query_x), task.query_y)
            q_grads = torch.autograd.grad(query_loss, leaves + list(frozen_live.values()),
                                          allow_unused=True)
            g_q = _flat(list(q_grads[:len(leaves)]), leaves)
            support_loss = self.inner_loss({**frozen, **phi}, task.support_x, task.support_y)
            s_grads = torch.autograd.grad(support_loss, leaves, create_graph=True,
                                          allow_unused=True)
            s_used = [(g, i) for i, g in enumerate(s_grads) if g is not None and g.requires_grad]

            def hvp(v: Tensor) -> Tensor:
                if not s_used:
                    return torch.zeros_like(v)
                vs = _unflat(v, leaves)
                dot = sum((g * vs[i]).sum() for g, i in s_used)
                hv = torch.autograd.grad(dot, leaves, retain_graph=True, allow_unused=True)
                return _flat(list(hv), leaves)

            v, residual = conjugate_gradient(lambda u: u + hvp(u) / self.lam, g_q.detach(),
                                             self.cg_steps, self.cg_tol)
            grads = dict(zip(names, _unflat(v, leaves)))
            if frozen_live:
                # d/dw of L(φ*(w), w; Q) = ∂_w L_Q - ∂_w <∇_φ L_S(φ*, w), (H + λI)⁻¹ g_Q>.
                w_direct = dict(zip(frozen_live, q_grads[len(leaves):]))
                if s_used:
                    vs = _unflat(v / self.lam, leaves)
                    dot = sum((g * vs[i]).sum() for g, i in s_used)
                    w_mixed = torch.autograd.grad(dot, list(frozen_live.values()),
                                                  allow_unused=True)
                else:
                    w_mixed = [None] * len(frozen_live)
                for (n, p), d, m in zip(frozen_live.items(), w_direct.values(), w_mixed):
                    total = torch.zeros_like(p) if d is None else d.detach()
                    grads[n] = total if m is None else total - m.detach()
        self.last_residual = residual
        return query_loss.detach(), {n: g.detach() for n, g in grads.items()}, residual

    def meta_loss(self, task: Task) -> Tensor:
        """The query loss at ``φ*``, as a surrogate whose gradient is the implicit meta-gradient.

        Its value is the query loss; its gradient with respect to every
        parameter ``p`` is ``meta_gradient(task)[1][p]``, delivered by the term
        ``⟨p, g⟩ - ⟨p, g⟩.detach()``, which is zero in value.
        """
        value, grads, _ = self.meta_gradient(task)
        params = dict(self.model.named_parameters())
        surrogate = sum(((params[n] * g).sum() - (params[n] * g).sum().detach())
                        for n, g in grads.items())
        return value + surrogate

    def extra_repr(self) -> str:
        return f"lr={self.lr}, steps={self.steps}, lam={self.lam}, cg_steps={self.cg_steps}"

    def clone(self, first_order: bool | None = None) -> Any:
        raise ConfigError("IMAML adapts with a proximal term and no graph; call adapt(x, y) "
                          "and meta_loss(task) instead of clone()")
