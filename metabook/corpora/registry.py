"""The registry of corpora: what each is, where it comes from, and how to load it."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import datasets

from metabook.errors import CorpusError
from metabook.registry import Registry

__all__ = ["Corpus", "CORPORA", "register", "info", "names", "load"]


@dataclass(frozen=True)
class Corpus:
    """What a corpus is, where it comes from, and how to load it."""

    name: str
    description: str
    source: str
    license: str
    languages: tuple[str, ...]
    domains: tuple[str, ...]
    size: str
    loader: Callable[..., datasets.Dataset] = field(repr=False, compare=False)


#: Every corpus by name; :mod:`metabook.corpora.loaders` registers metabook's own.
CORPORA: Registry[Corpus] = Registry("corpus", plural="corpora", error=CorpusError)


def register(corpus: Corpus) -> Corpus:
    """Add ``corpus`` to the registry (its name must be new); returns it."""
    return CORPORA.register(corpus.name, corpus)


def names() -> list[str]:
    """The names of every registered corpus, sorted.

    >>> {"chatterbot", "rotten_tomatoes", "synthetic"} <= set(names())
    True
    """
    return sorted(CORPORA)


def info(name: str) -> Corpus:
    """The registry entry for ``name``.

    >>> info("debates_2016").languages
    ('english',)
    """
    return CORPORA[name]


def load(name: str, **options) -> datasets.Dataset:
    """Load corpus ``name`` as a ``datasets.Dataset`` with a ``text`` column.

    ``options`` are passed to the corpus's loader (for example ``language=``).

    >>> ds = load("debates_2016")
    >>> len(ds), sorted(set(ds["label"]))[:3]
    (1122, ['CLINTON', 'COOPER', 'HOLT'])
    """
    loader = info(name).loader
    try:
        inspect.signature(loader).bind(**options)
    except TypeError as err:
        raise CorpusError(f"corpus {name!r} does not take the options {options} ({err}); "
                          f"its loader is {name}{inspect.signature(loader)}") from None
    ds = loader(**options)
    if len(ds) == 0:
        raise CorpusError(f"corpus {name!r} with options {options} holds no text")
    return ds
