"""Task samplers: which task source the next task comes from.

A meta-training run draws tasks from a family of sources (languages, domains,
users). How often each source is visited shapes what is learned:

- :class:`UniformSampler`: every source equally often;
- :class:`ProportionalSampler`: in proportion to the source's size;
- :class:`TemperatureSampler`: ``p_i ∝ n_i^α`` (α = 1 proportional, α = 0
  uniform; SMLMT used α = 0.5);
- :class:`CurriculumSampler`: starts on the easiest sources and widens to all
  of them over ``warmup`` steps.

Every sampler owns a seeded ``torch.Generator`` and can save and restore its
state, so a resumed run draws exactly the tasks the uninterrupted run would::

    >>> import torch
    >>> from metabook.tasks import EpisodeSource
    >>> a = EpisodeSource(torch.zeros(8, 1), [0, 1] * 4, 2, 1, 1, name="a")
    >>> b = EpisodeSource(torch.zeros(32, 1), [0, 1] * 16, 2, 1, 1, name="b")
    >>> [round(p, 3) for p in TemperatureSampler([a, b], alpha=0.5).probabilities().tolist()]
    [0.333, 0.667]
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from metabook.errors import TaskError
from metabook.tasks import Task, TaskSource

__all__ = ["TaskSampler", "UniformSampler", "ProportionalSampler", "TemperatureSampler",
           "CurriculumSampler"]


class TaskSampler:
    """Draws tasks from ``sources`` with :meth:`probabilities`; subclasses set the weights."""

    def __init__(self, sources: Sequence[TaskSource], seed: int = 0):
        if not sources:
            raise TaskError("a sampler needs at least one task source")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise TaskError(f"task sources need distinct names; got {names}")
        self.sources = list(sources)
        self.step = 0
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def sizes(self) -> Tensor:
        return torch.tensor([float(len(s)) for s in self.sources])

    def probabilities(self) -> Tensor:
        """The probability of each source for the next draw."""
        raise NotImplementedError

    def sample(self) -> Task:
        """Draw one task: first a source, then a task from it."""
        p = self.probabilities()
        index = int(torch.multinomial(p, 1, generator=self.generator))
        self.step += 1
        return self.sources[index].sample(self.generator)

    def sample_batch(self, size: int) -> list[Task]:
        """Draw ``size`` tasks (a meta-batch)."""
        return [self.sample() for _ in range(size)]

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue the same stream of tasks."""
        return {"step": self.step, "generator": self.generator.get_state().tolist(),
                "sources": [s.name for s in self.sources]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` taken on a sampler over the same sources."""
        names = [s.name for s in self.sources]
        if state.get("sources") != names:
            raise TaskError(f"sampler state is for sources {state.get('sources')}, not {names}")
        self.step = int(state["step"])
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))


class UniformSampler(TaskSampler):
    """Every source equally often, whatever its size."""

    def probabilities(self) -> Tensor:
        return torch.full((len(self.sources),), 1.0 / len(self.sources))


class TemperatureSampler(TaskSampler):
    """``p_i ∝ n_i ** alpha``: ``alpha=1`` follows size, ``alpha=0`` is uniform."""

    def __init__(self, sources: Sequence[TaskSource], alpha: float = 0.5, seed: int = 0):
        super().__init__(sources, seed)
        if alpha < 0:
            raise TaskError(f"temperature exponent alpha must be >= 0, got {alpha}")
        self.alpha = alpha

    def probabilities(self) -> Tensor:
        w = self.sizes ** self.alpha
        return w / w.sum()


class ProportionalSampler(TemperatureSampler):
    """In proportion to each source's size (``alpha = 1``)."""

    def __init__(self, sources: Sequence[TaskSource], seed: int = 0):
        super().__init__(sources, alpha=1.0, seed=seed)


class CurriculumSampler(TaskSampler):
    """Easy sources first, all of them after ``warmup`` draws.

    ``difficulty`` scores each source (lower is easier; by default the smaller
    source is the harder one). At step ``t`` the easiest
    ``max(1, ceil(len(sources) * t / warmup))`` sources are drawn uniformly.
    """

    def __init__(self, sources: Sequence[TaskSource], warmup: int,
                 difficulty: Callable[[TaskSource], float] | None = None, seed: int = 0):
        super().__init__(sources, seed)
        if warmup < 1:
            raise TaskError(f"curriculum warmup must be at least 1 step, got {warmup}")
        score = difficulty or (lambda s: -float(len(s)))
        self.order = sorted(range(len(self.sources)), key=lambda i: score(self.sources[i]))
        self.warmup = warmup

    def probabilities(self) -> Tensor:
        m = len(self.sources)
        open_ = max(1, min(m, -(-m * self.step // self.warmup)))
        p = torch.zeros(m)
        p[self.order[:open_]] = 1.0 / open_
        return p
