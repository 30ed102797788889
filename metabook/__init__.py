"""metabook: the library behind *Everything is a mapping: meta-learning-based pretraining for NLP*.

A model is a mapping ``f_θ: X → Y``; a learner maps a task's support set to an
adapted mapping ``θ' = U_φ(θ, S)``. The modules follow that sentence:

- :mod:`metabook.tasks` and :mod:`metabook.samplers`: tasks and where they come from;
- :mod:`metabook.adaptation`: the adaptation rule as functions on parameter dicts;
- :mod:`metabook.learners`: MAML, first-order MAML, Meta-SGD, Reptile, ANIL,
  prototypical networks and ProtoMAML behind one protocol; :mod:`metabook.implicit`:
  implicit MAML, whose meta-gradient costs the same memory for any number of steps;
- :mod:`metabook.models`: small models and Hugging Face backbones to adapt;
- :mod:`metabook.batching`: all tasks of a meta-batch adapted in one batched computation;
- :mod:`metabook.corpora`, :mod:`metabook.text` and :mod:`metabook.tokenization`: real
  text that loads offline, words and subword tokenizers; :mod:`metabook.synthetic`:
  a family of made-up languages for controlled experiments; :mod:`metabook.corpora.benchmarks`:
  loaders of public benchmarks for readers who are online;
- :mod:`metabook.ngrams` and :mod:`metabook.objectives`: n-gram models and the
  masked and causal language-modelling objectives;
- :mod:`metabook.config`, :mod:`metabook.training`, :mod:`metabook.checkpoint`: a run's
  settings, the meta-trainer with exact resume, and safe checkpoints;
- :mod:`metabook.evaluation`, :mod:`metabook.baselines`, :mod:`metabook.pipeline`: accuracy
  with 95% intervals, the baselines, and the end-to-end pipeline behind ``metabook
  pretrain``, ``evaluate`` and ``reproduce chapter5`` (:mod:`metabook.cli`);
- :mod:`metabook.distributed`: meta-batches split across processes;
- :mod:`metabook.scale`: one knob from a laptop-sized run to a GPU-sized one.
"""
import os
import warnings
from importlib.metadata import PackageNotFoundError, version

# Idle OpenMP threads sleep instead of spinning: on a machine whose cores are shared (CI,
# Colab, a laptop running a browser) spinning threads slow small models down many times
# over. libgomp reads this when torch is first imported, so it must come before that.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# `datasets` imports tqdm.auto, which warns inside a notebook when ipywidgets is absent;
# metabook's own progress bars are plain text bars, so the warning only adds noise to pages.
warnings.filterwarnings("ignore", message="IProgress not found")

try:
    __version__ = version("metabook")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

from metabook import (adaptation, baselines, batching, checkpoint, config, corpora, distributed,
                      errors, evaluation, implicit, learners, models, ngrams, objectives,
                      pipeline, samplers, scale, synthetic, tasks, text, tokenization, training)
from metabook.implicit import IMAML
from metabook.learners import (ANIL, MAML, FirstOrderMAML, MetaSGD, ProtoMAML, ProtoNet, Reptile)
from metabook.samplers import (CurriculumSampler, ProportionalSampler, TemperatureSampler,
                               UniformSampler)
from metabook.tasks import EpisodeSource, SMLMTSource, Task
from metabook.config import PretrainConfig

__all__ = [
    "__version__", "adaptation", "baselines", "batching", "checkpoint", "config", "corpora",
    "distributed", "errors", "evaluation", "implicit", "learners", "models", "ngrams",
    "objectives", "pipeline", "samplers", "scale", "synthetic", "tasks", "text", "tokenization",
    "training",
    "MAML", "FirstOrderMAML", "MetaSGD", "Reptile", "ANIL", "ProtoNet", "ProtoMAML", "IMAML",
    "Task", "EpisodeSource", "SMLMTSource", "PretrainConfig",
    "UniformSampler", "ProportionalSampler", "TemperatureSampler", "CurriculumSampler",
]
