"""One task's meta-gradient as one compiled program: ``torch.compile`` of ``torch.func.grad``.

A second-order meta-step of a small model is tens of thousands of small
operations (the inner steps' forward and backward passes, and the backward
pass through those), each paying the framework's fixed cost of a call. Written
as a pure function, the meta-gradient of one task is ``torch.func.grad`` of the
query loss after the inner steps, themselves taken with ``torch.func.grad``; and
a pure function can be compiled. :func:`torch.compile` traces it once into one
graph, which its default backend (Inductor) fuses into a few loops of generated
code: the same arithmetic, without the calls, and without most intermediate
tensors. The learners use it with ``compiled=True``, e.g. ``MAML(model,
compiled=True)``; :meth:`metabook.learners.GradientLearner.meta_batch_loss` then
takes each task's meta-gradient this way, one task at a time, and ``backward()``
on the loss it returns fills ``.grad`` as the loop does, equal up to rounding
(``tests/test_compiled.py`` checks it against the autograd loop)::

    >>> import torch
    >>> from torch import nn
    >>> from metabook.adaptation import make_loss_fn, params_of
    >>> from metabook.tasks import Task
    >>> model = nn.Linear(3, 2)
    >>> loss_fn = make_loss_fn(model, nn.functional.cross_entropy)
    >>> task = Task(torch.randn(4, 3), torch.tensor([0, 1] * 2), torch.randn(6, 3),
    ...             torch.tensor([0, 1] * 3))
    >>> meta_grad = MetaGradient(loss_fn, steps=2, first_order=False, compile=False)
    >>> loss, grads = meta_grad(params_of(model), {}, 0.5, task)
    >>> sorted(grads)
    ['bias', 'weight']

**The cost.** Compiling takes time once per learner and task shape, and needs a
C++ compiler on CPUs. ``make bench`` measures both sides on its model with five
second-order inner steps: the first step's time (``first_step_s``) and the steps
after it, against the peers (``benchmarks/results/meta_step.json``, shown in
Chapter 7). The compile is paid once per run, the steps every time, so it pays off
for long runs, not for a chapter's few hundred steps. Each new shape of a task's tensors compiles again, so
it suits tasks of fixed shape (feature vectors, or token ids padded to one length)
rather than text tasks trimmed to each batch's longest sentence. If compiling
fails, metabook says so once and takes the meta-gradient without compiling.

Only learners that adapt by the plain rule (:func:`metabook.adaptation.update`
of the gradient, without a proximal term) and predict with the adapted model
can use it, as for ``batched=True``.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from metabook.adaptation import LossFn, Params, StepSize, update
from metabook.tasks import Task

__all__ = ["MetaGradient", "compiled_meta_loss"]


class MetaGradient:
    """``(params, frozen, lr, task) -> (query loss, {name: meta-gradient})`` for one task.

    The gradients are with respect to every tensor in ``params`` and ``frozen``
    and, when ``lr`` is a tensor or a dict of tensors that require grad, the step
    sizes too (under the keys ``"lr"`` or ``"lr." + name``). With ``compile=True``
    the function is compiled on first use (once per shape of the task's tensors);
    when that fails it warns once and runs uncompiled from then on.
    """

    def __init__(self, loss_fn: LossFn, steps: int, first_order: bool, compile: bool = True):
        self.loss_fn, self.steps, self.first_order = loss_fn, steps, first_order
        self.compile = compile
        self._fns: dict[bool, Callable[..., Any]] = {}  # by whether lr is differentiated

    def _function(self, with_lr: bool) -> Callable[..., Any]:
        if with_lr not in self._fns:
            argnums = (0, 1, 2) if with_lr else (0, 1)
            grad = torch.func.grad_and_value(self._task_loss, argnums=argnums)
            self._fns[with_lr] = torch.compile(grad, dynamic=False) if self.compile else grad
        return self._fns[with_lr]

    def _task_loss(self, params: Params, frozen: Params, lr: Any, sx: Tensor, sy: Tensor,
                   qx: Tensor, qy: Tensor) -> Tensor:
        def support_loss(p: Params) -> Tensor:
            return self.loss_fn({**frozen, **p}, sx, sy)

        fast = params
        for _ in range(self.steps):
            grads = torch.func.grad(support_loss)(fast)
            if self.first_order:  # constants to the meta-gradient, as autograd.grad without a graph
                grads = {n: g.detach() for n, g in grads.items()}
            fast = update(fast, grads, lr)
        return self.loss_fn({**frozen, **fast}, qx, qy)

    def __call__(self, params: Params, frozen: Params, lr: StepSize,
                 task: Task) -> tuple[Tensor, dict[str, Tensor]]:
        with_lr = isinstance(lr, (Tensor, dict))
        args = (params, frozen, lr, task.support_x, task.support_y, task.query_x, task.query_y)
        try:
            grads_by_arg, loss = self._function(with_lr)(*args)
        except Exception as err:  # noqa: BLE001 - a compiler can fail in many ways
            if not self.compile:
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            warnings.warn(f"taking the meta-gradient without compiling: torch.compile failed "
                          f"with {type(err).__name__}: {first}", RuntimeWarning, stacklevel=3)
            self.compile, self._fns = False, {}
            grads_by_arg, loss = self._function(with_lr)(*args)
        g_params, g_frozen, g_lr = (*grads_by_arg, None)[:3]
        grads = {**g_params, **g_frozen}
        if isinstance(lr, dict):
            grads.update({f"lr.{n}": g for n, g in g_lr.items()})
        elif isinstance(lr, Tensor):
            grads["lr"] = g_lr
        return loss, grads


def compiled_meta_loss(meta_grad: MetaGradient, params: Params, frozen: Params, lr: StepSize,
                       tasks: Sequence[Task], wrt: Sequence[Tensor]) -> Tensor:
    """Mean query loss over ``tasks``, whose ``backward()`` gives ``wrt`` their meta-gradient.

    Each task's meta-gradient is taken by ``meta_grad`` and added to the others,
    so memory holds one task's computation at a time. ``wrt`` must hold every
    tensor the meta-gradient is wanted for, among ``params``, ``frozen`` and ``lr``.
    """
    from metabook.batching import _KnownGradient, _summed_parts

    by_name = {**params, **frozen}
    if isinstance(lr, dict):
        by_name.update({f"lr.{n}": t for n, t in lr.items()})
    elif isinstance(lr, Tensor):
        by_name["lr"] = lr
    name_of = {id(t): n for n, t in by_name.items()}
    plain = ({n: t.detach() for n, t in params.items()}, {n: t.detach() for n, t in frozen.items()},
             {n: t.detach() for n, t in lr.items()} if isinstance(lr, dict)
             else lr.detach() if isinstance(lr, Tensor) else lr)

    def parts() -> Iterator[tuple[Tensor, tuple[Tensor, ...]]]:
        for task in tasks:
            loss, grads = meta_grad(*plain, task)
            yield loss, tuple(grads[name_of[id(t)]] for t in wrt)

    total, summed = _summed_parts(parts())
    n = len(tasks)
    return _KnownGradient.apply(total / n, tuple(g / n for g in summed), *wrt)
