"""metabook: the library behind *Everything is a mapping: meta-learning-based pretraining for NLP*.

A model is a mapping ``f_θ: X → Y``; a learner maps a task's support set to an
adapted mapping. The modules follow that sentence: :mod:`metabook.corpora`
gives text, and each chapter of the book imports what it teaches from here.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("metabook")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

from metabook import corpora, errors, scale, text

__all__ = ["__version__", "corpora", "errors", "scale", "text"]
