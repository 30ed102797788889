"""How the names in a config become objects: the learner registry, and a run's encoder,
learner and stream of training tasks.

:data:`LEARNERS` maps each learner a config may name (``learner: protomaml``) to
the function that builds it around an encoder, with its display name; the
config checks its ``learner`` against it, and the comparison's tables print its
display names. The encoder comes from :data:`metabook.models.BACKBONES`::

    >>> from metabook.config import PretrainConfig
    >>> learner = build_learner(PretrainConfig(learner="maml", dim=8, heads=2), vocab_size=30)
    >>> type(learner).__name__, LEARNERS.display("maml")
    ('MAML', 'MAML')
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from metabook.errors import ConfigError
from metabook.learners import (ANIL, MAML, FirstOrderMAML, Learner, MetaSGD, ProtoMAML, ProtoNet,
                               Reptile)
from metabook.models import BACKBONES, TextClassifier
from metabook.registry import Registry
from metabook.samplers import TaskSampler, UniformSampler
from metabook.tasks import EpisodeSource, SMLMTSource, Task, trim
from metabook.text import Vocab

if TYPE_CHECKING:
    from metabook.config import PretrainConfig
    from metabook.data import Data

__all__ = ["LEARNERS", "build_encoder", "build_learner", "build_sampler", "encoder_width"]

Recipe = Callable[[nn.Module, "PretrainConfig"], Learner]

#: ``name -> recipe(encoder, config)``: the learners a config may name.
LEARNERS: Registry[Recipe] = Registry("learner")


def encoder_width(config: PretrainConfig) -> int:
    """The width of the vectors the config's backbone puts out (its own, or ``config.dim``)."""
    return BACKBONES[config.backbone].width or config.dim


def _classifier(encoder: nn.Module, config: PretrainConfig) -> TextClassifier:
    return TextClassifier(encoder, encoder_width(config), config.n_way)


LEARNERS.register("maml", lambda enc, c: MAML(_classifier(enc, c), c.inner_lr, c.inner_steps),
                  display="MAML")
LEARNERS.register("fomaml", lambda enc, c: FirstOrderMAML(_classifier(enc, c), c.inner_lr,
                                                          c.inner_steps),
                  display="first-order MAML")
# Meta-SGD learns one step size per parameter tensor: SMLMT's per-layer rates.
LEARNERS.register("metasgd", lambda enc, c: MetaSGD(_classifier(enc, c), c.inner_lr, c.inner_steps,
                                                    granularity="tensor",
                                                    first_order=c.first_order),
                  display="Meta-SGD")
LEARNERS.register("reptile", lambda enc, c: Reptile(_classifier(enc, c), c.inner_lr, c.inner_steps),
                  display="Reptile")
LEARNERS.register("anil", lambda enc, c: ANIL(enc, nn.Linear(encoder_width(c), c.n_way),
                                              c.inner_lr, c.inner_steps, c.first_order),
                  display="ANIL")
LEARNERS.register("protonet", lambda enc, c: ProtoNet(enc), display="ProtoNet")
LEARNERS.register("protomaml", lambda enc, c: ProtoMAML(enc, c.inner_lr, c.inner_steps,
                                                        c.first_order),
                  display="ProtoMAML")


def build_encoder(config: PretrainConfig, vocab_size: int, pad_id: int = 0) -> nn.Module:
    """The backbone ``config.backbone``, randomly initialised from ``config.seed``."""
    torch.manual_seed(config.seed)
    return BACKBONES[config.backbone].build(vocab_size, dim=config.dim, layers=config.layers,
                                            heads=config.heads, max_len=config.max_len,
                                            pad_id=pad_id)


def build_learner(config: PretrainConfig, vocab_size: int, pad_id: int = 0) -> Learner:
    """The learner ``config.learner`` (a :data:`LEARNERS` recipe) around :func:`build_encoder`'s.

    Learners with a classifier head get a linear head of ``n_way`` outputs.
    """
    recipe = LEARNERS[config.learner]
    return recipe(build_encoder(config, vocab_size, pad_id), config)


def build_sampler(config: PretrainConfig, data: Data) -> TaskSampler:
    """The training-task stream of ``config.tasks``; ``"hybrid"`` draws each kind half the time.

    Its tasks are :func:`~metabook.tasks.trim`-med of the padding no sentence in them uses.
    """
    sources: list[Any] = []
    if config.tasks in ("smlmt", "hybrid"):
        if not isinstance(data.vocab, Vocab):
            raise ConfigError(f"backbone {config.backbone!r} brings its own tokenizer, and SMLMT "
                              f"tasks mask whole words of a word vocabulary; set tasks to "
                              f"'supervised'", options=("tasks",))
        sources.append(SMLMTSource(data.texts["train"], data.vocab, config.n_way, config.k_shot,
                                   config.q_query, max_len=config.max_len, name="smlmt"))
    if config.tasks in ("supervised", "hybrid"):
        sources.append(EpisodeSource(data.ids["train"], data.labels["train"], config.n_way,
                                     config.k_shot, config.q_query, name="train-classes"))
    pad = data.vocab.pad_id
    return UniformSampler([_Trimmed(s, pad) for s in sources], seed=config.seed)


class _Trimmed:
    """A task source whose tasks lose the padding columns no sentence uses."""

    def __init__(self, source: EpisodeSource | SMLMTSource, pad_id: int):
        self.source, self.pad_id, self.name = source, pad_id, source.name

    def __len__(self) -> int:
        return len(self.source)

    def __getattr__(self, name: str) -> Any:  # words, classes, ...: those of the source
        return getattr(self.source, name)

    def sample(self, generator: torch.Generator) -> Task:
        return trim(self.source.sample(generator), self.pad_id)
