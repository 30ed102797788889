"""Fixed, untrained features of text: hashed character n-grams.

:func:`ngram_features` turns each text into a vector of ``dim`` numbers
without a vocabulary, so it works for any language, invented ones included,
and for words it has never seen. Every character n-gram of the lower-cased
text, padded with one space on each side (so that the n-grams at the edges of
words differ from those inside them), is hashed into one of ``dim`` buckets
with CRC-32, which, unlike Python's ``hash``, gives the same bucket in every
run (the hashing trick of Weinberger et al., 2009). Counts are log-scaled, ``log(1 + c)``, so
that a frequent n-gram does not drown the rest; with ``idf=True`` each bucket
is weighted by its inverse document frequency over ``texts``,
``log((1 + n) / (1 + df)) + 1``; and every row is scaled to unit length::

    >>> x = ngram_features(["the cat sat", "The cat sat", "a dog ran"], dim=64)
    >>> x.shape, torch.equal(x[0], x[1])
    (torch.Size([3, 64]), True)
    >>> [round(float(v), 4) for v in x.norm(dim=1)]
    [1.0, 1.0, 1.0]
    >>> bool(x[0] @ x[0] > x[0] @ x[2])  # shared n-grams make texts alike
    True
"""
from __future__ import annotations

import zlib
from typing import Sequence

import torch
from torch import Tensor

from metabook.errors import ConfigError

__all__ = ["ngram_features"]


def ngram_features(texts: Sequence[str], orders: Sequence[int] = (1, 2, 3), dim: int = 2048,
                   idf: bool = False) -> Tensor:
    """A ``(len(texts), dim)`` float tensor of hashed character n-grams (see the module).

    ``orders`` are the n-gram lengths counted; ``dim`` the number of buckets.
    A text with no n-gram of any order (an empty text with ``orders=(3,)``) is
    a row of zeros.
    """
    if dim < 1 or not orders or min(orders) < 1:
        raise ConfigError(f"ngram_features needs dim >= 1 and n-gram orders >= 1; got dim={dim}, "
                          f"orders={tuple(orders)}")
    cells = []  # row * dim + bucket, once per n-gram: counted in one call, not one by one
    for row, text in enumerate(texts):
        padded = f" {text.lower()} "
        cells += [row * dim + zlib.crc32(padded[i:i + n].encode()) % dim
                  for n in orders for i in range(len(padded) - n + 1)]
    counts = torch.bincount(torch.tensor(cells, dtype=torch.long),
                            minlength=len(texts) * dim).view(len(texts), dim).float()
    x = counts.log1p()
    if idf:
        df = (counts > 0).sum(0).float()
        x = x * (torch.log((1 + len(texts)) / (1 + df)) + 1)
    return torch.nn.functional.normalize(x, dim=1)
