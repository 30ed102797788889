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

**Memory, and chunks.** A second-order meta-gradient needs every inner step's
graph until the backward pass reaches it, so adapting all ``T`` tasks at once holds
``T`` graphs. :func:`batched_meta_loss` therefore works through the meta-batch in
chunks of ``chunk_size`` tasks: it adapts one chunk under ``vmap`` (a chunk of one
task as the loop does, without it), takes that
chunk's meta-gradient at once (``autograd.grad``, which frees the chunk's graph),
adds it to the chunks before, and moves on. The loss it returns carries the summed
gradient, so its ``backward()`` fills ``.grad`` as the unchunked loss would, equal up
to rounding (the order of a sum changes). Peak memory is then one chunk's graph,
not the meta-batch's, and the batched speed is kept within a chunk.
:func:`auto_chunk_size` picks the chunk from the size of the adapted parameters
and the meta-batch (see there); ``chunk_size`` overrides it.

**Randomness.** ``vmap`` runs with ``randomness="different"``: dropout draws
independent masks for every task, as a loop does, but not the same masks.
"""
from __future__ import annotations

import warnings
from typing import Iterable, Iterator, Sequence

import torch
from torch import Tensor
from torch.func import vmap

from metabook.adaptation import LossFn, Params, StepSize, adapt, gradients, update
from metabook.tasks import Task

__all__ = ["stack_tasks", "batched_loss", "batched_adapt", "batched_meta_loss", "mean_by_parts",
           "auto_chunk_size", "CHUNK_BUDGET_MB"]


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


def auto_chunk_size(params: Params, n_tasks: int, steps: int, first_order: bool = False,
                    budget_mb: float | None = None) -> int:
    """How many tasks :func:`batched_meta_loss` adapts at once: the rule behind ``chunk_size=None``.

    A second-order inner step keeps about two parameter-sized tensors per task for
    the backward pass (the adapted parameters and what their gradient's own
    backward needs), so one task's graph holds about ``2 * steps * bytes(params)``
    (``2 * bytes(params)`` first-order); activations are not counted. If the whole
    meta-batch's graphs fit in ``budget_mb`` (default :data:`CHUNK_BUDGET_MB`), it is
    one chunk; otherwise the chunk is as many tasks as fit, and at least one. So
    small models, whose steps are mostly fixed overhead that ``vmap`` shares out,
    adapt the whole meta-batch at once, and larger ones go in small chunks, where
    each extra task in flight costs a graph and batching saves little time.
    ``make bench`` measures the trade-off: on its 217,000-parameter model the rule
    goes task by task, and the speed and memory of every chunk size are in
    ``benchmarks/results/meta_step.json`` (``chunk_trade_off``)::

        >>> import torch
        >>> small = {"w": torch.zeros(33_000)}       # 132 kB: the meta-batch is one chunk
        >>> auto_chunk_size(small, n_tasks=8, steps=3)
        8
        >>> medium = {"w": torch.zeros(217_000)}     # 868 kB: one task's graph is 8.7 MB
        >>> auto_chunk_size(medium, n_tasks=8, steps=5)
        1
        >>> auto_chunk_size(medium, n_tasks=8, steps=5, first_order=True)
        8
    """
    budget = CHUNK_BUDGET_MB if budget_mb is None else budget_mb
    kept_steps = min(steps, 1) if first_order else steps
    per_task = 2 * kept_steps * sum(p.numel() * p.element_size() for p in params.values())
    if per_task == 0:
        return max(1, n_tasks)
    return max(1, min(n_tasks, int(budget * 2**20 // per_task)))


CHUNK_BUDGET_MB = 16.0
"""Memory (MiB) that :func:`auto_chunk_size` lets the graphs of one chunk take."""


class _KnownGradient(torch.autograd.Function):
    """A scalar whose gradient with respect to ``inputs`` was already computed.

    ``backward`` hands each input its stored gradient times the incoming one, so
    ``(w * loss).backward()`` fills ``.grad`` with ``w`` times the stored gradients.
    """

    @staticmethod
    def forward(ctx, value: Tensor, grads: tuple[Tensor | None, ...], *inputs: Tensor) -> Tensor:
        ctx.grads = grads
        return value.detach().clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.grads is None:
            raise RuntimeError("the meta-gradient of this loss was already handed out; "
                               "compute the loss again for another backward()")
        grads, ctx.grads = ctx.grads, None  # let .grad take them over rather than copy them
        if grad_out.device.type == "cpu" and grad_out.numel() == 1 and float(grad_out) == 1.0:
            return (None, None, *grads)
        return (None, None, *(None if g is None else grad_out * g for g in grads))


def _owned(grads: Sequence[Tensor | None]) -> tuple[Tensor | None, ...]:
    """``grads`` with each tensor made safe to add to in place: dense, and sharing no memory."""
    seen: set[int] = set()
    out = []
    for g in grads:
        if g is not None and (not g.is_contiguous() or g.data_ptr() in seen):
            g = g.clone(memory_format=torch.contiguous_format)
        if g is not None:
            seen.add(g.data_ptr())
        out.append(g)
    return tuple(out)


def batched_meta_loss(loss_fn: LossFn, params: Params, tasks: Sequence[Task], steps: int,
                      lr: StepSize, first_order: bool = False, frozen: Params | None = None, *,
                      allow_unused: bool = False, chunk_size: int | None = None,
                      wrt: Sequence[Tensor] | None = None) -> Tensor | None:
    """Mean query loss over ``tasks`` after adapting ``params`` to each support set, in chunks.

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

    **Chunks** (see the module docstring). ``chunk_size`` tasks are adapted at once
    (default :func:`auto_chunk_size`). With fewer than all tasks in a chunk, each
    chunk's meta-gradient with respect to ``wrt`` is taken as soon as the chunk is
    done, and the returned loss's ``backward()`` delivers their sum; ``wrt``
    (default: the tensors in ``params``, ``frozen`` and ``lr`` that require grad)
    must hold every tensor the meta-gradient is wanted for. The result can be
    differentiated once, as a meta-step does. Without grad mode, or when a task's
    tensors require grad (their gradient would have to flow on), the meta-batch
    is one chunk.
    """
    stacked = stack_tasks(tasks)
    if stacked is None:
        return None
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1 (or None to choose it), got {chunk_size}")
    if wrt is None:
        rates = list(lr.values()) if isinstance(lr, dict) else [lr] if isinstance(lr, Tensor) else []
        wrt = [t for t in (*params.values(), *(frozen or {}).values(), *rates) if t.requires_grad]
    n = len(tasks)
    chunk = chunk_size or auto_chunk_size(params, n, steps, first_order)
    columns = (stacked.support_x, stacked.support_y, stacked.query_x, stacked.query_y)
    if chunk >= n or not wrt or not torch.is_grad_enabled() or any(t.requires_grad for t in columns):
        chunk = n
    try:
        if chunk == n:
            return _query_losses(loss_fn, params, stacked, steps, lr, first_order, frozen,
                                 allow_unused).mean()
        parts = (Task(*(t[start:start + chunk] for t in columns)) for start in range(0, n, chunk))
        return mean_by_parts((_query_losses(loss_fn, params, part, steps, lr, first_order, frozen,
                                            allow_unused).sum() for part in parts), n, wrt)
    except RuntimeError as err:
        # Typically vmap refusing Python control flow on a tensor's value (Hugging Face
        # models test their attention mask), or memory running out. The loop either works
        # or raises the model's own error.
        warnings.warn(f"adapting the meta-batch task by task: the batched path failed with "
                      f"{str(err).splitlines()[0]!r}", RuntimeWarning, stacklevel=3)
        return None


def mean_by_parts(losses: Iterable[Tensor], n: int, wrt: Sequence[Tensor]) -> Tensor:
    """``sum(losses) / n``, each part differentiated with respect to ``wrt`` as soon as it exists.

    Taking a part's gradient frees its graph, so memory holds one part's graph at a
    time (a chunk's, or one task's), not all of them until one ``backward()``. The
    result's ``backward()`` then hands ``wrt`` the summed gradients, as the sum's own
    would, equal up to the order of the additions; it can be differentiated once,
    and only with respect to ``wrt``::

        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> mean_by_parts((k * (w ** 2).sum() for k in (1.0, 3.0)), 2, [w]).backward()
        >>> w.grad
        tensor([4., 8.])
    """
    def parts() -> Iterator[tuple[Tensor, tuple[Tensor | None, ...]]]:
        for loss in losses:
            loss = loss / n
            yield loss, torch.autograd.grad(loss, wrt, allow_unused=True)

    return _KnownGradient.apply(*_summed_parts(parts()), *wrt)


def _summed_parts(parts: Iterable[tuple[Tensor, Sequence[Tensor | None]]]
                  ) -> tuple[Tensor, tuple[Tensor | None, ...]]:
    """The sum of the parts' losses (detached) and of their gradients, in the order given.

    Gradients are added in place, as ``backward()`` accumulates into ``.grad``, so no
    third copy is made, and a part's are let go before the next part is computed.
    """
    total, summed = None, None
    for loss, grads in parts:
        if summed is None:
            summed = _owned(grads)
        else:
            summed = tuple(a if b is None else b if a is None else a.add_(b)
                           for a, b in zip(summed, grads))
        total = loss.detach() if total is None else total + loss.detach()
        del grads, loss
    if total is None:
        raise ValueError("a meta-batch needs at least one task")
    return total, summed


def _query_losses(loss_fn: LossFn, params: Params, stacked: Task, steps: int, lr: StepSize,
                  first_order: bool, frozen: Params | None, allow_unused: bool) -> Tensor:
    """Every stacked task's query loss after adapting on its support set (one per task)."""
    if len(stacked.support_x) == 1:
        # vmap over one task only adds its own cost (and, on first use, imports sympy and
        # torch's decompositions, some 35 MB): one task runs as the loop runs it.
        shared = frozen or {}

        def full(p: Params, x: Tensor, y: Tensor) -> Tensor:
            return loss_fn({**shared, **p}, x, y)

        fast = adapt(full, params, stacked.support_x[0], stacked.support_y[0], steps, lr,
                     first_order, allow_unused=allow_unused)
        return full(fast, stacked.query_x[0], stacked.query_y[0]).unsqueeze(0)
    adapted = batched_adapt(loss_fn, params, stacked.support_x, stacked.support_y, steps, lr,
                            first_order, frozen, allow_unused=allow_unused)
    return batched_loss(loss_fn, frozen)(adapted, stacked.query_x, stacked.query_y)
