"""Words and vocabularies: the small text utilities every chapter shares.

A run's tokenizer is anything that follows :class:`Tokenizer`; :class:`Vocab`,
a table of whole words, is the one metabook builds from a corpus, and
:class:`metabook.tokenization.SubwordTokenizer` wraps a Hugging Face one.

    >>> words("Meta-learning isn't magic.")
    ['meta', '-', 'learning', "isn't", 'magic', '.']
    >>> vocab = Vocab.build([["a", "b", "a"]], min_count=1)
    >>> vocab.encode(["a", "zzz"])
    [4, 1]
    >>> vocab.decode([4, 1])
    ['a', '[UNK]']
"""
from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Protocol, Sequence, runtime_checkable

import regex
import torch
from torch import Tensor

from metabook.errors import CorpusError

__all__ = ["words", "is_word", "pad_batch", "Tokenizer", "Vocab", "PAD", "UNK", "MASK", "BOS",
           "SPECIALS"]

PAD, UNK, MASK, BOS = "[PAD]", "[UNK]", "[MASK]", "[BOS]"
SPECIALS = (PAD, UNK, MASK, BOS)

# A word is a letter followed by letters and combining marks of any script (the vowel
# signs of Devanagari or Tamil are marks, not letters), keeping inner apostrophes
# ("isn't"); digits group; any other non-space character stands alone.
_WORD = regex.compile(r"\p{L}[\p{L}\p{M}]*(?:['’]\p{L}[\p{L}\p{M}]*)*|\p{Nd}+|[^\p{L}\p{M}\p{Nd}\s]")


def words(text: str, lower: bool = True) -> list[str]:
    """Split ``text`` into word and punctuation tokens (lower-cased unless ``lower=False``)."""
    if lower:
        text = text.lower()
    return _WORD.findall(text)


def is_word(token: str) -> bool:
    """Whether ``token`` is made of letters and combining marks only, starting with a letter.

    >>> is_word("नमस्ते"), is_word("don't"), is_word("42"), is_word("-")
    (True, False, False, False)
    """
    return (bool(token) and unicodedata.category(token[0]).startswith("L")
            and all(unicodedata.category(c)[0] in "LM" for c in token))


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int = 0,
              length: int | None = None) -> Tensor:
    """Stack id sequences into a ``(batch, length)`` long tensor, padded (or cut) to ``length``.

    >>> pad_batch([[5, 6, 7], [8]], pad_id=0).tolist()
    [[5, 6, 7], [8, 0, 0]]
    """
    length = length or max((len(s) for s in sequences), default=1)
    out = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    for i, seq in enumerate(sequences):
        seq = list(seq)[:length]
        out[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return out


@runtime_checkable
class Tokenizer(Protocol):
    """What a run needs of a tokenizer: ids for texts, the special ids, a size, and its tokens.

    ``itos[i]`` is the token of id ``i`` (a run stores it, to check that it is
    read back with the tokens it was trained with).
    """

    itos: list[str]

    @property
    def pad_id(self) -> int: ...

    @property
    def mask_id(self) -> int: ...

    @property
    def special_ids(self) -> list[int]: ...

    def __len__(self) -> int: ...

    def encode_texts(self, texts: Sequence[str], max_len: int) -> Tensor: ...


@dataclass
class Vocab:
    """A word-to-id table; ids 0-3 are ``[PAD] [UNK] [MASK] [BOS]``."""

    itos: list[str] = field(default_factory=lambda: list(SPECIALS))

    def __post_init__(self) -> None:
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], min_count: int = 1,
              max_size: int | None = None) -> "Vocab":
        """Keep words seen at least ``min_count`` times, most frequent first."""
        counts = Counter(w for s in sentences for w in s)
        if not counts:
            raise CorpusError("cannot build a vocabulary from an empty corpus: pass some sentences")
        kept = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                if c >= min_count and w not in SPECIALS]
        if max_size is not None:
            kept = kept[: max(0, max_size - len(SPECIALS))]
        return cls(list(SPECIALS) + kept)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    @property
    def pad_id(self) -> int:
        return self.stoi[PAD]

    @property
    def unk_id(self) -> int:
        return self.stoi[UNK]

    @property
    def mask_id(self) -> int:
        return self.stoi[MASK]

    @property
    def special_ids(self) -> list[int]:
        """The ids of ``[PAD] [UNK] [MASK] [BOS]``: never masked, never a random replacement."""
        return [self.stoi[t] for t in SPECIALS]

    def encode_texts(self, texts: Sequence[str], max_len: int) -> Tensor:
        """Token ids ``(len(texts), max_len)`` of ``texts``: words, cut to ``max_len``, padded.

        >>> vocab = Vocab.build([["hello", "world"]])
        >>> vocab.encode_texts(["Hello, world!"], 4).tolist()
        [[4, 1, 5, 1]]
        """
        return pad_batch([self.encode(words(t)) for t in texts], self.pad_id, max_len)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Ids of ``tokens``; unknown words map to ``[UNK]``."""
        unk = self.unk_id
        return [self.stoi.get(t, unk) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words for ``ids``."""
        return [self.itos[i] for i in ids]
