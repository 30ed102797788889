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

import re
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from metabook.errors import ConfigError
from metabook.learners import (ANIL, MAML, FirstOrderMAML, Learner, MetaSGD, ProtoMAML, ProtoNet,
                               Reptile)
from metabook import pretrained  # noqa: F401  (registers the pretrained backbones)
from metabook.models import BACKBONES, TextClassifier
from metabook.registry import Registry
from metabook.samplers import TaskSampler, TemperatureSampler, UniformSampler
from metabook.tasks import EpisodeSource, SMLMTSource, Task, trim
from metabook.text import Vocab

if TYPE_CHECKING:
    from metabook.config import PretrainConfig
    from metabook.data import Data

__all__ = ["LEARNERS", "adapted_parameters", "encoder_of", "build_encoder", "build_learner",
           "build_sampler", "encoder_width"]

Recipe = Callable[[nn.Module, "PretrainConfig"], Learner]

#: ``name -> recipe(encoder, config)``: the learners a config may name.
LEARNERS: Registry[Recipe] = Registry("learner")


def encoder_width(config: PretrainConfig) -> int:
    """The width of the vectors the config's backbone puts out (its own, or ``config.dim``)."""
    return BACKBONES[config.backbone].output_width(config)


_LAYER = re.compile(r"(?:^|encoder\.)layers\.(\d+)\.")


def adapted_parameters(config: PretrainConfig) -> Callable[[str], bool] | None:
    """Which parameters the inner loop adapts (None: every one the learner adapts by default).

    Every parameter of a backbone built from scratch; of a pretrained encoder,
    the head and the top ``adapt_layers`` of its ``train_layers`` trained layers.

    >>> from metabook.config import PretrainConfig
    >>> adapts = adapted_parameters(PretrainConfig(backbone="minilm", train_layers=2,
    ...                                            adapt_layers=1))
    >>> [adapts(n) for n in ("head.bias", "encoder.layers.1.output.dense.weight",
    ...                      "encoder.layers.0.output.dense.weight", "encoder.log_scale")]
    [True, True, False, False]
    """
    if not BACKBONES[config.backbone].pretrained:
        return None
    first = config.train_layers - config.adapt_layers

    def adapts(name: str) -> bool:
        layer = _LAYER.match(name)
        return name.startswith("head.") or (layer is not None and int(layer.group(1)) >= first)
    return adapts


def _classifier(encoder: nn.Module, config: PretrainConfig) -> TextClassifier:
    return TextClassifier(encoder, encoder_width(config), config.n_way)


def _gradient(kind: type[Learner], **fixed: Any) -> Recipe:
    """A recipe for a learner that adapts a classifier on top of the encoder."""
    def recipe(encoder: nn.Module, c: PretrainConfig) -> Learner:
        return kind(_classifier(encoder, c), c.inner_lr, c.inner_steps,
                    adapt_filter=adapted_parameters(c), **fixed)
    return recipe


def _protomaml(encoder: nn.Module, c: PretrainConfig) -> Learner:
    adapts = adapted_parameters(c)
    return ProtoMAML(encoder, c.inner_lr, c.inner_steps, c.first_order,
                     adapt_encoder=True if adapts is None else (c.adapt_layers > 0 and adapts))


LEARNERS.register("maml", _gradient(MAML), display="MAML")
LEARNERS.register("fomaml", _gradient(FirstOrderMAML), display="first-order MAML")
# Meta-SGD learns one step size per parameter tensor: SMLMT's per-layer rates.
LEARNERS.register("metasgd", lambda enc, c: _gradient(MetaSGD, granularity="tensor",
                                                      first_order=c.first_order)(enc, c),
                  display="Meta-SGD")
LEARNERS.register("reptile", _gradient(Reptile), display="Reptile")
LEARNERS.register("anil", lambda enc, c: ANIL(enc, nn.Linear(encoder_width(c), c.n_way),
                                              c.inner_lr, c.inner_steps, c.first_order),
                  display="ANIL")
LEARNERS.register("protonet", lambda enc, c: ProtoNet(enc), display="ProtoNet")
LEARNERS.register("protomaml", _protomaml, display="ProtoMAML")


def encoder_of(learner: Learner) -> nn.Module:
    """The part of a learner built by :func:`build_learner` that maps token ids to a vector."""
    if isinstance(learner, ProtoNet):
        return learner.encoder
    if isinstance(learner, ANIL):
        return learner.body
    if isinstance(learner, ProtoMAML):
        return learner.model
    return learner.model.encoder


def build_encoder(config: PretrainConfig, vocab_size: int, pad_id: int = 0) -> nn.Module:
    """The backbone ``config.backbone``; what it does not load is initialised from ``config.seed``."""
    torch.manual_seed(config.seed)
    return BACKBONES[config.backbone].encoder(config, vocab_size, pad_id)


def build_learner(config: PretrainConfig, vocab_size: int, pad_id: int = 0) -> Learner:
    """The learner ``config.learner`` (a :data:`LEARNERS` recipe) around :func:`build_encoder`'s.

    Learners with a classifier head get a linear head of ``n_way`` outputs.
    """
    recipe = LEARNERS[config.learner]
    return recipe(build_encoder(config, vocab_size, pad_id), config)


def build_sampler(config: PretrainConfig, data: Data) -> TaskSampler:
    """The training-task stream of ``config.tasks``; ``"hybrid"`` draws each kind half the time.

    SMLMT tasks mask words with the tokenizer's own mask token. With a
    ``source_column``, every source (a language, a domain) gets its own task
    sources, drawn as ``config.sampling`` says: uniformly, by size, or by size
    to the power ``alpha``. Tasks are :func:`~metabook.tasks.trim`-med of the
    padding no sentence in them uses.
    """
    groups: dict[str, list[int]] = {}
    for i, source in enumerate(data.sources.get("train") or [""] * len(data.texts["train"])):
        groups.setdefault(source, []).append(i)
    tokenizer = getattr(data.vocab, "tokenizer", None)  # a pretrained encoder's own
    word_vocab = data.vocab if isinstance(data.vocab, Vocab) else None
    kinds = []
    for group, rows in sorted(groups.items()):
        prefix = f"{group}/" if group else ""
        texts = [data.texts["train"][i] for i in rows]
        labels = [data.labels["train"][i] for i in rows]
        kind: list[Any] = []
        if config.tasks in ("smlmt", "hybrid"):
            kind.append(SMLMTSource(texts, word_vocab, config.n_way, config.k_shot,
                                    config.q_query, max_len=config.max_len, name=f"{prefix}smlmt",
                                    tokenizer=None if word_vocab is not None else tokenizer))
        if config.tasks in ("supervised", "hybrid"):
            kind.append(EpisodeSource(data.ids["train"][rows], labels, config.n_way,
                                      config.k_shot, config.q_query,
                                      name=f"{prefix}train-classes"))
        kinds.append(kind)
    sources = [_Trimmed(s, data.vocab.pad_id) for kind in kinds for s in kind]
    if config.sampling == "uniform":
        return UniformSampler(sources, seed=config.seed)
    return TemperatureSampler(sources, alpha=1.0 if config.sampling == "size" else config.alpha,
                              seed=config.seed)


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
