"""N-gram language models: normalisation, hand-computed probabilities, perplexity, sampling."""
from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from metabook.errors import ConfigError, CorpusError
from metabook.ngrams import EOS, NGramLM
from metabook.text import BOS, MASK, PAD, Vocab, words

CORPUS = [words(s) for s in [
    "the cat sat on the mat.",
    "the dog sat on the log.",
    "a cat saw a dog.",
    "the dog saw the cat on the mat.",
]]
HELD_OUT = [words("the cat sat on the log."), words("a bird sang.")]


def _models() -> list[NGramLM]:
    return [
        NGramLM.fit(CORPUS, order=1, smoothing="add_k", k=1.0),
        NGramLM.fit(CORPUS, order=2, smoothing="add_k", k=0.1),
        NGramLM.fit(CORPUS, order=3, smoothing="add_k", k=0.5),
        NGramLM.fit(CORPUS, order=1),
        NGramLM.fit(CORPUS, order=2),
        NGramLM.fit(CORPUS, order=3, lambdas=[0.1, 0.2, 0.3, 0.4]),
    ]


@pytest.mark.parametrize("lm", _models(), ids=repr)
@pytest.mark.parametrize("context", [[], ["the"], ["on", "the"], ["bird", "zebra"], ["dog", "."]])
def test_distribution_sums_to_one_and_matches_prob(lm: NGramLM, context: list[str]):
    p = lm.distribution(context)
    assert p.shape == (len(lm.vocab),)
    assert math.isclose(float(p.sum()), 1.0, abs_tol=1e-12)
    for never in (PAD, MASK, BOS):
        assert p[lm.vocab.stoi[never]] == 0
    assert (p[lm._predictable] > 0).all()
    for word in ("the", "cat", EOS, "[UNK]", "."):
        assert math.isclose(lm.prob(word, context), float(p[lm.vocab.stoi[word]]), rel_tol=1e-12)


def test_outcomes_are_vocabulary_minus_pad_mask_bos():
    lm = NGramLM.fit(CORPUS)
    distinct = {w for s in CORPUS for w in s}
    assert lm.num_outcomes == len(distinct) + 2  # + [UNK] + [EOS]
    assert EOS in lm.vocab


def test_add_k_matches_hand_computation():
    lm = NGramLM.fit(CORPUS, order=2, smoothing="add_k", k=0.5)
    v = lm.num_outcomes
    # "the" occurs 7 times as a context word and is followed by "cat" twice.
    assert lm.count(["the"]) == 7 and lm.count(["the", "cat"]) == 2
    assert math.isclose(lm.prob("cat", ["the"]), (2 + 0.5) / (7 + 0.5 * v))
    # A context never seen in training is spread evenly.
    assert math.isclose(lm.prob("cat", ["bird"]), 1 / v)


def test_interpolation_matches_hand_computation():
    lam = [0.1, 0.3, 0.6]
    lm = NGramLM.fit(CORPUS, order=2, lambdas=lam)
    v = lm.num_outcomes
    n_tokens = sum(len(s) + 1 for s in CORPUS)
    p_uni = lm.count(["cat"]) / n_tokens
    p_bi = lm.count(["the", "cat"]) / 7
    assert math.isclose(lm.prob("cat", ["the"]), lam[0] / v + lam[1] * p_uni + lam[2] * p_bi)
    # An unseen context drops the bigram estimate and renormalises the other two weights.
    expected = (lam[0] / v + lam[1] * p_uni) / (lam[0] + lam[1])
    assert math.isclose(lm.prob("cat", ["zebra"]), expected)


def test_unknown_words_are_unk():
    lm = NGramLM.fit(CORPUS, order=2)
    assert lm.prob("zebra", ["the"]) == lm.prob("[UNK]", ["the"])
    assert lm.prob("cat", ["zebra"]) == lm.prob("cat", ["[UNK]"])


def test_min_count_sends_rare_words_to_unk():
    lm = NGramLM.fit(CORPUS, order=1, min_count=2)
    assert "saw" in lm.vocab and "log" not in lm.vocab
    counts = Counter(w for s in CORPUS for w in s)
    assert lm.count(["[UNK]"]) == sum(c for c in counts.values() if c < 2)


def test_uniform_model_has_perplexity_equal_to_outcome_count():
    lm = NGramLM.fit(CORPUS, order=2, lambdas=[1.0, 0.0, 0.0])
    assert math.isclose(lm.perplexity(HELD_OUT), lm.num_outcomes, rel_tol=1e-12)
    # Add-k with a huge k forgets the counts and tends to the same uniform model.
    flat = NGramLM.fit(CORPUS, order=2, smoothing="add_k", k=1e9)
    assert math.isclose(flat.perplexity(HELD_OUT), flat.num_outcomes, rel_tol=1e-6)


def test_perplexity_is_exp_of_mean_negative_log_probability():
    lm = NGramLM.fit(CORPUS, order=3)
    logps = [math.log(lm.prob(w, s[:i])) for s in HELD_OUT for i, w in enumerate(s + [EOS])]
    assert math.isclose(lm.perplexity(HELD_OUT), math.exp(-sum(logps) / len(logps)), rel_tol=1e-9)
    assert math.isclose(sum(lm.logprob(s) for s in HELD_OUT), sum(logps), rel_tol=1e-9)
    assert len(lm.token_probs(HELD_OUT[0])) == len(HELD_OUT[0]) + 1


def test_training_text_is_less_surprising_than_new_text():
    lm = NGramLM.fit(CORPUS, order=2)
    assert lm.perplexity(CORPUS) < lm.perplexity([words("colorless green ideas sleep furiously")])


def test_sample_is_seeded_and_follows_the_counts():
    lm = NGramLM.fit(CORPUS, order=2, smoothing="add_k", k=0.1)
    a = lm.sample(torch.Generator().manual_seed(3))
    assert a == lm.sample(torch.Generator().manual_seed(3))
    draws = {tuple(lm.sample(torch.Generator().manual_seed(s))) for s in range(20)}
    assert len(draws) > 1
    assert all(w in lm.vocab for d in draws for w in d)
    # With nearly all weight on the trigram estimate, a one-sentence corpus is reproduced.
    parrot = NGramLM.fit([["to", "be", "or", "not"]], order=3, lambdas=[1e-12, 0, 0, 1 - 1e-12])
    assert parrot.sample(torch.Generator().manual_seed(0)) == ["to", "be", "or", "not"]
    assert parrot.sample(torch.Generator().manual_seed(0), prefix=["be"]) == ["be", "or", "not"]
    assert len(lm.sample(torch.Generator().manual_seed(0), max_len=2)) <= 2


def test_given_vocabulary_is_kept_and_extended_with_eos():
    vocab = Vocab.build(CORPUS)
    lm = NGramLM.fit(CORPUS[:1], vocab=vocab)
    assert lm.vocab.itos[: len(vocab)] == vocab.itos and lm.vocab.itos[-1] == EOS
    assert lm.prob("dog", ["the"]) > 0  # in the vocabulary though not in this corpus


@pytest.mark.parametrize("kwargs, message", [
    (dict(order=0), "order"),
    (dict(order=2.0), "order"),
    (dict(smoothing="kneser_ney"), "smoothing"),
    (dict(smoothing="add_k", k=0.0), "k > 0"),
    (dict(smoothing="add_k", k=float("inf")), "k > 0"),
    (dict(lambdas=[0.5, 0.5]), "3 lambdas"),
    (dict(lambdas=[0.2, 0.2, 0.2]), "sum to 1"),
    (dict(lambdas=[0.5, 0.7, -0.2]), ">= 0"),
    (dict(lambdas=[0.0, 0.5, 0.5]), "uniform"),
    (dict(min_count=0), "min_count"),
])
def test_bad_settings_are_rejected(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        NGramLM.fit(CORPUS, **kwargs)


def test_bad_corpora_are_rejected():
    with pytest.raises(CorpusError, match="token lists"):
        NGramLM.fit(["the cat sat"])
    with pytest.raises(CorpusError, match="without any words"):
        NGramLM.fit([[], []])
    lm = NGramLM.fit(CORPUS)
    with pytest.raises(CorpusError, match="at least one sentence"):
        lm.perplexity([])
    with pytest.raises(CorpusError, match="token lists"):
        lm.perplexity(["the cat"])
    with pytest.raises(ConfigError, match="length 1 to 2"):
        lm.count(["a", "b", "c"])
    with pytest.raises(ConfigError, match="max_len"):
        lm.sample(torch.Generator(), max_len=0)
