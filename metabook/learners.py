"""Learners: adaptive mappings from a task's support set to a predictor.

Every learner implements one protocol:

- ``adapt(x, y)`` returns the task-specific state ``θ' = U_φ(θ, S)`` (adapted
  parameters, or prototypes);
- ``predict(state, x)`` returns logits for ``x`` under that state;
- ``meta_loss(task)`` is a scalar whose gradient with respect to the learner's
  parameters is the learner's meta-gradient for ``task``; a meta-trainer
  averages it over a meta-batch, calls ``backward()`` and steps an optimizer;
- ``evaluate(task)`` adapts and measures loss and accuracy on the query set.

The gradient-based learners (:class:`MAML`, :class:`FirstOrderMAML`,
:class:`MetaSGD`, :class:`Reptile`, :class:`ANIL`, :class:`ProtoMAML`) all step by
:mod:`metabook.adaptation`'s one rule; :class:`ProtoNet` adapts in closed form.
A learner is an ``nn.Module``: its ``parameters()`` are the meta-parameters
(Meta-SGD's step sizes included) and its ``state_dict()`` is what to save.

For code written against learn2learn, :meth:`GradientLearner.clone` returns a
handle with ``adapt(loss)`` and ``__call__``::

    >>> import torch
    >>> from torch import nn
    >>> maml = MAML(nn.Linear(4, 3), lr=0.1)
    >>> x, y = torch.randn(6, 4), torch.tensor([0, 1, 2] * 2)
    >>> clone = maml.clone()
    >>> clone.adapt(nn.functional.cross_entropy(clone(x), y))
    >>> clone(x).shape
    torch.Size([6, 3])
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metabook import batching
from metabook.adaptation import Each, Params, adapt, gradients, params_of, update
from metabook.compiled import MetaGradient, compiled_meta_loss
from metabook.errors import ConfigError
from metabook.tasks import Task

__all__ = ["Learner", "GradientLearner", "MAML", "FirstOrderMAML", "MetaSGD", "Reptile", "ANIL",
           "ProtoNet", "ProtoMAML", "Clone", "accuracy"]

Loss = Callable[[Tensor, Tensor], Tensor]


def accuracy(logits: Tensor, y: Tensor) -> float:
    """Share of rows of ``logits`` whose arg-max is ``y``."""
    return float((logits.argmax(-1) == y).float().mean())


class Learner(nn.Module):
    """The protocol every learner follows (see the module docstring)."""

    def __init__(self, loss: Loss = F.cross_entropy):
        super().__init__()
        self.loss = loss

    def adapt(self, x: Tensor, y: Tensor) -> Any:
        raise NotImplementedError

    def predict(self, state: Any, x: Tensor) -> Tensor:
        raise NotImplementedError

    def query_logits(self, task: Task) -> Tensor:
        """Logits on the query set after adapting on the support set (differentiable)."""
        return self.predict(self.adapt(task.support_x, task.support_y), task.query_x)

    def meta_loss(self, task: Task) -> Tensor:
        """Query loss after adaptation: its gradient is the meta-gradient."""
        return self.loss(self.query_logits(task), task.query_y)

    def meta_batch_loss(self, tasks: Sequence[Task]) -> Tensor:
        """Mean :meth:`meta_loss` over a meta-batch; ``backward()`` gives the meta-gradient."""
        return torch.stack([self.meta_loss(t) for t in tasks]).mean()

    def evaluate(self, task: Task) -> dict[str, float]:
        """Adapt on the support set, then report query loss (and accuracy, for class labels).

        No meta-graph is kept, so this is cheap enough for many episodes.
        """
        logits = self._eval_logits(task).detach()
        result = {"loss": float(self.loss(logits, task.query_y))}
        if not task.query_y.is_floating_point():  # accuracy means nothing for regression
            result["accuracy"] = accuracy(logits, task.query_y)
        return result

    def _eval_logits(self, task: Task) -> Tensor:
        with torch.enable_grad():
            return self.query_logits(task)


class GradientLearner(Learner):
    """Adapts all (or some) parameters of ``model`` by ``steps`` of gradient descent.

    ``adapt_filter(name)`` selects the parameters the inner loop updates (all
    by default); the others stay at their meta-learned values. A parameter the
    loss does not use is an error unless ``allow_unused=True`` (see
    :mod:`metabook.adaptation`). With ``batched=True``, :meth:`meta_batch_loss`
    adapts all tasks of a meta-batch at once (:mod:`metabook.batching`) when their
    shapes agree, and loops otherwise; only learners that adapt by the plain
    rule and predict with the adapted model can batch. It then takes the
    meta-gradient ``chunk_size`` tasks at a time, so that memory holds one chunk's
    graph (default: :func:`metabook.batching.auto_chunk_size`'s rule). With
    ``compiled=True`` it takes each task's meta-gradient as one compiled program
    instead (:mod:`metabook.compiled`: a compile on the first step, then lighter steps).
    """

    def __init__(self, model: nn.Module, lr: float = 0.1, steps: int = 1,
                 first_order: bool = False, loss: Loss = F.cross_entropy,
                 adapt_filter: Callable[[str], bool] | None = None, batched: bool = False,
                 allow_unused: bool = False, chunk_size: int | None = None,
                 compiled: bool = False):
        super().__init__(loss)
        if steps < 0:
            raise ConfigError(f"inner steps must be >= 0, got {steps}")
        for option, on in (("batched", batched), ("compiled", compiled)):
            if on and not _adapts_by_the_plain_rule(type(self)):
                raise ConfigError(f"{option}=True works for learners that adapt by plain "
                                  f"gradient steps and predict with the adapted model; "
                                  f"{type(self).__name__} changes adapt, predict or meta_loss, "
                                  f"so use {option}=False")
        if batched and compiled:
            raise ConfigError("batched=True and compiled=True are two ways of taking a "
                              "meta-batch's meta-gradient; choose one")
        self.model, self.lr, self.steps, self.first_order = model, lr, steps, first_order
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError(f"chunk_size must be at least 1 task (or None to choose it), "
                              f"got {chunk_size}")
        self.adapt_filter, self.batched, self.allow_unused = adapt_filter, batched, allow_unused
        self.chunk_size, self.compiled = chunk_size, compiled
        self._meta_gradients: dict[tuple[int, bool], MetaGradient] = {}

    def meta_batch_loss(self, tasks: Sequence[Task]) -> Tensor:
        """Mean :meth:`meta_loss` over a meta-batch, whose ``backward()`` gives the meta-gradient.

        A learner that adapts by the plain rule takes each task's meta-gradient as
        soon as the task's loss exists (:func:`metabook.batching.mean_by_parts`), so
        memory holds one task's graph, not the meta-batch's (``batched=True``: one
        chunk's; ``compiled=True``: see :mod:`metabook.compiled`). The result can then
        be differentiated once, with respect to the learner's parameters.
        """
        wrt = [p for p in self.parameters() if p.requires_grad]
        separable = bool(tasks) and bool(wrt) and torch.is_grad_enabled() and not any(
            t.requires_grad for task in tasks
            for t in (task.support_x, task.support_y, task.query_x, task.query_y))
        if self.compiled and separable:
            fast, frozen = self.split_params()
            key = (self.steps, self.first_order)
            if key not in self._meta_gradients:
                # The compiled function returns zeros for a parameter the loss does not use;
                # the eager rule's check says so first, as the other paths do.
                gradients(self.inner_loss({**frozen, **fast}, *tasks[0].support), fast, True,
                          self.allow_unused)
                self._meta_gradients[key] = MetaGradient(self.inner_loss, *key)
            return compiled_meta_loss(self._meta_gradients[key], fast, frozen, self.step_sizes(),
                                      tasks, wrt)
        if self.batched:
            fast, frozen = self.split_params()
            loss = batching.batched_meta_loss(self.inner_loss, fast, tasks, self.steps,
                                              self.step_sizes(), self.first_order, frozen,
                                              allow_unused=self.allow_unused,
                                              chunk_size=self.chunk_size, wrt=wrt)
            if loss is not None:
                return loss
        if separable and len(tasks) > 1 and _adapts_by_the_plain_rule(type(self)):
            return batching.mean_by_parts((self.meta_loss(t) for t in tasks), len(tasks), wrt)
        return super().meta_batch_loss(tasks)

    def step_sizes(self) -> float | dict[str, Tensor]:
        """The inner learning rate(s) α (a dict of tensors for Meta-SGD)."""
        return self.lr

    def inner_loss(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        """The loss the inner loop descends: ``loss(model(x; params), y)``."""
        return self.loss(functional_call(self.model, params, (x,)), y)

    def split_params(self) -> tuple[Params, Params]:
        """The model's parameters the inner loop adapts, and those it leaves alone."""
        params = params_of(self.model)
        keep = self.adapt_filter or (lambda name: True)
        fast = {n: p for n, p in params.items() if keep(n)}
        return fast, {n: p for n, p in params.items() if n not in fast}

    def adapt(self, x: Tensor, y: Tensor, first_order: bool | None = None,
              each: Each | None = None) -> Params:
        """The adapted parameters; ``each(k, state)`` sees the state after each step ``k``."""
        fast, frozen = self.split_params()
        first_order = self.first_order if first_order is None else first_order

        def loss_fn(p: Params, xb: Tensor, yb: Tensor) -> Tensor:
            return self.inner_loss({**frozen, **p}, xb, yb)

        seen = None if each is None else (lambda k, p: each(k, {**frozen, **p}))
        return {**frozen, **adapt(loss_fn, fast, x, y, self.steps, self.step_sizes(), first_order,
                                  allow_unused=self.allow_unused, each=seen)}

    def predict(self, state: Params, x: Tensor) -> Tensor:
        return functional_call(self.model, state, (x,))

    def forward(self, x: Tensor) -> Tensor:
        """The meta-learned model itself, before any adaptation."""
        return self.model(x)

    def _eval_logits(self, task: Task) -> Tensor:
        with torch.enable_grad():
            state = self.adapt(task.support_x, task.support_y, first_order=True)
        with torch.no_grad():
            return self.predict(state, task.query_x)

    def clone(self, first_order: bool | None = None) -> "Clone":
        """A learn2learn-style handle: ``clone.adapt(loss)`` takes one inner step."""
        return Clone(self, params_of(self.model),
                     self.first_order if first_order is None else first_order)


def _adapts_by_the_plain_rule(cls: type) -> bool:
    """Whether ``cls`` adapts and predicts as :class:`GradientLearner` does (so it can batch)."""
    return (cls.adapt is GradientLearner.adapt and cls.predict is GradientLearner.predict
            and cls.inner_loss is GradientLearner.inner_loss
            and cls.meta_loss is Learner.meta_loss and cls.query_logits is Learner.query_logits)


class Clone:
    """Adapted parameters plus the model that reads them (see :meth:`GradientLearner.clone`)."""

    def __init__(self, learner: GradientLearner, params: Params, first_order: bool):
        self.learner, self.params, self.first_order = learner, params, first_order

    def __call__(self, x: Tensor) -> Tensor:
        return self.learner.predict(self.params, x)

    def adapt(self, loss: Tensor) -> None:
        """One gradient step on ``loss``, which must have been computed with this clone."""
        fast = self.learner.split_params()[0]
        grads = gradients(loss, {n: self.params[n] for n in fast}, self.first_order,
                          self.learner.allow_unused)
        self.params = update(self.params, grads, self.learner.step_sizes())


class MAML(GradientLearner):
    """Model-Agnostic Meta-Learning (Finn et al., 2017), exact second-order meta-gradient."""


class FirstOrderMAML(GradientLearner):
    """MAML without second-order terms: the meta-gradient is ``∇L_Q`` at the adapted parameters."""

    def __init__(self, model: nn.Module, lr: float = 0.1, steps: int = 1, **kwargs: Any):
        super().__init__(model, lr, steps, first_order=True, **kwargs)


def _key(name: str) -> str:
    return name.replace(".", "__")


class MetaSGD(GradientLearner):
    """Meta-SGD (Li et al., 2017): a learned step size for every parameter entry.

    ``granularity="tensor"`` learns one step size per parameter tensor instead
    (the per-layer rates SMLMT used). The step sizes are meta-parameters:
    they appear in ``parameters()`` and receive the meta-gradient.
    """

    def __init__(self, model: nn.Module, lr: float = 0.1, steps: int = 1,
                 granularity: str = "entry", **kwargs: Any):
        super().__init__(model, lr, steps, **kwargs)
        if granularity not in ("entry", "tensor"):
            raise ConfigError(f"granularity must be 'entry' or 'tensor', got {granularity!r}")
        fast, _ = self.split_params()
        self.step_size = nn.ParameterDict({
            _key(n): nn.Parameter(torch.full(p.shape if granularity == "entry" else (),
                                             float(lr), dtype=p.dtype, device=p.device))
            for n, p in fast.items()})

    def step_sizes(self) -> dict[str, Tensor]:
        fast, _ = self.split_params()
        return {n: self.step_size[_key(n)] for n in fast}


class Reptile(GradientLearner):
    """Reptile (Nichol et al., 2018): move θ towards the task-adapted parameters.

    Its meta-gradient for a task is ``θ - θ'``, where ``θ'`` is ``steps`` SGD
    steps on the task's support and query examples together; with an outer SGD
    step size ``ε`` this is Reptile's update ``θ ← θ + ε (θ' - θ)``.
    """

    def __init__(self, model: nn.Module, lr: float = 0.1, steps: int = 5, **kwargs: Any):
        super().__init__(model, lr, steps, first_order=True, **kwargs)

    def meta_loss(self, task: Task) -> Tensor:
        x = torch.cat([task.support_x, task.query_x])
        y = torch.cat([task.support_y, task.query_y])
        theta = params_of(self.model)
        target = {n: p.detach() for n, p in self.adapt(x, y).items()}
        # 0.5 ||θ - θ'||² has gradient θ - θ' with θ' held constant.
        return sum(0.5 * (theta[n] - target[n]).pow(2).sum() for n in theta)


class ANIL(GradientLearner):
    """Almost No Inner Loop (Raghu et al., 2020): adapt only the head.

    ``body`` maps inputs to features and is computed once per task; ``head``
    maps features to logits and is the only part the inner loop changes. The
    meta-gradient reaches the body through the features.
    """

    def __init__(self, body: nn.Module, head: nn.Module, lr: float = 0.1, steps: int = 5,
                 first_order: bool = False, loss: Loss = F.cross_entropy,
                 allow_unused: bool = False):
        super().__init__(head, lr, steps, first_order, loss, allow_unused=allow_unused)
        self.body = body

    def adapt(self, x: Tensor, y: Tensor, first_order: bool | None = None,
              each: Each | None = None) -> Params:
        return super().adapt(self.body(x), y, first_order, each)

    def predict(self, state: Params, x: Tensor) -> Tensor:
        return functional_call(self.model, state, (self.body(x),))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.body(x))


def _linear(z: Tensor, params: Params) -> Tensor:
    """The head's logits ``z Wᵀ + b`` from ``params["head.weight"]`` and ``["head.bias"]``."""
    return z @ params["head.weight"].T + params["head.bias"]


def _prototypes(z: Tensor, y: Tensor, n_way: int) -> Tensor:
    onehot = F.one_hot(y, n_way).to(z.dtype)
    return (onehot.T @ z) / onehot.sum(0, keepdim=True).T


class ProtoNet(Learner):
    """Prototypical networks (Snell et al., 2017).

    Adaptation is closed-form: each class's prototype ``c_k`` is the mean
    embedding of its support examples, and the logit of class ``k`` is
    ``-‖f(x) - c_k‖²``.
    """

    def __init__(self, encoder: nn.Module, loss: Loss = F.cross_entropy):
        super().__init__(loss)
        self.encoder = encoder

    def adapt(self, x: Tensor, y: Tensor) -> Tensor:
        return _prototypes(self.encoder(x), y, int(y.max()) + 1)

    def predict(self, state: Tensor, x: Tensor) -> Tensor:
        return -torch.cdist(self.encoder(x), state).pow(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


class ProtoMAML(GradientLearner):
    """ProtoMAML (Triantafillou et al., 2020): MAML with a head initialised from prototypes.

    The linear head starts at ``W_k = 2 c_k``, ``b_k = -‖c_k‖²`` (the linear form
    of ProtoNet's logits); then ``steps`` gradient steps adapt the head and the
    encoder's parameters that ``adapt_encoder`` selects: all (``True``), none
    (``False``: the support features are then computed once), or those whose
    name it accepts (a function of the name, e.g. the top layers).
    """

    def __init__(self, encoder: nn.Module, lr: float = 0.1, steps: int = 1,
                 first_order: bool = False, adapt_encoder: bool | Callable[[str], bool] = True,
                 loss: Loss = F.cross_entropy, allow_unused: bool = False):
        super().__init__(encoder, lr, steps, first_order, loss, allow_unused=allow_unused)
        self.adapt_encoder = adapt_encoder

    def clone(self, first_order: bool | None = None) -> Clone:
        raise ConfigError("ProtoMAML builds its head from the support set; call adapt(x, y) "
                          "instead of clone()")

    def inner_loss(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        return self.loss(self._logits(params, x), y)

    def _logits(self, params: Params, x: Tensor) -> Tensor:
        enc = {n: p for n, p in params.items() if n not in ("head.weight", "head.bias")}
        return _linear(functional_call(self.model, enc, (x,)), params)

    def _adapted_encoder(self, enc: Params) -> Params:
        choose = self.adapt_encoder
        return {n: p for n, p in enc.items()
                if (choose(n) if callable(choose) else bool(choose))}

    def adapt(self, x: Tensor, y: Tensor, first_order: bool | None = None,
              each: Each | None = None) -> Params:
        z = self.model(x)
        protos = _prototypes(z, y, int(y.max()) + 1)
        enc = params_of(self.model)
        head = {"head.weight": 2 * protos, "head.bias": -protos.pow(2).sum(-1)}
        first_order = self.first_order if first_order is None else first_order
        fast = {**self._adapted_encoder(enc), **head}
        frozen = {n: p for n, p in enc.items() if n not in fast}
        if len(fast) == len(head):
            # The head alone adapts: its loss needs the support features, computed once.
            inputs, loss_fn = z, lambda p, zb, yb: self.loss(_linear(zb, p), yb)  # noqa: E731
        else:
            inputs, loss_fn = x, lambda p, xb, yb: self.inner_loss({**frozen, **p}, xb, yb)  # noqa: E731
        if not first_order:
            seen = None if each is None else (lambda k, p: each(k, {**frozen, **p}))
            return {**frozen, **adapt(loss_fn, fast, inputs, y, self.steps, self.lr,
                                      allow_unused=self.allow_unused, each=seen)}
        # The head shares the support features' graph with the outer loss, so the inner
        # loop runs on detached copies and its displacement is added as a constant:
        # θ' = θ₀ + sg(θ'_J − θ₀). The meta-gradient still reaches the encoder through θ₀.
        detached = {n: p.detach().requires_grad_() for n, p in fast.items()}

        def state(p: Params) -> Params:
            return {**frozen, **{n: fast[n] + (p[n] - detached[n]).detach() for n in fast}}

        moved = adapt(loss_fn, detached, inputs.detach() if inputs is z else inputs, y,
                      self.steps, self.lr, first_order=True, allow_unused=self.allow_unused,
                      each=None if each is None else (lambda k, p: each(k, state(p))))
        return state(moved)

    def predict(self, state: Params, x: Tensor) -> Tensor:
        return self._logits(state, x)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)
