"""Text corpora that install from PyPI and load offline, behind one registry.

Every corpus states where it comes from and under which license, so a chapter
can print that next to the data it uses::

    >>> from metabook import corpora
    >>> ds = corpora.load("chatterbot", language="english")
    >>> sorted(ds.column_names)
    ['domain', 'language', 'text']
    >>> corpora.info("chatterbot").license
    'BSD-3-Clause'
"""
from __future__ import annotations

import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import datasets
import yaml

from metabook.errors import CorpusError

__all__ = ["Corpus", "register", "info", "names", "load"]

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


_REGISTRY: dict[str, Corpus] = {}


def register(corpus: Corpus) -> Corpus:
    """Add ``corpus`` to the registry (its name must be new)."""
    if corpus.name in _REGISTRY:
        raise CorpusError(f"a corpus named {corpus.name!r} is already registered")
    _REGISTRY[corpus.name] = corpus
    return corpus


def names() -> list[str]:
    """The names of every registered corpus, sorted."""
    return sorted(_REGISTRY)


def info(name: str) -> Corpus:
    """The registry entry for ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CorpusError(
            f"unknown corpus {name!r}; known corpora: {', '.join(names())} "
            "(run `metabook datasets` to see them with their licenses)"
        ) from None


def load(name: str, **options) -> datasets.Dataset:
    """Load corpus ``name`` as a ``datasets.Dataset`` with a ``text`` column.

    ``options`` are passed to the corpus's loader (for example ``language=``).
    """
    ds = info(name).loader(**options)
    if len(ds) == 0:
        raise CorpusError(f"corpus {name!r} with options {options} holds no text")
    return ds


# --- chatterbot-corpus -----------------------------------------------------------

def _chatterbot_root() -> Path:
    try:
        return Path(str(importlib.resources.files("chatterbot_corpus"))) / "data"
    except ModuleNotFoundError:
        raise CorpusError(
            "the chatterbot corpus is not installed; run `pip install chatterbot-corpus`"
        ) from None


def _load_chatterbot(language: str = "english", categories: list[str] | None = None) -> datasets.Dataset:
    """Every utterance of every conversation, labelled with its topic file as domain."""
    root = _chatterbot_root()
    lang_dir = root / language
    if not lang_dir.is_dir():
        available = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise CorpusError(
            f"chatterbot has no language {language!r}; available: {', '.join(available)}"
        )
    rows: dict[str, list[str]] = {"text": [], "domain": [], "language": []}
    for path in sorted(lang_dir.glob("*.yml")):
        domain = path.stem
        if categories is not None and domain not in categories:
            continue
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conversation in doc.get("conversations", []):
            for utterance in conversation:
                text = str(utterance).strip()
                if text:
                    rows["text"].append(text)
                    rows["domain"].append(domain)
                    rows["language"].append(language)
    return datasets.Dataset.from_dict(rows)


register(
    Corpus(
        name="chatterbot",
        description="Short conversations; English has 20 topic files (ai, food, history, ...)",
        source="chatterbot-corpus on PyPI (github.com/gunthercox/chatterbot-corpus)",
        license="BSD-3-Clause",
        languages=(
            "bengali", "chinese", "dutch", "english", "french", "german", "hebrew", "hindi",
            "hinglish", "indonesian", "italian", "japanese", "korean", "marathi", "oriya",
            "persian", "portuguese", "russian", "spanish", "swedish", "tamil", "telugu",
            "thai", "traditionalchinese", "turkish", "ukrainian", "urdu", "yoruba",
        ),
        domains=("conversation",),
        size="2,026 English conversations; 31 Yoruba; 52 Hindi",
        loader=_load_chatterbot,
    )
)
