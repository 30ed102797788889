"""A run's data: a corpus split by class, tokenised, and the episodes every method is measured on.

:func:`prepare_data` turns a :class:`~metabook.config.PretrainConfig` into
:class:`Data`: it loads the corpus, removes repeated sentences, splits its
*classes* into training, validation and test classes (so test episodes ask
about classes no pretraining saw labels or text of), and encodes every
sentence with the backbone's tokenizer (a word vocabulary built from the
corpus, unless the backbone brings its own). :func:`episodes` draws the
validation and test episodes from fixed seeds, so every run and every baseline
is measured on the very same ones, and :func:`to_ids` turns them into inputs.
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from metabook import corpora
from metabook.errors import ConfigError
from metabook.evaluation import draw_episodes
from metabook.models import BACKBONES
from metabook.tasks import EpisodeSource, Task, trim
from metabook.text import Tokenizer, Vocab, words

if TYPE_CHECKING:
    from metabook.config import PretrainConfig

__all__ = ["VAL_SEED", "TEST_SEED", "Data", "prepare_data", "episodes", "to_ids"]

# Episode streams get their own seeds, apart from the training seed, so that every
# run and every baseline is measured on the very same validation and test episodes.
VAL_SEED, TEST_SEED = 1_000, 2_000


@dataclass
class Data:
    """A corpus split by class, with a tokenizer and token ids for every split.

    ``classes[split]``, ``texts[split]``, ``labels[split]`` (class names) and
    ``ids[split]`` (``(n, max_len)`` token ids) for ``split`` in
    ``"train"``, ``"val"``, ``"test"``. ``vocab`` is the tokenizer: a word
    :class:`~metabook.text.Vocab` unless the backbone brings its own.
    """

    vocab: Tokenizer
    classes: dict[str, list[str]]
    texts: dict[str, list[str]]
    labels: dict[str, list[str]]
    ids: dict[str, Tensor]
    dropped: list[str] = field(default_factory=list)

    def label_ids(self, split: str) -> Tensor:
        """The labels of ``split`` as ids into ``classes[split]``."""
        index = {c: i for i, c in enumerate(self.classes[split])}
        return torch.tensor([index[c] for c in self.labels[split]])


def prepare_data(config: PretrainConfig) -> Data:
    """Load ``config.corpus`` and split, tokenise and encode it (deterministic in the config).

    Repeated sentences are kept once (chatterbot repeats each conversation's
    opening line; a repeat in both the support and the query set would be
    memorised, not learned). Classes with fewer than ``k_shot + q_query``
    distinct sentences are dropped. A word vocabulary is built from every
    sentence without its label, as a tokenizer trained on general text would
    be; only the training classes' sentences are used for pretraining.
    """
    ds = corpora.load(config.corpus, **config.corpus_options)
    name = _corpus_name(config)
    if config.label_column not in ds.column_names:
        raise ConfigError(f"{name} has no column {config.label_column!r} for label_column; its "
                          f"columns are {ds.column_names}: set label_column to the one that "
                          f"names the classes", options=("label_column",))
    first_label: dict[str, str] = {}
    for text, label in zip(ds["text"], ds[config.label_column]):
        first_label.setdefault(text.strip(), str(label))
    by_class: dict[str, list[str]] = defaultdict(list)
    for text, label in first_label.items():
        by_class[label].append(text)
    need = config.k_shot + config.q_query
    kept = sorted(c for c, texts in by_class.items() if len(texts) >= need)
    dropped = sorted(set(by_class) - set(kept))
    held_out = config.test_classes + config.val_classes
    if len(kept) < held_out + config.n_way:
        raise ConfigError(
            f"{name} has {len(kept)} class(es) with at least K+Q={need} distinct sentences "
            f"(of {len(by_class)} in all), but test_classes + val_classes + n_way = "
            f"{held_out + config.n_way} are needed; lower those or k_shot/q_query, or use a "
            f"corpus with more classes", options=("test_classes", "val_classes", "n_way"))
    order = list(kept)
    random.Random(config.split_seed).shuffle(order)
    classes = {"test": sorted(order[: config.test_classes]),
               "val": sorted(order[config.test_classes: held_out]),
               "train": sorted(order[held_out:])}
    texts = {s: [t for c in cs for t in by_class[c]] for s, cs in classes.items()}
    labels = {s: [c for c in cs for _ in by_class[c]] for s, cs in classes.items()}
    own = BACKBONES[config.backbone].tokenizer
    vocab = (own(list(first_label)) if own is not None
             else Vocab.build([words(t) for t in first_label], min_count=config.min_count))
    ids = {s: vocab.encode_texts(texts[s], config.max_len) for s in classes}
    return Data(vocab, classes, texts, labels, ids, dropped)


def _corpus_name(config: PretrainConfig) -> str:
    """``corpus 'NAME'``, with the file it reads when the config names one (for messages)."""
    path = config.corpus_options.get("path") or config.corpus_options.get("data_files")
    return f"corpus {config.corpus!r}" + (f" ({path})" if path else "")


def episodes(data: Data, split: str, n: int, n_way: int, k_shot: int, q_query: int,
             seed: int) -> list[Task]:
    """``n`` episodes of ``split`` whose inputs are *row indices* into that split.

    Every method turns the same index episodes into its own inputs
    (:func:`to_ids` for metabook's encoders, sentence vectors for MiniLM), so
    all are measured on exactly the same examples.
    """
    rows = torch.arange(len(data.labels[split]))
    source = EpisodeSource(rows, data.labels[split], n_way, k_shot, q_query, name=split)
    return draw_episodes(source, n, seed)


def to_ids(tasks: Sequence[Task], table: Tensor, pad_id: int = 0) -> list[Task]:
    """Index episodes with their rows looked up in ``table`` (e.g. ``data.ids[split]``).

    Each task is :func:`~metabook.tasks.trim`-med of the padding its sentences do not use.
    """
    return [trim(Task(table[t.support_x], t.support_y, table[t.query_x], t.query_y, t.classes,
                      t.source, t.info), pad_id) for t in tasks]
