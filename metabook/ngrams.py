"""N-gram language models: the counting baseline every later model is measured against.

An order-``n`` model predicts each word from the ``n - 1`` words before it.
Every sentence is padded on the left with ``[BOS]`` and closed with ``[EOS]``,
so the model also predicts where a sentence ends. Counts alone give zero
probability to anything unseen, so the model is always smoothed:

- ``"add_k"``: ``P(w | h) = (c(h, w) + k) / (c(h) + k V)``;
- ``"interpolated"``: a mixture ``λ_0 / V + Σ_j λ_j P_ML(w | last j - 1 words)``
  of the uniform distribution and the maximum-likelihood estimates of every
  order up to ``n`` (Jelinek-Mercer smoothing).

``V`` is the number of outcomes a model can predict: every vocabulary entry
except ``[PAD]``, ``[MASK]`` and ``[BOS]`` (so ``[UNK]`` and ``[EOS]`` count)::

    >>> lm = NGramLM.fit([["the", "cat", "sat"], ["the", "dog", "sat"]], order=2,
    ...                  smoothing="add_k", k=1.0)
    >>> lm.num_outcomes                    # [UNK] the sat cat dog [EOS]
    6
    >>> lm.prob("cat", ["the"])            # (1 + 1) / (2 + 1 * 6)
    0.25
    >>> round(lm.perplexity([["the", "cat", "sat"]]), 3)
    3.159
    >>> first = lm.sample(torch.Generator().manual_seed(0), max_len=5)
    >>> first == lm.sample(torch.Generator().manual_seed(0), max_len=5)   # same seed, same words
    True
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Sequence

import torch
from torch import Tensor

from metabook.errors import ConfigError, CorpusError
from metabook.text import BOS, MASK, PAD, Vocab

__all__ = ["EOS", "NGramLM"]

EOS = "[EOS]"
SMOOTHINGS = ("add_k", "interpolated")

Context = tuple[int, ...]


def _check_sentences(sentences: Iterable[Sequence[str]]) -> list[list[str]]:
    out = []
    for s in sentences:
        # A string is a sequence too, and would silently be read as a list of characters.
        if isinstance(s, str):
            raise CorpusError(
                f"expected sentences as token lists, got the string {s[:40]!r}; "
                "split it first, e.g. metabook.text.words(text)")
        out.append(list(s))
    return out


def _default_lambdas(order: int) -> tuple[float, ...]:
    # A small uniform floor keeps every outcome possible; the rest is shared equally.
    floor = 0.01
    return (floor,) + (((1 - floor) / order),) * order


class NGramLM:
    """An order-``n`` language model over words, smoothed by add-k or interpolation.

    Build one with :meth:`fit`. ``vocab`` maps words to ids; a word it does not
    hold is read as ``[UNK]``.
    """

    def __init__(self, vocab: Vocab, counts: list[dict[Context, Counter[int]]], order: int,
                 smoothing: str, k: float, lambdas: tuple[float, ...]):
        self.vocab, self.order, self.smoothing = vocab, order, smoothing
        self.k, self.lambdas = k, lambdas
        self._counts = counts
        self._totals = [{h: sum(c.values()) for h, c in level.items()} for level in counts]
        self._never = frozenset({vocab.stoi[PAD], vocab.stoi[MASK], vocab.stoi[BOS]})
        self._predictable = torch.tensor([i not in self._never for i in range(len(vocab))])
        self.num_outcomes = int(self._predictable.sum())
        self._bos, self._eos = vocab.stoi[BOS], vocab.stoi[EOS]

    @classmethod
    def fit(cls, sentences: Iterable[Sequence[str]], order: int = 2, *,
            smoothing: str = "interpolated", k: float = 1.0,
            lambdas: Sequence[float] | None = None, vocab: Vocab | None = None,
            min_count: int = 1) -> "NGramLM":
        """Count the n-grams of ``sentences`` (lists of tokens) and return the model.

        ``k`` is used by ``"add_k"``; ``lambdas`` (``order + 1`` weights for the
        uniform, unigram, ..., order-``n`` estimates, summing to 1, the first one
        positive) by ``"interpolated"``. Without ``vocab`` one is built from the
        words seen at least ``min_count`` times; rarer words count as ``[UNK]``.
        ``[EOS]`` is added to the vocabulary when it is missing.

            >>> lm = NGramLM.fit([["a", "b"]], order=1, smoothing="interpolated",
            ...                  lambdas=[0.4, 0.6])
            >>> lm.prob("a")                 # 0.4 / 4 outcomes + 0.6 * 1/3
            0.3
        """
        if not isinstance(order, int) or order < 1:
            raise ConfigError(f"order must be an integer >= 1 (1 = unigram), got {order!r}")
        if smoothing not in SMOOTHINGS:
            raise ConfigError(f"smoothing must be one of {SMOOTHINGS}, got {smoothing!r}")
        if smoothing == "add_k" and not (math.isfinite(k) and k > 0):
            raise ConfigError(f"add-k smoothing needs a finite k > 0, got k={k!r}")
        weights = _default_lambdas(order) if lambdas is None else tuple(float(x) for x in lambdas)
        if smoothing == "interpolated":
            if len(weights) != order + 1:
                raise ConfigError(f"an order-{order} model needs {order + 1} lambdas "
                                  f"(uniform, then orders 1..{order}), got {len(weights)}")
            if min(weights) < 0 or not math.isclose(sum(weights), 1.0, abs_tol=1e-6):
                raise ConfigError(f"lambdas must be >= 0 and sum to 1, got {list(weights)}")
            if weights[0] <= 0:
                raise ConfigError("lambdas[0], the weight of the uniform distribution, must be > 0 "
                                  "so that words never seen in a context keep some probability")
        if not isinstance(min_count, int) or min_count < 1:
            raise ConfigError(f"min_count must be an integer >= 1, got {min_count!r}")

        sents = _check_sentences(sentences)
        if not any(sents):
            raise CorpusError("cannot fit an n-gram model without any words: pass some sentences")
        if vocab is None:
            vocab = Vocab.build(sents, min_count=min_count)
        if EOS not in vocab:
            vocab = Vocab(vocab.itos + [EOS])

        # counts[j][h][w]: how often word w followed the j-word context h.
        counts: list[dict[Context, Counter[int]]] = [{} for _ in range(order)]
        bos, eos = vocab.stoi[BOS], vocab.stoi[EOS]
        for s in sents:
            ids = [bos] * (order - 1) + vocab.encode(s) + [eos]
            for i in range(order - 1, len(ids)):
                for j in range(order):
                    h = tuple(ids[i - j:i])
                    counts[j].setdefault(h, Counter())[ids[i]] += 1
        return cls(vocab, counts, order, smoothing, k, weights)

    def _context(self, context: Sequence[str]) -> Context:
        ids = self.vocab.encode(list(context)[-(self.order - 1):] if self.order > 1 else [])
        return tuple([self._bos] * (self.order - 1 - len(ids)) + ids)

    def _components(self, h: Context) -> list[tuple[float, Counter[int], int]]:
        """``(weight, counts, total)`` of every estimate with a seen context, weights renormalised.

        For add-k there is one component, the full context's counts (possibly empty).
        For interpolation, an order whose context never occurred in training has no
        estimate; its weight moves to the others, so the mixture still sums to one.
        """
        if self.smoothing == "add_k":
            h_counts = self._counts[-1].get(h, Counter())
            return [(1.0, h_counts, self._totals[-1].get(h, 0))]
        seen = []
        for j in range(self.order):
            sub = h[len(h) - j:]
            if sub in self._counts[j]:
                seen.append((self.lambdas[j + 1], self._counts[j][sub], self._totals[j][sub]))
        mass = self.lambdas[0] + sum(w for w, _, _ in seen)
        return [(w / mass, c, t) for w, c, t in seen]

    @staticmethod
    def _uniform_weight(components: list[tuple[float, Counter[int], int]]) -> float:
        """The interpolation weight left for the uniform distribution after renormalising."""
        return 1.0 - sum(w for w, _, _ in components)

    def _prob_id(self, w: int, h: Context) -> float:
        """``P(w | h)`` for a word id ``w`` and a context ``h`` of ``order - 1`` ids."""
        if w in self._never:
            return 0.0
        components = self._components(h)
        if self.smoothing == "add_k":
            _, c, total = components[0]
            return (c[w] + self.k) / (total + self.k * self.num_outcomes)
        p = self._uniform_weight(components) / self.num_outcomes
        for weight, c, total in components:
            p += weight * c[w] / total
        return p

    def count(self, ngram: Sequence[str]) -> int:
        """How often the last word of ``ngram`` followed the words before it in training.

            >>> lm = NGramLM.fit([["a", "b"], ["a", "a"]])
            >>> lm.count(["a"]), lm.count(["a", "b"]), lm.count(["[BOS]", "a"])
            (3, 1, 2)
        """
        ngram = list(ngram)
        if not 1 <= len(ngram) <= self.order:
            raise ConfigError(f"an order-{self.order} model counts n-grams of length 1 to "
                              f"{self.order}, got {len(ngram)} words")
        *h, w = self.vocab.encode(ngram)
        return self._counts[len(h)].get(tuple(h), Counter())[w]

    def prob(self, word: str, context: Sequence[str] = ()) -> float:
        """``P(word | context)``; only the last ``order - 1`` words of ``context`` matter.

        A short context is padded with ``[BOS]`` (the start of a sentence).
        """
        return self._prob_id(self.vocab.stoi.get(word, self.vocab.unk_id), self._context(context))

    def distribution(self, context: Sequence[str] = ()) -> Tensor:
        """``P(· | context)`` over every vocabulary id, a float64 tensor that sums to 1.

        ``[PAD]``, ``[MASK]`` and ``[BOS]`` get probability 0.
        """
        h = self._context(context)
        components = self._components(h)
        if self.smoothing == "add_k":
            _, c, total = components[0]
            p = self._predictable.double() * self.k
            if c:
                p[list(c)] += torch.tensor(list(c.values()), dtype=torch.float64)
            return p / (total + self.k * self.num_outcomes)
        p = self._predictable.double() * (self._uniform_weight(components) / self.num_outcomes)
        for weight, c, total in components:
            p[list(c)] += weight * torch.tensor(list(c.values()), dtype=torch.float64) / total
        return p

    def token_probs(self, sentence: Sequence[str]) -> Tensor:
        """The probability of each word of ``sentence`` and of its ``[EOS]``, given what precedes it."""
        (tokens,) = _check_sentences([sentence])
        ids = [self._bos] * (self.order - 1) + self.vocab.encode(tokens) + [self._eos]
        n = self.order - 1
        return torch.tensor([self._prob_id(ids[i], tuple(ids[i - n:i])) for i in range(n, len(ids))],
                            dtype=torch.float64)

    def logprob(self, sentence: Sequence[str]) -> float:
        """Natural log-probability of ``sentence``, its ``[EOS]`` included."""
        return float(self.token_probs(sentence).log().sum())

    def perplexity(self, sentences: Iterable[Sequence[str]]) -> float:
        """``exp`` of the mean negative log-probability per predicted token (words and ``[EOS]``).

        A model that spreads its probability evenly over ``V`` outcomes has perplexity ``V``.
        """
        sents = _check_sentences(sentences)
        if not sents:
            raise CorpusError("perplexity needs at least one sentence")
        logp = torch.cat([self.token_probs(s).log() for s in sents])
        return math.exp(-float(logp.mean()))

    def sample(self, generator: torch.Generator, max_len: int = 30,
               prefix: Sequence[str] = ()) -> list[str]:
        """Draw a sentence word by word until ``[EOS]`` or ``max_len`` words; returns ``prefix`` + new words."""
        if max_len < 1:
            raise ConfigError(f"max_len must be >= 1, got {max_len}")
        out = list(prefix)
        while len(out) < max_len:
            nxt = int(torch.multinomial(self.distribution(out), 1, generator=generator))
            if nxt == self._eos:
                break
            out.append(self.vocab.itos[nxt])
        return out

    def __repr__(self) -> str:
        how = f"k={self.k}" if self.smoothing == "add_k" else f"lambdas={list(self.lambdas)}"
        return (f"NGramLM(order={self.order}, smoothing={self.smoothing!r}, {how}, "
                f"vocab={len(self.vocab)} words)")
