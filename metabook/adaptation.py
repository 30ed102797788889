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

**One rule.** Every inner step in metabook, of every learner, of the batched path
(:mod:`metabook.batching`) and of implicit MAML, is :func:`update` applied to
:func:`gradients`:

    θ' = θ - α ⊙ (∇L(θ) + λ (θ - θ₀))

where the step size ``α`` is a number, a tensor, or a dict of per-parameter
step sizes (Meta-SGD), and the proximal term ``λ (θ - θ₀)`` (iMAML's pull back
to the meta-parameters ``θ₀``) is there only when a :class:`Proximal` is given.

**A parameter the loss does not use.** Its gradient does not exist, and a step
would silently leave it at its meta-learned value. That is an error naming the
parameter, unless ``allow_unused=True`` says it is meant::

    >>> unused = {"weight": model.weight, "extra": torch.zeros(2, requires_grad=True)}
    >>> sgd_step(loss_fn, unused, x, y, lr=0.1)
    Traceback (most recent call last):
    ...
    metabook.errors.ConfigError: the loss does not depend on the parameter 'extra', so the inner loop cannot adapt it; leave it out of adaptation (adapt_filter), freeze it (requires_grad_(False)), or pass allow_unused=True to keep it at its value
    >>> torch.equal(sgd_step(loss_fn, unused, x, y, lr=0.1, allow_unused=True)["extra"],
    ...             unused["extra"])
    True

**Memory.** With ``first_order=False`` each inner step keeps its forward and
backward graph alive for the outer backward pass, so memory grows linearly in
the number of steps (about one extra forward-plus-backward worth of activations
per step). ``first_order=True`` drops the second-order terms, frees each
step's graph at once, and costs roughly the memory of plain training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metabook.errors import ConfigError

__all__ = ["Params", "LossFn", "StepSize", "Each", "Proximal", "params_of", "make_loss_fn",
           "gradients", "update", "sgd_step", "adapt"]

Params = dict[str, Tensor]
LossFn = Callable[[Params, Tensor, Tensor], Tensor]
StepSize = float | Tensor | Mapping[str, Tensor]
#: ``each(k, params)``: called with the parameters after ``k`` inner steps (see :func:`adapt`).
Each = Callable[[int, Params], None]


@dataclass(frozen=True)
class Proximal:
    """The proximal term of iMAML's inner objective ``L(θ) + (λ/2)‖θ - θ₀‖²``.

    ``anchor`` holds ``θ₀`` for every adapted parameter; ``lam`` is ``λ``.
    """

    anchor: Params
    lam: float


def params_of(module: nn.Module) -> Params:
    """The trainable parameters of ``module`` as a name-to-tensor dict (no copy)."""
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def make_loss_fn(model: nn.Module, loss: Callable[[Tensor, Tensor], Tensor]) -> LossFn:
    """``loss_fn(params, x, y) = loss(model(x; params), y)``."""
    def loss_fn(params: Params, x: Tensor, y: Tensor) -> Tensor:
        return loss(functional_call(model, params, (x,)), y)
    return loss_fn


def gradients(loss: Tensor, params: Params, first_order: bool = False,
              allow_unused: bool = False) -> Params:
    """``∇loss`` for every parameter in ``params`` that requires grad.

    With ``first_order=False`` the gradients keep their graph, so a step built
    from them can be differentiated again (the second-order meta-gradient);
    with ``first_order=True`` they are constants. A parameter the loss does not
    depend on raises :class:`~metabook.errors.ConfigError` naming it, or, with
    ``allow_unused=True``, is left out of the result.
    """
    names = [n for n, p in params.items() if p.requires_grad]
    grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=not first_order,
                                allow_unused=True)
    unused = [n for n, g in zip(names, grads) if g is None]
    if unused and not allow_unused:
        more = f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""
        raise ConfigError(f"the loss does not depend on the parameter {unused[0]!r}{more}, so the "
                          f"inner loop cannot adapt it; leave it out of adaptation (adapt_filter), "
                          f"freeze it (requires_grad_(False)), or pass allow_unused=True to keep "
                          f"it at its value")
    return {n: g for n, g in zip(names, grads) if g is not None}


def update(params: Params, grads: Mapping[str, Tensor], lr: StepSize,
           proximal: Proximal | None = None) -> Params:
    """The step ``θ - α ⊙ (g + λ (θ - θ₀))`` for each parameter in ``grads``; the rest unchanged.

    ``lr`` is a number, a tensor, or a dict of per-parameter step sizes; the
    term ``λ (θ - θ₀)`` is added only with a ``proximal``::

        >>> theta = {"w": torch.tensor([1.0, 2.0])}
        >>> update(theta, {"w": torch.tensor([1.0, 1.0])}, lr=0.5)["w"]
        tensor([0.5000, 1.5000])
        >>> anchor = Proximal({"w": torch.zeros(2)}, lam=1.0)
        >>> update(theta, {"w": torch.zeros(2)}, lr=0.5, proximal=anchor)["w"]
        tensor([0.5000, 1.0000])
    """
    new = dict(params)
    for name, g in grads.items():
        if proximal is not None:
            g = g + proximal.lam * (params[name] - proximal.anchor[name])
        step = lr[name] if isinstance(lr, Mapping) else lr
        new[name] = params[name] - step * g
    return new


def sgd_step(loss_fn: LossFn, params: Params, x: Tensor, y: Tensor, lr: StepSize,
             first_order: bool = False, *, allow_unused: bool = False,
             proximal: Proximal | None = None) -> Params:
    """One gradient step on ``(x, y)``: :func:`update` with the :func:`gradients` of the loss there.

    The result is differentiable in ``params`` and in ``lr``; with
    ``first_order=True`` the gradient is treated as a constant, so the result
    stays differentiable but drops the second-order terms.
    """
    return update(params, gradients(loss_fn(params, x, y), params, first_order, allow_unused),
                  lr, proximal)


def adapt(loss_fn: LossFn, params: Params, x: Tensor, y: Tensor, steps: int, lr: StepSize,
          first_order: bool = False, *, allow_unused: bool = False,
          proximal: Proximal | None = None, each: Each | None = None) -> Params:
    """``steps`` gradient steps (:func:`sgd_step`) from ``params`` on the support set ``(x, y)``.

    ``each(k, params)``, if given, sees the parameters after ``k`` steps, for
    ``k = 0, 1, ..., steps``: one adaptation then measures every shorter one too.

    >>> model = nn.Linear(3, 2)
    >>> loss_fn = make_loss_fn(model, nn.functional.cross_entropy)
    >>> seen = []
    >>> last = adapt(loss_fn, params_of(model), torch.randn(4, 3), torch.tensor([0, 1, 0, 1]),
    ...              steps=2, lr=0.1, each=lambda k, p: seen.append(k))
    >>> seen
    [0, 1, 2]
    """
    if each is not None:
        each(0, params)
    for k in range(1, steps + 1):
        params = sgd_step(loss_fn, params, x, y, lr, first_order, allow_unused=allow_unused,
                          proximal=proximal)
        if each is not None:
            each(k, params)
    return params
