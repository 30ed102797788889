"""ngram_features: hashed character n-grams, the same in every run, log-scaled, unit length."""
from __future__ import annotations

import math
import zlib

import pytest
import torch

from metabook.errors import ConfigError
from metabook.features import ngram_features


def test_counts_the_character_ngrams_of_the_padded_lower_cased_text():
    x = ngram_features(["Ab"], orders=(1, 2), dim=10_007)
    # " ab ": unigrams ' ', 'a', 'b', ' ' and bigrams ' a', 'ab', 'b '
    counts = torch.zeros(10_007)
    for gram in [" ", "a", "b", " ", " a", "ab", "b "]:
        counts[zlib.crc32(gram.encode()) % 10_007] += 1
    expected = counts.log1p() / counts.log1p().norm()
    assert torch.allclose(x[0], expected)
    assert x[0][zlib.crc32(b" ") % 10_007] > x[0][zlib.crc32(b"a") % 10_007]  # two spaces


def test_the_same_buckets_in_every_process():
    # crc32, unlike hash(), does not change with PYTHONHASHSEED
    x = ngram_features(["meta-learning"], dim=64)
    assert x.shape == (1, 64)
    assert int(x[0].argmax()) == int(ngram_features(["META-LEARNING"], dim=64)[0].argmax())


def test_rows_have_unit_length_and_an_empty_text_is_zeros():
    x = ngram_features(["a dog", "", "the cat sat on the mat"], orders=(3,), dim=32)
    assert torch.allclose(x[[0, 2]].norm(dim=1), torch.ones(2))
    assert torch.equal(x[1], torch.zeros(32))  # "  " has no 3-gram


def test_idf_weights_rare_ngrams_up():
    texts = ["aaa", "aaa b", "aaa c"]
    plain, weighted = ngram_features(texts, orders=(1,), dim=997), ngram_features(
        texts, orders=(1,), dim=997, idf=True)
    a, b = zlib.crc32(b"a") % 997, zlib.crc32(b"b") % 997
    # 'b' is in one text of three, 'a' in all: idf 1 + log(4/2) against 1 + log(4/4)
    ratio = (weighted[1, b] / weighted[1, a]) / (plain[1, b] / plain[1, a])
    assert math.isclose(float(ratio), 1 + math.log(2), rel_tol=1e-5)


@pytest.mark.parametrize("kwargs", [{"dim": 0}, {"orders": ()}, {"orders": (0, 1)}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ConfigError, match="ngram_features"):
        ngram_features(["x"], **kwargs)
