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

The learners use this path with ``batched=True``, e.g. ``MAML(model, batched=True)``;
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
from typing import TYPE_CHECKING, Mapping, Sequence

import torch
from torch import Tensor
from torch.func import vmap

from metabook.adaptation import LossFn, Params, StepSize
from metabook.errors import ConfigError
from metabook.tasks import Task

if TYPE_CHECKING:
    from metabook.learners import GradientLearner

__all__ = ["stack_tasks", "batched_loss", "batched_adapt", "meta_batch_loss"]


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
                  lr: StepSize, first_order: bool = False, frozen: Params | None = None) -> Params:
    """:func:`metabook.adaptation.adapt` for stacked tasks, all at once.

    ``x`` and ``y`` carry a leading task dimension of size ``T``; the result
    holds every parameter with that dimension in front (``params[name][t]`` is
    task ``t``'s). ``frozen`` parameters are shared and not adapted. With
    ``steps=0`` the result is ``params`` expanded to ``T`` copies without copying.
    """
    loss = batched_loss(loss_fn, frozen)
    fast = {n: p.expand(x.shape[0], *p.shape) for n, p in params.items()}
    names = [n for n, p in params.items() if p.requires_grad]
    scalar_lr = isinstance(lr, (int, float))
    for _ in range(steps):
        # Task t's loss depends on copy t alone, so the gradient of the sum is every
        # task's own gradient, stacked.
        total = loss(fast, x, y).sum()
        if scalar_lr:
            total = total * -lr  # the step itself: θ + ∇(-αL) needs no parameter-sized multiply
        grads = torch.autograd.grad(total, [fast[n] for n in names], create_graph=not first_order,
                                    allow_unused=True)
        fast = dict(fast)
        for name, g in zip(names, grads):
            if g is not None:  # a parameter the loss does not use keeps its value
                step = g if scalar_lr else -(lr[name] if isinstance(lr, Mapping) else lr) * g
                fast[name] = fast[name] + step
    return fast


def _adapts_by_the_plain_rule(learner: GradientLearner) -> bool:
    # Imported here: metabook.learners imports this module.
    from metabook.learners import GradientLearner, Learner

    cls = type(learner)
    return (cls.adapt is GradientLearner.adapt and cls.predict is GradientLearner.predict
            and cls.meta_loss is Learner.meta_loss and cls.query_logits is Learner.query_logits)


def meta_batch_loss(learner: GradientLearner, tasks: Sequence[Task]) -> Tensor | None:
    """The learner's mean meta-loss over ``tasks``, every task adapted at once.

    Equal to the loop in :meth:`metabook.learners.Learner.meta_batch_loss` up to
    rounding. Returns ``None``, for the caller to loop, when the tasks do not
    stack (see :func:`stack_tasks`) or the model does not run under ``vmap``
    (with a ``RuntimeWarning``; stock Hugging Face models branch on the values
    of their attention mask, which ``vmap`` cannot follow). Raises
    :class:`~metabook.errors.ConfigError` for a learner that changes how it
    adapts or predicts (ANIL, ProtoMAML, Reptile): it cannot know how to batch those::

        >>> import torch
        >>> from torch import nn
        >>> from metabook.learners import MAML
        >>> maml = MAML(nn.Linear(3, 2), lr=0.5, steps=2)
        >>> tasks = [Task(torch.randn(4, 3), torch.tensor([0, 1] * 2),
        ...               torch.randn(6, 3), torch.tensor([0, 1] * 3)) for _ in range(3)]
        >>> torch.allclose(meta_batch_loss(maml, tasks), maml.meta_batch_loss(tasks))
        True
    """
    if not _adapts_by_the_plain_rule(learner):
        raise ConfigError(f"batched=True works for learners that adapt by plain gradient steps "
                          f"and predict with the adapted model; {type(learner).__name__} changes "
                          f"adapt, predict or meta_loss, so use batched=False")
    stacked = stack_tasks(tasks)
    if stacked is None:
        return None
    fast, frozen = learner._split()

    def query_loss(params: Params, x: Tensor, y: Tensor) -> Tensor:
        return learner.loss(learner.predict(params, x), y)

    try:
        adapted = batched_adapt(learner._loss_fn, fast, stacked.support_x, stacked.support_y,
                                learner.steps, learner.step_sizes(), learner.first_order, frozen)
        return batched_loss(query_loss, frozen)(adapted, stacked.query_x, stacked.query_y).mean()
    except RuntimeError as err:
        # Typically vmap refusing Python control flow on a tensor's value (Hugging Face
        # models test their attention mask), or memory running out. The loop either works
        # or raises the model's own error.
        warnings.warn(f"adapting the meta-batch task by task: the batched path failed with "
                      f"{str(err).splitlines()[0]!r}", RuntimeWarning, stacklevel=3)
        return None
