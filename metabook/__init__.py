"""metabook: the library behind *Everything is a mapping: meta-learning-based pretraining for NLP*.

A model is a mapping ``f_θ: X → Y``; a learner maps a task's support set to an
adapted mapping ``θ' = U_φ(θ, S)``. The modules follow that sentence:

- tasks: :mod:`~metabook.tasks` (a support and a query set, and their sources),
  :mod:`~metabook.samplers` (which source the next task comes from);
- adaptation: :mod:`~metabook.adaptation` (the one inner-update rule, on
  parameter dicts), :mod:`~metabook.learners` (MAML, first-order MAML, Meta-SGD,
  Reptile, ANIL, prototypical networks and ProtoMAML behind one protocol),
  :mod:`~metabook.implicit` (implicit MAML), :mod:`~metabook.batching` (a
  meta-batch adapted in one batched computation);
- models: :mod:`~metabook.models` (small models, Hugging Face backbones, the
  backbone registry), :mod:`~metabook.pretrained` (a pretrained encoder such as
  MiniLM, its frozen layers cached);
- text: :mod:`~metabook.corpora` (real text that loads offline, behind a
  registry), :mod:`~metabook.text` (words, vocabularies),
  :mod:`~metabook.tokenization` (subword tokenizers), :mod:`~metabook.features`
  (hashed character n-grams), :mod:`~metabook.synthetic` (invented languages),
  :mod:`~metabook.ngrams` and :mod:`~metabook.objectives` (n-gram models, masked
  and causal language modelling);
- training: :mod:`~metabook.training` (the one training loop, the meta-trainer,
  the optimizers), :mod:`~metabook.rundir` (a run's folder),
  :mod:`~metabook.checkpoint` (safe checkpoints), :mod:`~metabook.distributed`
  (meta-batches split across processes);
- measuring: :mod:`~metabook.evaluation` (accuracy with 95% intervals, paired
  differences), :mod:`~metabook.baselines` (what meta-pretraining is measured
  against), :mod:`~metabook.memory` (what autograd saves for the backward pass),
  :mod:`~metabook.source` (library code shown on a page), :mod:`~metabook.figures`
  (diagrams of the book's ideas), :mod:`~metabook.claims` (a sentence of the text
  checked against its numbers);
- a whole run: :mod:`~metabook.config` (its settings), :mod:`~metabook.recipes`
  (the learner registry, and the objects a config names), :mod:`~metabook.data`,
  :mod:`~metabook.runs`, :mod:`~metabook.comparison`, all in one import as
  :mod:`~metabook.pipeline`; :mod:`~metabook.cli` is the ``metabook`` command;
- shared: :mod:`~metabook.registry` (named entries of one kind),
  :mod:`~metabook.errors`, :mod:`~metabook.scale` (one knob from a laptop-sized
  run to a GPU-sized one).

Nothing is imported until it is used: ``import metabook`` is quick, and
``metabook.MAML`` or ``from metabook import MAML`` imports what it needs::

    >>> import metabook
    >>> metabook.MAML.__module__
    'metabook.learners'
"""
import os
import warnings
from importlib import import_module

# Idle OpenMP threads sleep instead of spinning: on a machine whose cores are shared (CI,
# Colab, a laptop running a browser) spinning threads slow small models down many times
# over. libgomp reads this when torch is first imported, so it must come before that.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# `datasets` imports tqdm.auto, which warns inside a notebook when ipywidgets is absent;
# metabook's own progress bars are plain text bars, so the warning only adds noise to pages.
warnings.filterwarnings("ignore", message="IProgress not found")
# A torchvision built without its image extension (the one learn2learn needs beside the CPU
# torch) warns whenever transformers imports it; metabook uses no image code.
warnings.filterwarnings("ignore", message="Failed to load image Python extension")

_MODULES = ("adaptation", "baselines", "batching", "checkpoint", "claims", "cli", "comparison",
            "config", "corpora", "data", "distributed", "errors", "evaluation", "features",
            "figures", "implicit", "learners", "memory", "models", "ngrams", "objectives",
            "pipeline", "pretrained", "recipes", "registry", "rundir", "runs", "samplers",
            "scale", "source", "synthetic", "tasks", "text", "tokenization", "training")
# The names most code starts from, and the module each lives in.
_NAMES = {"MAML": "learners", "FirstOrderMAML": "learners", "MetaSGD": "learners",
          "Reptile": "learners", "ANIL": "learners", "ProtoNet": "learners",
          "ProtoMAML": "learners", "IMAML": "implicit", "Task": "tasks",
          "EpisodeSource": "tasks", "SMLMTSource": "tasks", "PretrainConfig": "config",
          "UniformSampler": "samplers", "ProportionalSampler": "samplers",
          "TemperatureSampler": "samplers", "CurriculumSampler": "samplers"}

__all__ = ["__version__", *_MODULES, *_NAMES]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("metabook")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"


def __getattr__(name: str):
    """Import a module or a top-level name the first time it is asked for."""
    if name == "__version__":
        value = _version()
    elif name in _NAMES:
        value = getattr(import_module(f"metabook.{_NAMES[name]}"), name)
    elif name in _MODULES:
        value = import_module(f"metabook.{name}")
    else:
        raise AttributeError(f"module 'metabook' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
