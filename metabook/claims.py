"""A sentence that states a result, checked against the numbers it is about.

The book computes every number on its page, but the sentences around the
numbers are prose: when a seed or a setting changes, a number moves and a
sentence such as "adaptation alone is the weakest" can stop being true without
anything failing. :func:`claim` ties the two together. It is an ``assert``
whose message quotes the sentence, so a chapter that no longer supports its own
text stops at that cell and says which sentence broke::

    >>> claim(2 + 2 == 4, "two and two make four")
    >>> claim(0.31 > 0.5, "most sentences get no reply at all")
    Traceback (most recent call last):
    ...
    AssertionError: the text says 'most sentences get no reply at all', and the numbers above no longer support it
"""
from __future__ import annotations

__all__ = ["claim"]


def claim(holds: object, sentence: str) -> None:
    """Raise an :class:`AssertionError` quoting ``sentence`` unless ``holds`` is true.

    ``holds`` is the check, computed from the values the sentence is about
    (anything with a truth value: a ``bool``, a NumPy or PyTorch boolean);
    ``sentence`` is the text it checks, as the page states it.
    """
    if not holds:
        raise AssertionError(f"the text says {sentence!r}, and the numbers above no longer "
                             f"support it")
