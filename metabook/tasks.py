"""Tasks, and the sources that build them.

A :class:`Task` is a support set to adapt on and a query set to measure on,
plus what the task *is* (its language, domain or user). A task source draws
tasks from data:

- :class:`EpisodeSource` makes N-way K-shot episodes from any labelled
  collection (two lists, or a ``datasets.Dataset``);
- :class:`SMLMTSource` makes self-supervised tasks from raw sentences in the
  style of Bansal et al. (2020): choose N words, mask them out of sentences
  that contain them, and ask which word was masked.

Both are seeded through an explicit ``torch.Generator``, so the same seed gives
the same tasks::

    >>> import torch
    >>> src = EpisodeSource(torch.arange(40.).view(20, 2), [i % 4 for i in range(20)],
    ...                     n_way=3, k_shot=2, q_query=2, name="toy")
    >>> task = src.sample(torch.Generator().manual_seed(0))
    >>> task.support_x.shape, task.query_y.tolist()
    (torch.Size([6, 2]), [0, 0, 1, 1, 2, 2])
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Protocol, Sequence, runtime_checkable

import regex
import torch
from torch import Tensor

from metabook.errors import TaskError
from metabook.text import MASK, Vocab, is_word, pad_batch, words

__all__ = ["Task", "TaskSource", "EpisodeSource", "SMLMTSource", "trim_padding", "trim"]


@dataclass(frozen=True)
class Task:
    """One task: ``support`` to adapt on, ``query`` to measure on.

    Labels run from 0 to ``n_way - 1``; ``classes[i]`` names label ``i``.
    ``info`` says what the task is, e.g. ``{"language": "yoruba"}``.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    classes: tuple[Hashable, ...] = ()
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_way(self) -> int:
        return len(self.classes) if self.classes else int(self.support_y.max()) + 1

    @property
    def support(self) -> tuple[Tensor, Tensor]:
        return self.support_x, self.support_y

    @property
    def query(self) -> tuple[Tensor, Tensor]:
        return self.query_x, self.query_y

    def to(self, device: torch.device | str) -> "Task":
        """A copy with every tensor on ``device``."""
        return Task(self.support_x.to(device), self.support_y.to(device), self.query_x.to(device),
                    self.query_y.to(device), self.classes, self.source, self.info)


@runtime_checkable
class TaskSource(Protocol):
    """Anything that draws tasks: a ``name``, a size, and ``sample(generator)``."""

    name: str

    def __len__(self) -> int: ...

    def sample(self, generator: torch.Generator) -> Task: ...


def trim_padding(ids: Tensor, pad_id: int = 0) -> Tensor:
    """``ids`` without the trailing columns that are padding in every row.

    Padding is masked out of attention and pooling, so an encoder's outputs do
    not change; the work shrinks with the longest sentence instead of ``max_len``.

    >>> trim_padding(torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0]])).tolist()
    [[5, 6], [7, 0]]
    """
    used = (ids != pad_id).any(0).nonzero()
    return ids[:, : int(used.max()) + 1 if len(used) else 1]


def trim(task: Task, pad_id: int = 0) -> Task:
    """``task`` with support and query cut to the longest sentence in it (see :func:`trim_padding`).

    >>> t = Task(torch.tensor([[5, 0, 0]]), torch.tensor([0]), torch.tensor([[6, 7, 0]]),
    ...          torch.tensor([0]))
    >>> trim(t).support_x.tolist(), trim(t).query_x.tolist()
    ([[5, 0]], [[6, 7]])
    """
    length = trim_padding(torch.cat([task.support_x, task.query_x]), pad_id).shape[1]
    return Task(task.support_x[:, :length], task.support_y, task.query_x[:, :length],
                task.query_y, task.classes, task.source, task.info)


def _choose(n: int, k: int, generator: torch.Generator) -> list[int]:
    return torch.randperm(n, generator=generator)[:k].tolist()


class EpisodeSource:
    """N-way K-shot episodes drawn from a labelled collection.

    ``inputs`` is a tensor (indexed along its first dimension) or any sequence,
    which ``encode`` turns into a tensor (for texts, a tokenizer). Each episode
    draws ``n_way`` classes, then ``k_shot`` support and ``q_query`` query
    examples of each, without overlap.
    """

    def __init__(self, inputs: Tensor | Sequence[Any], labels: Sequence[Hashable], n_way: int,
                 k_shot: int, q_query: int, encode: Callable[[list[Any]], Tensor] | None = None,
                 name: str = "episodes", info: dict[str, Any] | None = None):
        if len(inputs) != len(labels):
            raise TaskError(f"source {name!r}: {len(inputs)} inputs but {len(labels)} labels")
        if len(inputs) == 0:
            raise TaskError(f"source {name!r} is empty: give it at least one labelled example")
        if min(n_way, k_shot) < 1 or q_query < 0:
            raise TaskError(f"source {name!r}: need n_way >= 1, k_shot >= 1, q_query >= 0; "
                            f"got N={n_way}, K={k_shot}, Q={q_query}")
        by_class: dict[Hashable, list[int]] = defaultdict(list)
        for i, y in enumerate(labels):
            by_class[y].append(i)
        need = k_shot + q_query
        self.classes = sorted((c for c, idx in by_class.items() if len(idx) >= need), key=str)
        if len(by_class) < n_way:
            raise TaskError(f"source {name!r} has {len(by_class)} classes but N={n_way} were asked "
                            f"for; lower n_way to at most {len(by_class)}")
        if len(self.classes) < n_way:
            largest = max(len(idx) for idx in by_class.values())
            raise TaskError(
                f"source {name!r}: only {len(self.classes)} of its {len(by_class)} classes have "
                f"K+Q={k_shot}+{q_query}={need} examples, fewer than N={n_way} (the largest class "
                f"has {largest}); lower k_shot or q_query, or lower n_way")
        self.inputs, self.by_class = inputs, dict(by_class)
        self.n_way, self.k_shot, self.q_query = n_way, k_shot, q_query
        self.encode, self.name, self.info = encode, name, dict(info or {})
        self._size = len(labels)

    @classmethod
    def from_dataset(cls, dataset: Any, n_way: int, k_shot: int, q_query: int,
                     text_column: str = "text", label_column: str = "label",
                     **kwargs: Any) -> "EpisodeSource":
        """Episodes from a ``datasets.Dataset`` (or any mapping of columns)."""
        return cls(list(dataset[text_column]), list(dataset[label_column]), n_way, k_shot,
                   q_query, **kwargs)

    def __len__(self) -> int:
        return self._size

    def _gather(self, index: list[int]) -> Tensor:
        if isinstance(self.inputs, Tensor):
            return self.inputs[torch.as_tensor(index)]
        items = [self.inputs[i] for i in index]
        if self.encode is None:
            return torch.stack([torch.as_tensor(x) for x in items])
        return self.encode(items)

    def sample(self, generator: torch.Generator) -> Task:
        """Draw one episode; labels are the positions of the drawn classes."""
        chosen = [self.classes[i] for i in _choose(len(self.classes), self.n_way, generator)]
        support, query, sy, qy = [], [], [], []
        for label, cls_ in enumerate(chosen):
            pool = self.by_class[cls_]
            picked = [pool[i] for i in _choose(len(pool), self.k_shot + self.q_query, generator)]
            support += picked[: self.k_shot]
            query += picked[self.k_shot:]
            sy += [label] * self.k_shot
            qy += [label] * self.q_query
        return Task(self._gather(support), torch.tensor(sy), self._gather(query) if query else
                    self._gather(support)[:0], torch.tensor(qy, dtype=torch.long),
                    tuple(chosen), self.name, self.info)


class SMLMTSource:
    """Self-supervised tasks from raw sentences (subset masked LM tasks, SMLMT).

    A task picks ``n_way`` words that each occur in at least ``k_shot + q_query``
    sentences, takes that many sentences for each word, replaces every
    occurrence of the word with ``[MASK]``, and labels each sentence with the
    position of its word among the chosen ones (Bansal et al., 2020).

    Words are found with :func:`metabook.text.words`. The masked sentences are
    encoded with ``vocab`` (metabook's word vocabulary), or with ``tokenizer``
    (a Hugging Face tokenizer, for a pretrained encoder), which masks with its
    own mask token, into ``(batch, max_len)`` id tensors::

        >>> from metabook.text import Vocab
        >>> text = ["one cat sat", "a cat ran", "one dog sat", "a dog ran"]
        >>> src = SMLMTSource(text, Vocab.build([words(t) for t in text]), 2, 1, 1, max_len=4)
        >>> src.words
        ['cat', 'dog', 'one', 'ran', 'sat']
        >>> task = src.sample(torch.Generator().manual_seed(0))
        >>> label = task.support_y[0]
        >>> task.classes[label], src.vocab.decode(task.support_x[0].tolist())
        ('sat', ['one', 'dog', '[MASK]', '[PAD]'])
    """

    def __init__(self, sentences: Iterable[str | Sequence[str]], vocab: Vocab | None, n_way: int,
                 k_shot: int, q_query: int, max_len: int = 32, min_word_length: int = 3,
                 name: str = "smlmt", info: dict[str, Any] | None = None,
                 tokenizer: Any = None):
        if (vocab is None) == (tokenizer is None):
            raise TaskError(f"source {name!r} needs a vocab or a tokenizer, not both or neither")
        if tokenizer is not None and getattr(tokenizer, "mask_token", None) is None:
            raise TaskError(f"source {name!r}: the tokenizer has no mask token, so SMLMT tasks "
                            f"cannot be built with it; use a masked-language model's tokenizer")
        sentences = list(sentences)
        if tokenizer is not None and not all(isinstance(s, str) for s in sentences):
            raise TaskError(f"source {name!r}: with a tokenizer, give the sentences as strings")
        keep = [i for i, s in enumerate(sentences) if (words(s) if isinstance(s, str) else s)]
        texts = [sentences[i] for i in keep]
        tokenised = [words(s) if isinstance(s, str) else list(s) for s in texts]
        if not tokenised:
            raise TaskError(f"source {name!r} has no non-empty sentences to build tasks from")
        need = k_shot + q_query
        where: dict[str, list[int]] = defaultdict(list)
        for i, toks in enumerate(tokenised):
            for w in set(toks):
                if (len(w) >= min_word_length and is_word(w)
                        and (vocab is None or w in vocab)):
                    where[w].append(i)
        self.words = sorted(w for w, idx in where.items() if len(idx) >= need)
        if len(self.words) < n_way:
            raise TaskError(
                f"source {name!r}: only {len(self.words)} words occur in K+Q={need} sentences, "
                f"fewer than N={n_way}; give it more sentences or lower n_way, k_shot or q_query")
        self.sentences, self.texts = tokenised, texts
        self.where = {w: where[w] for w in self.words}
        self.vocab, self.tokenizer, self.max_len = vocab, tokenizer, max_len
        self.n_way, self.k_shot, self.q_query = n_way, k_shot, q_query
        self.name, self.info = name, dict(info or {})

    def __len__(self) -> int:
        return len(self.sentences)

    @property
    def pad_id(self) -> int:
        return self.vocab.pad_id if self.vocab is not None else self.tokenizer.pad_token_id

    def _masked(self, index: int, word: str) -> list[int]:
        if self.tokenizer is not None:
            return self._masked_subwords(index, word)
        tokens = self.sentences[index]
        # A long sentence is cut to a window around the word, so the mask is always seen.
        start = max(0, min(tokens.index(word) - self.max_len // 2, len(tokens) - self.max_len))
        window = tokens[start: start + self.max_len]
        return self.vocab.encode([MASK if t == word else t for t in window])

    def _masked_subwords(self, index: int, word: str) -> list[int]:
        tok = self.tokenizer
        # Every occurrence of the word, in any case, in the sentence as written.
        pattern = regex.compile(rf"(?<![\p{{L}}\p{{M}}\p{{Nd}}]){regex.escape(word)}"
                                rf"(?![\p{{L}}\p{{M}}])", regex.IGNORECASE)
        ids = tok(pattern.sub(tok.mask_token, self.texts[index]))["input_ids"]
        if len(ids) <= self.max_len:
            return ids
        # Too long: a window around the first mask, between the tokenizer's own end markers.
        first, last = ids[:1], ids[-1:]
        body = ids[1:-1]
        width = self.max_len - 2
        at = body.index(tok.mask_token_id) if tok.mask_token_id in body else 0
        start = max(0, min(at - width // 2, len(body) - width))
        return first + body[start: start + width] + last

    def sample(self, generator: torch.Generator) -> Task:
        """Draw one SMLMT task; ``classes`` are the masked words."""
        chosen = [self.words[i] for i in _choose(len(self.words), self.n_way, generator)]
        support, query, sy, qy = [], [], [], []
        for label, word in enumerate(chosen):
            pool = self.where[word]
            picked = [pool[i] for i in _choose(len(pool), self.k_shot + self.q_query, generator)]
            support += [self._masked(i, word) for i in picked[: self.k_shot]]
            query += [self._masked(i, word) for i in picked[self.k_shot:]]
            sy += [label] * self.k_shot
            qy += [label] * self.q_query
        return Task(pad_batch(support, self.pad_id, self.max_len), torch.tensor(sy),
                    pad_batch(query, self.pad_id, self.max_len), torch.tensor(qy, dtype=torch.long),
                    tuple(chosen), self.name, self.info)
