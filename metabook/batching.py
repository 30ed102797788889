"""Adapt every task of a meta-batch at once: one batched computation instead of a loop.

Tasks whose tensors have equal shapes stack into tensors with a leading task
dimension. Each task gets its own copy of the parameters (a stride-0
``expand``, which costs no memory until the first update), :func:`torch.func.vmap`
runs the model on every task with its own copy, and one ``autograd.grad`` of
the summed support losses gives every task its own gradient, because task
``t``'s loss depends on copy ``t`` alone. A layer then costs a few batched matrix
products per inner step instead of one small product per task::

    >>> import torch
    >>> from torch import nn
    >>> from metabook.adaptation import make_loss_fn, params_of
    >>> model = nn.Linear(3, 2)
    >>> loss_fn = make_loss_fn(model, nn.functional.cross_entropy)
    >>> x, y = torch.randn(4, 6, 3), torch.randint(0, 2, (4, 6))  # 4 tasks of 6 examples
    >>> fast = batched_adapt(loss_fn, params_of(model), x, y, steps=2, lr=0.1)
    >>> fast["weight"].shape
    torch.Size([4, 2, 3])

The steps are :mod:`metabook.adaptation`'s one rule (:func:`~metabook.adaptation.update`
of :func:`~metabook.adaptation.gradients`), applied to every task's copy at once. The
functions here take a loss function and parameters, not a learner: the learners use
them with ``batched=True``, e.g. ``MAML(model, batched=True)``, and
:meth:`metabook.learners.GradientLearner.meta_batch_loss` then equals the loop over
tasks up to rounding.

**Exact second order.** Only the forward pass runs under ``vmap``; ordinary
autograd differentiates the batched operations that ``vmap`` emitted, with the
same backward formulas as any other code. The usual functorch recipe, ``torch.func.grad``
inside ``vmap``, instead runs each backward formula under ``vmap``, and on torch
2.13 that gives a wrong second-order gradient for parameters that feed a LayerNorm.

**Memory.** The graphs of all tasks stay alive until ``backward()``, as they do
for the loop in :meth:`metabook.learners.Learner.meta_batch_loss`, and the
parameter-sized tensors of the backward pass exist for all tasks at once. A loop
that calls ``backward()`` once per task holds one task's graph at a time: on the
problem of ``make bench`` it needs about a quarter of the batched path's memory
and takes 1.2 to 1.6 times as long (2 CPU threads).

**Randomness.** ``vmap`` runs with ``randomness="different"``: dropout draws
independent masks for every task, as a loop does, but not the same masks.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import Tensor
from torch.func import vmap

from metabook.adaptation import LossFn, Params, StepSize, gradients, update
from metabook.tasks import Task

__all__ = ["stack_tasks", "batched_loss", "batched_adapt", "batched_meta_loss"]


def stack_tasks(tasks: Sequence[Task]) -> Task | None:
    """One :class:`Task` whose four tensors carry a leading task dimension.

    Returns ``None`` when the tasks' tensors differ in shape, dtype or device,
    so that the caller can fall back to a loop::

        >>> import torch
        >>> t = Task(torch.zeros(6, 3), torch.zeros(6), torch.zeros(9, 3), torch.zeros(9))
        >>> stack_tasks([t, t]).support_x.shape
        torch.Size([2, 6, 3])
        >>> u = Task(torch.zeros(4, 3), torch.zeros(4), torch.zeros(9, 3), torch.zeros(9))
        >>> stack_tasks([t, u]) is None
        True
    """
    if not tasks:
        return None
    fields = [(t.support_x, t.support_y, t.query_x, t.query_y) for t in tasks]
    for tensors in fields[1:]:
        for a, b in zip(fields[0], tensors):
            if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
                return None
    return Task(*(torch.stack(column) for column in zip(*fields)))


def batched_loss(loss_fn: LossFn, frozen: Params | None = None) -> LossFn:
    """``loss_fn`` for stacked tasks: ``(params, x, y)`` with a leading task dimension to losses.

    ``frozen`` parameters are shared by every task and carry no task dimension.
    The result has one loss per task::

        >>> import torch
        >>> from torch import nn
        >>> from metabook.adaptation import make_loss_fn
        >>> loss_fn = make_loss_fn(nn.Linear(3, 2), nn.functional.mse_loss)
        >>> params = {"weight": torch.zeros(5, 2, 3), "bias": torch.ones(5, 2)}
        >>> batched_loss(loss_fn)(params, torch.randn(5, 4, 3), torch.zeros(5, 4, 2))
        tensor([1., 1., 1., 1., 1.])
    """
    shared = frozen or {}

    def per_task(params: Params, x: Tensor, y: Tensor) -> Tensor:
        return loss_fn({**shared, **params}, x, y)

    return vmap(per_task, randomness="different")


def batched_adapt(loss_fn: LossFn, params: Params, x: Tensor, y: Tensor, steps: int,
                  lr: StepSize, first_order: bool = False, frozen: Params | None = None, *,
                  allow_unused: bool = False) -> Params:
    """:func:`metabook.adaptation.adapt` for stacked tasks, all at once.

    ``x`` and ``y`` carry a leading task dimension of size ``T``; the result
    holds every parameter with that dimension in front (``params[name][t]`` is
    task ``t``'s). ``frozen`` parameters are shared and not adapted. With
    ``steps=0`` the result is ``params`` expanded to ``T`` copies without copying.
    """
    loss = batched_loss(loss_fn, frozen)
    fast = {n: p.expand(x.shape[0], *p.shape) for n, p in params.items()}
    for _ in range(steps):
        # Task t's loss depends on copy t alone, so the gradient of the sum is every
        # task's own gradient, stacked; a per-parameter step size broadcasts over tasks.
        grads = gradients(loss(fast, x, y).sum(), fast, first_order, allow_unused)
        fast = update(fast, grads, lr)
    return fast


def batched_meta_loss(loss_fn: LossFn, params: Params, tasks: Sequence[Task], steps: int,
                      lr: StepSize, first_order: bool = False, frozen: Params | None = None, *,
                      allow_unused: bool = False) -> Tensor | None:
    """Mean query loss over ``tasks`` after adapting ``params`` to each support set, all at once.

    ``loss_fn(params, x, y)`` is both the support loss the steps descend and the
    query loss measured after them (``frozen`` parameters join every call
    unadapted). Equal to adapting task by task, up to rounding. Returns
    ``None``, for the caller to loop, when the tasks do not stack (see
    :func:`stack_tasks`) or the model does not run under ``vmap`` (with a
    ``RuntimeWarning``; stock Hugging Face models branch on the values of their
    attention mask, which ``vmap`` cannot follow)::

        >>> from torch import nn
        >>> from metabook.adaptation import adapt, make_loss_fn, params_of
        >>> model = nn.Linear(3, 2)
        >>> loss_fn = make_loss_fn(model, nn.functional.cross_entropy)
        >>> tasks = [Task(torch.randn(4, 3), torch.tensor([0, 1] * 2),
        ...               torch.randn(6, 3), torch.tensor([0, 1] * 3)) for _ in range(3)]
        >>> looped = torch.stack([loss_fn(adapt(loss_fn, params_of(model), *t.support, 2, 0.5),
        ...                               *t.query) for t in tasks]).mean()
        >>> torch.allclose(batched_meta_loss(loss_fn, params_of(model), tasks, 2, 0.5), looped)
        True
    """
    stacked = stack_tasks(tasks)
    if stacked is None:
        return None
    try:
        adapted = batched_adapt(loss_fn, params, stacked.support_x, stacked.support_y, steps, lr,
                                first_order, frozen, allow_unused=allow_unused)
        return batched_loss(loss_fn, frozen)(adapted, stacked.query_x, stacked.query_y).mean()
    except RuntimeError as err:
        # Typically vmap refusing Python control flow on a tensor's value (Hugging Face
        # models test their attention mask), or memory running out. The loop either works
        # or raises the model's own error.
        warnings.warn(f"adapting the meta-batch task by task: the batched path failed with "
                      f"{str(err).splitlines()[0]!r}", RuntimeWarning, stacklevel=3)
        return None
