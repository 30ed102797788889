"""metabook: the library behind *Everything is a mapping: meta-learning-based pretraining for NLP*.

A model is a mapping ``f_θ: X → Y``; a learner maps a task's support set to an
adapted mapping ``θ' = U_φ(θ, S)``. The modules follow that sentence:

- :mod:`metabook.tasks` and :mod:`metabook.samplers`: tasks and where they come from;
- :mod:`metabook.adaptation`: the adaptation rule as functions on parameter dicts;
- :mod:`metabook.learners`: MAML, first-order MAML, Meta-SGD, Reptile, ANIL,
  prototypical networks and ProtoMAML behind one protocol;
- :mod:`metabook.models`: small models and Hugging Face backbones to adapt;
- :mod:`metabook.corpora` and :mod:`metabook.text`: real text that loads offline;
- :mod:`metabook.scale`: one knob from a laptop-sized run to a GPU-sized one.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("metabook")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

from metabook import adaptation, corpora, errors, learners, models, samplers, scale, tasks, text
from metabook.learners import (ANIL, MAML, FirstOrderMAML, MetaSGD, ProtoMAML, ProtoNet, Reptile)
from metabook.samplers import (CurriculumSampler, ProportionalSampler, TemperatureSampler,
                               UniformSampler)
from metabook.tasks import EpisodeSource, SMLMTSource, Task

__all__ = [
    "__version__", "adaptation", "corpora", "errors", "learners", "models", "samplers", "scale",
    "tasks", "text",
    "MAML", "FirstOrderMAML", "MetaSGD", "Reptile", "ANIL", "ProtoNet", "ProtoMAML",
    "Task", "EpisodeSource", "SMLMTSource",
    "UniformSampler", "ProportionalSampler", "TemperatureSampler", "CurriculumSampler",
]
