"""The adaptation rule ``θ' = U_φ(θ, S)`` as small functions on parameter dicts.

Parameters travel as plain ``{name: tensor}`` dicts and models are called with
``torch.func.functional_call``, so any ``nn.Module`` (a Hugging Face
transformer included) can be adapted without being rewritten::

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(3, 2)
    >>> loss_fn = make_loss_fn(model, nn.functional.cross_entropy)
    >>> x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    >>> fast = adapt(loss_fn, params_of(model), x, y, steps=2, lr=0.1)
    >>> sorted(fast)
    ['bias', 'weight']

**Memory.** With ``first_order=False`` each inner step keeps its forward and
backward graph alive for the outer backward pass, so memory grows linearly in
the number of steps (about one extra forward-plus-backward worth of activations
per step). ``first_order=True`` drops the second-order terms, frees each
step's graph at once, and costs roughly the memory of plain training.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["Params", "LossFn", "params_of", "make_loss_fn", "sgd_step", "adapt"]

Params = dict[str, Tensor]
LossFn = Callable[[Params, Tensor, Tensor], Tensor]
StepSize = float | Tensor | Mapping[str, Tensor]


def params_of(module: nn.Module) -> Params:
    """The trainable parameters of ``module`` as a name-to-tensor dict (no copy)."""
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def make_loss_fn(model: nn.Module, loss: Callable[[Tensor, Tensor], Tensor]) -> LossFn:
    """``loss_fn(params, x, y) = loss(model(x; params), y)``."""
    def loss_fn(params: Params, x: Tensor, y: Tensor) -> Tensor:
        return loss(functional_call(model, params, (x,)), y)
    return loss_fn


def sgd_step(loss_fn: LossFn, params: Params, x: Tensor, y: Tensor, lr: StepSize,
             first_order: bool = False) -> Params:
    """One gradient step ``θ - α ⊙ ∇L(θ)`` on ``(x, y)``, differentiable in ``θ`` and ``α``.

    ``lr`` is a number, a tensor, or a dict of per-parameter step sizes (Meta-SGD).
    With ``first_order=True`` the gradient is treated as a constant, so the
    result is differentiable but drops the second-order terms. A parameter the
    loss does not use keeps its value (autograd's ``allow_unused``).
    """
    names = [n for n, p in params.items() if p.requires_grad]
    loss = loss_fn(params, x, y)
    grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=not first_order,
                                allow_unused=True)
    new = dict(params)
    for name, g in zip(names, grads):
        if g is not None:
            step = lr[name] if isinstance(lr, Mapping) else lr
            new[name] = params[name] - step * g
    return new


def adapt(loss_fn: LossFn, params: Params, x: Tensor, y: Tensor, steps: int, lr: StepSize,
          first_order: bool = False) -> Params:
    """``steps`` gradient steps from ``params`` on the support set ``(x, y)``."""
    for _ in range(steps):
        params = sgd_step(loss_fn, params, x, y, lr, first_order)
    return params
