"""Words and vocabularies: the small text utilities every chapter shares.

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
from typing import Iterable, Sequence

import regex

from metabook.errors import CorpusError

__all__ = ["words", "is_word", "Vocab", "PAD", "UNK", "MASK", "BOS"]

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

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Ids of ``tokens``; unknown words map to ``[UNK]``."""
        unk = self.unk_id
        return [self.stoi.get(t, unk) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words for ``ids``."""
        return [self.itos[i] for i in ids]
