"""Character n-gram features: the baseline a practitioner tries first, in any script.

Every text becomes the counts of its character 1- to 3-grams (spaces included,
so word beginnings and endings count), hashed into ``dim`` buckets
(the hashing trick of Weinberger et al., 2009), log-scaled and L2-normalised; with ``idf`` the
counts are first weighted by inverse document frequency (TF-IDF). Nothing is
ever unknown, whatever the language, which is why prototypes on these features
are a strong reference for languages a pretrained encoder never saw::

    >>> X = ngram_features(["the cat sat", "the cat sat", "ein Hund"], dim=256)
    >>> X.shape, bool(torch.allclose(X[0], X[1])), round(float(X[0] @ X[2]), 2) < 0.5
    (torch.Size([3, 256]), True, True)
"""
from __future__ import annotations

import zlib
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ngram_features", "ngram_counts"]


def ngram_counts(texts: Sequence[str], orders: Sequence[int] = (1, 2, 3), dim: int = 2048) -> Tensor:
    """Hashed character n-gram counts ``(len(texts), dim)`` of the lower-cased texts."""
    X = torch.zeros(len(texts), dim)
    for row, text in enumerate(texts):
        s = f" {text.lower()} "
        for n in orders:
            for i in range(len(s) - n + 1):
                # crc32, not hash(): the same bucket in every process and on every machine
                X[row, zlib.crc32(s[i:i + n].encode()) % dim] += 1
    return X


def ngram_features(texts: Sequence[str], orders: Sequence[int] = (1, 2, 3), dim: int = 2048,
                   idf: bool = False) -> Tensor:
    """Log-scaled (optionally TF-IDF weighted), L2-normalised hashed n-gram features.

    ``idf=True`` weights each bucket by ``log((1 + n) / (1 + df)) + 1``, where
    ``df`` counts the texts that use it, computed on ``texts`` themselves (pass
    all the texts an experiment will compare, with no labels: nothing leaks).
    """
    X = torch.log1p(ngram_counts(texts, orders, dim))
    if idf:
        df = (X > 0).sum(0).float()
        X = X * (torch.log((1 + len(texts)) / (1 + df)) + 1)
    return F.normalize(X, dim=-1)
