"""Measuring a learner on many held-out episodes, with confidence intervals.

A few-shot accuracy is an average over episodes, and episodes differ a lot, so
every number comes with the half-width of its 95% confidence interval:
``mean ± 1.96 · s / √n``, where ``s`` is the sample standard deviation of the
per-episode accuracies and ``n`` the number of episodes (the normal
approximation, as is usual in the few-shot literature; with a few hundred
episodes it is indistinguishable from Student's t)::

    >>> iv = mean_ci([0.5, 0.7, 0.6, 0.8])
    >>> round(iv.mean, 3), round(iv.half_width, 3)
    (0.65, 0.127)
    >>> print(iv)
    65.0 ± 12.7

Two methods measured on the same episodes are compared by the mean of their
per-episode differences (:func:`paired_difference`): the variation between
episodes cancels, so its interval is far narrower than the two separate ones::

    >>> print(paired_difference([0.5, 0.7, 0.6, 0.8], [0.4, 0.7, 0.5, 0.7]))
    7.5 ± 4.9

Accuracy is measured *before* adaptation (zero inner gradient steps: for
ProtoMAML that is the prototype classifier, for MAML a head that has not seen
the task) and *after* it, and as curves over the number of shots ``K`` and the
number of inner steps.
"""
from __future__ import annotations

import inspect
import math
import statistics
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from tqdm import tqdm

from metabook.errors import ConfigError
from metabook.adaptation import Params
from metabook.learners import GradientLearner, Learner, MetaSGD, accuracy
from metabook.tasks import Task, TaskSource

__all__ = ["Z95", "Interval", "mean_ci", "paired_difference", "draw_episodes", "adaptation", "accuracies",
           "accuracies_along", "Evaluation", "evaluate", "curve", "Choice", "select_adaptation"]

#: The 97.5% quantile of the standard normal distribution.
Z95 = statistics.NormalDist().inv_cdf(0.975)


@dataclass(frozen=True)
class Interval:
    """A mean with the half-width of its confidence interval, over ``n`` values."""

    mean: float
    half_width: float
    n: int
    z: float = Z95

    @property
    def level(self) -> float:
        """The interval's confidence level (0.95 for ``z`` = :data:`Z95`)."""
        return 2 * statistics.NormalDist().cdf(self.z) - 1

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def __contains__(self, value: float) -> bool:
        """Whether ``value`` lies in the interval: ``0 in paired_difference(a, b)``.

        >>> 0 in Interval(0.02, 0.03, 600), 0 in Interval(0.02, 0.01, 600)
        (True, False)
        """
        return self.low <= value <= self.high

    def overlaps(self, other: "Interval") -> bool:
        """Whether the two intervals share any value."""
        return self.low <= other.high and other.low <= self.high

    def __str__(self) -> str:
        """As percentages: ``65.0 ± 12.7``."""
        return f"{100 * self.mean:.1f} ± {100 * self.half_width:.1f}"

    def points(self, ends: bool = True) -> str:
        """A difference of accuracies in points, with its interval's ends (or half-width).

        >>> Interval(0.039, 0.006, 600).points()
        '+3.9 points, 95% interval +3.3 to +4.5'
        >>> Interval(0.039, 0.006, 600).points(ends=False)
        '+3.9 ± 0.6 points'
        """
        if not ends:
            return f"{100 * self.mean:+.1f} ± {100 * self.half_width:.1f} points"
        return (f"{100 * self.mean:+.1f} points, {self.level:.0%} interval "
                f"{100 * self.low:+.1f} to {100 * self.high:+.1f}")

    def relation(self, above: str = "better than", below: str = "worse than",
                 neither: str = "not distinguishable from") -> str:
        """What the interval of a paired difference ``a - b`` supports about ``a`` and ``b``.

        ``above`` when it lies above zero, ``below`` when below, else ``neither``:
        a direction is read off only when the interval excludes zero.

        >>> Interval(0.02, 0.01, 600).relation(), Interval(0.02, 0.03, 600).relation()
        ('better than', 'not distinguishable from')
        """
        return above if self.low > 0 else below if self.high < 0 else neither


def mean_ci(values: Sequence[float], z: float = Z95) -> Interval:
    """Mean of ``values`` and the half-width ``z · s / √n`` of its confidence interval."""
    values = [float(v) for v in values]
    if len(values) < 2:
        raise ConfigError(f"a confidence interval needs at least 2 values, got {len(values)}: "
                          f"evaluate on more episodes")
    return Interval(statistics.fmean(values), z * statistics.stdev(values) / math.sqrt(len(values)),
                    len(values), z)


def paired_difference(a: Sequence[float], b: Sequence[float], z: float = Z95) -> Interval:
    """Mean per-episode difference ``a - b`` and the half-width of its confidence interval.

    ``a`` and ``b`` are two methods' scores on the same episodes, in the same
    order (see the module docstring); a positive mean favours ``a``::

        >>> iv = paired_difference([0.9, 0.8, 1.0], [0.7, 0.7, 0.9])
        >>> round(iv.mean, 3), iv.low > 0
        (0.133, True)
    """
    if len(a) != len(b):
        raise ConfigError(f"a paired difference needs two scores for every episode; got "
                          f"{len(a)} and {len(b)}: measure both methods on the same episodes")
    return mean_ci([float(x) - float(y) for x, y in zip(a, b)], z)


def draw_episodes(source: TaskSource | Sequence[TaskSource], n: int, seed: int) -> list[Task]:
    """``n`` episodes from ``source`` with their own generator: the same seed, the same episodes.

    Given a list of sources, the episodes take them in turn (episode ``i``
    comes from ``source[i % len(source)]``), so that each source is measured
    on as many episodes as the others.

    >>> from metabook.tasks import EpisodeSource
    >>> src = EpisodeSource(torch.arange(12.).view(12, 1), [i % 3 for i in range(12)], 2, 1, 1)
    >>> [t.classes for t in draw_episodes(src, 2, seed=0)] == \\
    ...     [t.classes for t in draw_episodes(src, 2, seed=0)]
    True
    >>> other = EpisodeSource(torch.zeros(4, 1), [0, 0, 1, 1], 2, 1, 1, name="other")
    >>> [t.source for t in draw_episodes([src, other], 3, seed=0)]
    ['episodes', 'other', 'episodes']
    """
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    if not sources:
        raise ConfigError("draw_episodes needs at least one task source")
    generator = torch.Generator().manual_seed(seed)
    return [sources[i % len(sources)].sample(generator) for i in range(n)]


@contextmanager
def adaptation(learner: Learner, steps: int | None = None, lr: float | None = None
               ) -> Iterator[Learner]:
    """Temporarily change a gradient learner's inner ``steps`` and learning rate ``lr``.

    ``None`` keeps the learner's own value. A learner without an inner loop
    (ProtoNet) accepts only ``None``; Meta-SGD's step sizes are learned, so it
    accepts no ``lr``.
    """
    if not isinstance(learner, GradientLearner):
        if steps is not None or lr is not None:
            raise ConfigError(f"{type(learner).__name__} adapts without gradient steps; it has "
                              f"no inner steps or learning rate to change")
        yield learner
        return
    if lr is not None and isinstance(learner, MetaSGD):
        raise ConfigError("Meta-SGD learns its inner step sizes; they cannot be overridden")
    if steps is not None and steps < 0:
        raise ConfigError(f"inner steps must be >= 0, got {steps}")
    saved = learner.steps, learner.lr
    learner.steps = saved[0] if steps is None else steps
    learner.lr = saved[1] if lr is None else lr
    try:
        yield learner
    finally:
        learner.steps, learner.lr = saved


def accuracies(learner: Learner, episodes: Sequence[Task], steps: int | None = None,
               lr: float | None = None, progress: bool = False, desc: str = "episodes"
               ) -> list[float]:
    """Query accuracy of ``learner`` on each episode after adapting to its support set."""
    with _evaluating(learner) as device, adaptation(learner, steps, lr):
        return [learner.evaluate(t.to(device))["accuracy"]
                for t in tqdm(episodes, desc=desc, disable=not progress, leave=False)]


@contextmanager
def _evaluating(learner: Learner) -> Iterator[torch.device]:
    """``learner`` in eval mode (its mode is restored afterwards); yields its device."""
    was_training = learner.training
    first = next(learner.parameters(), None)
    learner.eval()
    try:
        yield first.device if first is not None else torch.device("cpu")
    finally:
        learner.train(was_training)


def accuracies_along(learner: Learner, episodes: Sequence[Task], steps: Sequence[int],
                     lr: float | None = None, progress: bool = False
                     ) -> dict[int, list[float]]:
    """``{n: accuracies(learner, episodes, n, lr) for n in steps}``, adapting each episode once.

    The ``max(steps)`` inner steps of one adaptation pass through every shorter
    number of steps on the way, so the accuracies after each are read off that
    one adaptation: the same computation, the same numbers, a fraction of the
    cost. Learners whose ``adapt`` takes no ``each`` (or that evaluate in a
    way of their own) are adapted once per number of steps instead.

    >>> from metabook.learners import MAML
    >>> from metabook.tasks import Task
    >>> task = Task(torch.eye(4), torch.arange(4), torch.eye(4), torch.arange(4))
    >>> maml = MAML(torch.nn.Linear(4, 4), lr=1.0)
    >>> along = accuracies_along(maml, [task], [0, 5])
    >>> along == {n: accuracies(maml, [task], n) for n in (0, 5)}
    True
    """
    steps = list(dict.fromkeys(steps))
    if not steps or not _adapts_along(learner):
        return {n: accuracies(learner, episodes, n, lr, progress) for n in steps}
    out: dict[int, list[float]] = {n: [] for n in steps}
    states: dict[int, Params] = {}

    def keep(k: int, state: Params) -> None:
        if k in out:
            states[k] = {n: p.detach() for n, p in state.items()}

    with _evaluating(learner) as device, adaptation(learner, max(steps), lr):
        for task in tqdm(episodes, desc="episodes", disable=not progress, leave=False):
            task = task.to(device)
            if task.query_y.is_floating_point():
                raise ConfigError("accuracy needs class labels; these episodes are a "
                                  "regression (float query_y): measure their loss instead")
            # As GradientLearner's evaluate: a first-order adaptation, predictions without
            # a graph.
            with torch.enable_grad():
                learner.adapt(task.support_x, task.support_y, first_order=True, each=keep)
            with torch.no_grad():
                for n in steps:
                    out[n].append(accuracy(learner.predict(states[n], task.query_x),
                                           task.query_y))
    return out


def _adapts_along(learner: Learner) -> bool:
    """Whether :func:`accuracies_along` may read several step counts off one adaptation."""
    cls = type(learner)
    return (isinstance(learner, GradientLearner)
            and "each" in inspect.signature(learner.adapt).parameters
            and cls._eval_logits is GradientLearner._eval_logits
            and cls.evaluate is Learner.evaluate)


@dataclass(frozen=True)
class Evaluation:
    """Accuracy before (zero inner steps) and after adaptation, per episode and summarised."""

    before: list[float]
    after: list[float]

    @property
    def before_ci(self) -> Interval:
        return mean_ci(self.before)

    @property
    def after_ci(self) -> Interval:
        return mean_ci(self.after)


def evaluate(learner: Learner, episodes: Sequence[Task], steps: int | None = None,
             lr: float | None = None, progress: bool = False) -> Evaluation:
    """Accuracy on ``episodes`` before adaptation and after ``steps`` inner steps.

    For a learner without an inner loop (ProtoNet), or zero ``steps``, the two
    are the same, and computed once.
    """
    after = accuracies(learner, episodes, steps, lr, progress, desc="after adaptation")
    adapts = isinstance(learner, GradientLearner) and (learner.steps if steps is None else steps)
    if adapts:
        before = accuracies(learner, episodes, 0, progress=progress, desc="before adaptation")
    else:
        before = list(after)
    return Evaluation(before, after)


def curve(measure: Callable[[int], Sequence[float]], points: Sequence[int]
          ) -> list[tuple[int, Interval]]:
    """``[(x, mean_ci(measure(x))) for x in points]``: a curve over shots, steps or ways.

    >>> [(x, round(iv.mean, 2)) for x, iv in curve(lambda k: [k / 10, k / 10 + 0.1], [1, 2])]
    [(1, 0.15), (2, 0.25)]
    """
    return [(x, mean_ci(measure(x))) for x in points]


@dataclass(frozen=True)
class Choice:
    """The inner ``steps`` and learning rate ``lr`` that scored best, with every score tried."""

    steps: int | None
    lr: float | None
    score: float
    scores: dict[tuple[int | None, float | None], float]


def select_adaptation(learner: Learner, episodes: Sequence[Task], steps: Sequence[int],
                      lrs: Sequence[float]) -> Choice:
    """The inner steps and learning rate with the best mean accuracy on ``episodes``.

    Run it on *validation* episodes, then measure the choice on test episodes:
    every method of a comparison gets the same search, so none is held back by
    a learning rate tuned for another. Ties go to the first setting tried; zero
    steps are tried once (the learning rate does not matter there). A learner
    without an inner loop has nothing to choose; Meta-SGD chooses only steps.

    >>> from metabook.learners import ProtoNet
    >>> select_adaptation(ProtoNet(torch.nn.Identity()), [], [1, 2], [0.1]).steps is None
    True
    """
    if not isinstance(learner, GradientLearner):
        return Choice(None, None, float("nan"), {})
    lr_grid: Sequence[float | None] = [None] if isinstance(learner, MetaSGD) else lrs
    grid = [(n, lr) for n in steps for lr in ([lr_grid[0]] if n == 0 else lr_grid)]
    if not grid:
        raise ConfigError("select_adaptation needs at least one number of steps and one "
                          "learning rate to try")
    along = {lr: accuracies_along(learner, episodes, [n for n, r in grid if r == lr], lr)
             for lr in lr_grid}
    scores = {(n, lr): statistics.fmean(along[lr][n]) for n, lr in grid}
    (best_steps, best_lr), best = max(scores.items(), key=lambda kv: kv[1])
    return Choice(best_steps, best_lr, best, scores)
