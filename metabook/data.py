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
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from metabook import corpora
from metabook.errors import ConfigError, CorpusError
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
    ``sources["train"]`` names each training sentence's task source (the
    config's ``source_column``; empty when there is none).
    """

    vocab: Tokenizer
    classes: dict[str, list[str]]
    texts: dict[str, list[str]]
    labels: dict[str, list[str]]
    ids: dict[str, Tensor]
    dropped: list[str] = field(default_factory=list)
    sources: dict[str, list[str]] = field(default_factory=dict)

    def label_ids(self, split: str) -> Tensor:
        """The labels of ``split`` as ids into ``classes[split]``."""
        index = {c: i for i, c in enumerate(self.classes[split])}
        return torch.tensor([index[c] for c in self.labels[split]])


#: One corpus read by class: ``{class: [(text, source), ...]}``, each text once.
_ByClass = dict[str, list[tuple[str, str]]]


def prepare_data(config: PretrainConfig) -> Data:
    """Load the config's corpora and split, tokenise and encode them (deterministic in the config).

    Repeated sentences are kept once (chatterbot repeats each conversation's
    opening line; a repeat in both the support and the query set would be
    memorised, not learned), and a sentence of the training classes never
    reappears in a validation or test class. Classes with fewer than
    ``k_shot + q_query`` distinct sentences are dropped; ``max_per_class`` keeps
    a seeded sample of the larger ones. Validation and test classes are held out
    of ``corpus``, unless ``val_corpus`` or ``test_corpus`` name another corpus
    (a new domain or language) whose classes are then used whole. A word
    vocabulary is built from every sentence without its label, as a tokenizer
    trained on general text would be, unless the backbone brings its own
    tokenizer; only the training classes' sentences are used for pretraining.
    """
    main = _read(config.corpus, config.corpus_options, config.label_column, "",
                 config.source_column)
    need = config.k_shot + config.q_query
    kept = sorted(c for c, rows in main.items() if len(rows) >= need)
    dropped = sorted(set(main) - set(kept))
    n_test = 0 if config.test_corpus else config.test_classes
    n_val = 0 if config.val_corpus else config.val_classes
    if len(kept) < n_test + n_val + config.n_way:
        held = [k for k, n in (("test_classes", n_test), ("val_classes", n_val)) if n]
        raise ConfigError(
            f"{_corpus_name(config.corpus, config.corpus_options)} has {len(kept)} class(es) with "
            f"at least K+Q={need} distinct sentences (of {len(main)} in all), but "
            f"{' + '.join(held + ['n_way'])} = {n_test + n_val + config.n_way} are needed; lower "
            f"those or k_shot/q_query, or use a corpus with more classes",
            options=("test_classes", "val_classes", "n_way"))
    order = list(kept)
    random.Random(config.split_seed).shuffle(order)
    split = {"test": {c: main[c] for c in order[:n_test]},
             "val": {c: main[c] for c in order[n_test: n_test + n_val]},
             "train": {c: main[c] for c in order[n_test + n_val:]}}
    for name in ("val", "test"):
        corpus = getattr(config, f"{name}_corpus")
        if corpus:
            column = getattr(config, f"{name}_label_column") or config.label_column
            split[name] = _read(corpus, getattr(config, f"{name}_corpus_options"), column,
                                f"{name}_", "")
            shared = sorted(set(split[name]) & set(split["train"]))
            if shared:
                warnings.warn(
                    f"{len(shared)} of the {len(split[name])} {name} classes of {name}_corpus "
                    f"are training classes too ({', '.join(map(repr, shared[:3]))}"
                    f"{', ...' if len(shared) > 3 else ''}): the {name} episodes measure "
                    f"transfer to another corpus on classes training saw, not learning new "
                    f"classes; for new classes, leave {name}_corpus out ({name}_classes are "
                    f"then held out of corpus)", UserWarning, stacklevel=2)
    # No sentence twice: not in two held-out splits, and never one that training sees.
    seen = {t for rows in split["train"].values() for t, _ in rows}
    for name in ("test", "val"):
        split[name] = {c: [r for r in rows if r[0] not in seen] for c, rows in split[name].items()}
        seen |= {t for rows in split[name].values() for t, _ in rows}
    for name in ("val", "test"):
        usable = {c: rows for c, rows in sorted(split[name].items()) if len(rows) >= need}
        dropped += sorted(f"{c} ({name})" for c in set(split[name]) - set(usable))
        if len(usable) < config.n_way:
            raise ConfigError(f"the {name} split has {len(usable)} class(es) with at least "
                              f"K+Q={need} distinct sentences, fewer than n_way={config.n_way}; "
                              f"lower n_way, k_shot or q_query, or give it more classes",
                              options=(f"{name}_classes", "n_way"))
        split[name] = usable
    rng = random.Random(config.split_seed)
    for name in ("train", "val", "test"):
        split[name] = {c: _capped(rows, config.max_per_class, rng)
                       for c, rows in sorted(split[name].items())}
    classes = {s: sorted(split[s]) for s in split}
    texts = {s: [t for c in classes[s] for t, _ in split[s][c]] for s in split}
    labels = {s: [c for c in classes[s] for _ in split[s][c]] for s in split}
    sources = {s: [src for c in classes[s] for _, src in split[s][c]] for s in split}
    every = [t for s in ("train", "val", "test") for t in texts[s]]
    vocab = (BACKBONES[config.backbone].own_tokenizer(config, every)
             or Vocab.build([words(t) for t in every], min_count=config.min_count))
    ids = {s: vocab.encode_texts(texts[s], config.max_len) for s in classes}
    return Data(vocab, classes, texts, labels, ids, dropped, sources)


def _read(corpus: str, options: dict, label_column: str, role: str,
          source_column: str) -> _ByClass:
    """``corpus`` loaded and grouped by ``label_column``, each text once (with its first label).

    Rows without a label (None, empty or white space) are left out, with a warning.
    ``role`` (``""``, ``"val_"`` or ``"test_"``) is the prefix of the config keys
    that name this corpus, for messages.
    """
    name = _corpus_name(corpus, options)
    try:
        ds = corpora.load(corpus, **options)
    except CorpusError as err:
        if not role:
            raise
        raise CorpusError(f"{role}{name}: {err}") from None
    for column, key in ((label_column, f"{role}label_column"), (source_column, "source_column")):
        if column and column not in ds.column_names:
            where = (key, f"{role}corpus_options" if role else "corpus_options")
            if ds.column_names == ["text"]:  # a .txt file, say
                raise ConfigError(f"{name} has text only, no labels ({key}: {column!r}); "
                                  f"meta-pretraining needs labelled sentences: a .csv, .tsv or "
                                  f".jsonl file with a label column", options=where)
            raise ConfigError(f"{name} has no column {column!r} for {key}; its columns are "
                              f"{ds.column_names}: set {key} to one of them", options=where)
    sources = ds[source_column] if source_column else [""] * len(ds)
    first: dict[str, tuple[str, str]] = {}
    unlabelled = 0
    for text, label, source in zip(ds["text"], ds[label_column], sources):
        text = text.strip()
        if not text:
            continue
        if label is None or not str(label).strip():
            unlabelled += 1
        else:
            first.setdefault(text, (str(label), str(source)))
    if unlabelled:
        warnings.warn(f"{name}: {unlabelled} row(s) with no {label_column!r} "
                      f"({role}label_column) are left out", UserWarning, stacklevel=3)
    by_class: _ByClass = defaultdict(list)
    for text, (label, source) in first.items():
        by_class[label].append((text, source))
    return dict(by_class)


def _capped(rows: list[tuple[str, str]], cap: int, rng: random.Random) -> list[tuple[str, str]]:
    """At most ``cap`` of ``rows`` (all when ``cap`` is 0), a seeded sample in corpus order."""
    if not cap or len(rows) <= cap:
        return rows
    keep = set(rng.sample(range(len(rows)), cap))
    return [r for i, r in enumerate(rows) if i in keep]


def _corpus_name(corpus: str, options: dict) -> str:
    """``corpus 'NAME'``, with the file it reads when the options name one (for messages)."""
    path = options.get("path") or options.get("data_files")
    return f"corpus {corpus!r}" + (f" ({path})" if path else "")


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
