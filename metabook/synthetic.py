"""A seeded family of invented languages, for experiments where real data is too small.

Every language of a family names the same concepts (people, and the nouns,
verbs and adjectives of seven topics) with its own words, orders subject,
verb and object its own way, and marks number, tense and (in some languages)
the object with its own suffixes. ``relatedness`` says how many words descend
from a shared proto-language through each language's sound changes, so
transfer between close and distant relatives can be measured. Sentences are
labelled with their topic, so every language carries a classification task::

    >>> fam = make_family(n_languages=3, seed=0)
    >>> [lang.word_order for lang in fam.languages]
    ['SOV', 'SVO', 'VSO']
    >>> ds = generate(n_languages=2, n_per_topic=3, seed=0)
    >>> len(ds), ds.column_names
    (42, ['text', 'label', 'language'])
    >>> ds[0]["label"], ds[0]["language"]
    ('science/technology', 'syn0')

Everything is a function of the seed: the same arguments give the same text.
The text is generated, so it is in the public domain.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import datasets

from metabook.errors import CorpusError

__all__ = ["TOPICS", "WORD_ORDERS", "SCRIPTS", "SyntheticLanguage", "LanguageFamily",
           "make_family", "generate"]

# The seven SIB-200 topics, so synthetic and real topic classification line up.
TOPICS = ("science/technology", "travel", "politics", "sports", "health", "entertainment", "geography")
WORD_ORDERS = ("SVO", "SOV", "VSO", "VOS", "OVS", "OSV")

_CONSONANTS = "ptkbdgmnlrsfvhzjw"
_VOWELS = "aeiou"
# Phonemes are Latin letters; a language may be written in another script.
_GREEK = dict(zip("aeioupktbdgmnlrsfvhzjw", "αειουπκτβδγμνλρσφϐχζξψ"))
_CYRILLIC = dict(zip("aeioupktbdgmnlrsfvhzjw", "аеиоупктбдгмнлрсфвхзйш"))
SCRIPTS = {"latin": {}, "greek": _GREEK, "cyrillic": _CYRILLIC}

_N_PEOPLE, _N_GENERAL_VERBS, _N_GENERAL_ADJECTIVES = 10, 6, 4
_NOUNS_PER_TOPIC, _VERBS_PER_TOPIC, _ADJECTIVES_PER_TOPIC = 8, 5, 4
_SUFFIX_FEATURES = ("plural", "object", "past", "present", "future", "agree_plural")


def _concepts(topics: Sequence[str]) -> list[str]:
    """Concept keys: ``kind:topic:index`` (topic ``*`` for topic-neutral words)."""
    keys = [f"person:*:{i}" for i in range(_N_PEOPLE)]
    keys += [f"verb:*:{i}" for i in range(_N_GENERAL_VERBS)]
    keys += [f"adjective:*:{i}" for i in range(_N_GENERAL_ADJECTIVES)]
    for topic in topics:
        keys += [f"noun:{topic}:{i}" for i in range(_NOUNS_PER_TOPIC)]
        keys += [f"verb:{topic}:{i}" for i in range(_VERBS_PER_TOPIC)]
        keys += [f"adjective:{topic}:{i}" for i in range(_ADJECTIVES_PER_TOPIC)]
    return keys


def _stem(rng: random.Random, consonants: str, vowels: str, coda: bool) -> str:
    """Two or three syllables, CV or (with ``coda``) sometimes CVC."""
    syllables = []
    for _ in range(rng.choice((2, 2, 3))):
        syllable = rng.choice(consonants) + rng.choice(vowels)
        if coda and rng.random() < 0.3:
            syllable += rng.choice(consonants)
        syllables.append(syllable)
    return "".join(syllables)


@dataclass(frozen=True)
class SyntheticLanguage:
    """One invented language: its sounds, sound changes, suffixes, lexicon and syntax."""

    name: str
    word_order: str
    adjective_before_noun: bool
    case_marking: bool
    script: str
    consonants: str
    vowels: str
    sound_changes: dict[str, str]
    suffixes: dict[str, str]
    lexicon: dict[str, str]

    def inherit(self, proto_stem: str) -> str:
        """``proto_stem`` after this language's sound changes (in phonemes, not script)."""
        return "".join(self.sound_changes[ch] for ch in proto_stem)

    def _write(self, word: str) -> str:
        table = SCRIPTS[self.script]
        return "".join(table.get(ch, ch) for ch in word)

    def _noun(self, concept: str, plural: bool, is_object: bool) -> str:
        word = self.lexicon[concept] + (self.suffixes["plural"] if plural else "")
        return word + (self.suffixes["object"] if is_object and self.case_marking else "")

    def sentence(self, topic: str, rng: random.Random) -> str:
        """One sentence about ``topic``: subject, verb and object, sometimes an adjective."""
        if f"noun:{topic}:0" not in self.lexicon:
            topics = sorted({k.split(":")[1] for k in self.lexicon} - {"*"})
            raise CorpusError(f"synthetic language {self.name} has no topic {topic!r}; topics: {topics}")
        # The object is always a topic noun; subject and verb are topical only sometimes,
        # so a sentence's topic rests on one to three of its words.
        subject = (f"noun:{topic}:{rng.randrange(_NOUNS_PER_TOPIC)}" if rng.random() < 0.4
                   else f"person:*:{rng.randrange(_N_PEOPLE)}")
        verb = (f"verb:{topic}:{rng.randrange(_VERBS_PER_TOPIC)}" if rng.random() < 0.7
                else f"verb:*:{rng.randrange(_N_GENERAL_VERBS)}")
        obj = f"noun:{topic}:{rng.randrange(_NOUNS_PER_TOPIC)}"
        subject_plural = rng.random() < 0.3
        s = [self._noun(subject, subject_plural, is_object=False)]
        o = [self._noun(obj, rng.random() < 0.3, is_object=True)]
        if rng.random() < 0.5:
            adjective = (f"adjective:{topic}:{rng.randrange(_ADJECTIVES_PER_TOPIC)}" if rng.random() < 0.5
                         else f"adjective:*:{rng.randrange(_N_GENERAL_ADJECTIVES)}")
            o = [self.lexicon[adjective]] + o if self.adjective_before_noun else o + [self.lexicon[adjective]]
        tense = rng.choice(("past", "present", "future"))
        v = [self.lexicon[verb] + self.suffixes[tense]
             + (self.suffixes["agree_plural"] if subject_plural else "")]
        parts = {"S": s, "V": v, "O": o}
        return " ".join(self._write(w) for role in self.word_order for w in parts[role])

    def sentences(self, n_per_topic: int, seed: int = 0,
                  topics: Sequence[str] = TOPICS) -> datasets.Dataset:
        """``n_per_topic`` sentences per topic, grouped by topic (columns text, label, language).

        >>> lang = make_family(n_languages=1, seed=3).languages[0]
        >>> lang.sentences(2, seed=1)["text"] == lang.sentences(2, seed=1)["text"]
        True
        """
        if n_per_topic < 1:
            raise CorpusError(f"synthetic: n_per_topic must be at least 1, got {n_per_topic}")
        rng = random.Random(f"{seed}:sentences:{self.name}")
        rows: dict[str, list[str]] = {"text": [], "label": [], "language": []}
        for topic in topics:
            for _ in range(n_per_topic):
                rows["text"].append(self.sentence(topic, rng))
                rows["label"].append(topic)
                rows["language"].append(self.name)
        return datasets.Dataset.from_dict(rows)


@dataclass(frozen=True)
class LanguageFamily:
    """A proto-language's stems and the languages that descend from it."""

    proto: dict[str, str]
    languages: tuple[SyntheticLanguage, ...]


def _make_language(name: str, rng: random.Random, proto: dict[str, str], relatedness: float,
                   word_order: str, script: str) -> SyntheticLanguage:
    consonants = "".join(sorted(rng.sample(_CONSONANTS, rng.randint(8, 14))))
    vowels = "".join(sorted(rng.sample(_VOWELS, rng.randint(3, 5))))
    coda = rng.random() < 0.5
    sound_changes = {c: rng.choice(consonants) if c not in consonants or rng.random() < 0.3 else c
                     for c in _CONSONANTS}
    sound_changes.update({v: rng.choice(vowels) if v not in vowels or rng.random() < 0.3 else v
                          for v in _VOWELS})
    suffixes: dict[str, str] = {}
    for feature in _SUFFIX_FEATURES:
        # Distinct one-syllable suffixes keep every inflected form readable.
        while (suffix := rng.choice(consonants) + rng.choice(vowels)) in suffixes.values():
            pass
        suffixes[feature] = suffix
    lexicon: dict[str, str] = {}
    used: set[str] = set()
    for concept, proto_stem in proto.items():
        stem = "".join(sound_changes[ch] for ch in proto_stem) if rng.random() < relatedness else ""
        # A fresh word when the concept is not inherited, or when sound changes merged it
        # with a word already taken: no two concepts share a stem.
        while not stem or stem in used:
            stem = _stem(rng, consonants, vowels, coda)
        used.add(stem)
        lexicon[concept] = stem
    return SyntheticLanguage(name=name, word_order=word_order,
                             adjective_before_noun=rng.random() < 0.5, case_marking=rng.random() < 0.5,
                             script=script, consonants=consonants, vowels=vowels,
                             sound_changes=sound_changes, suffixes=suffixes, lexicon=lexicon)


def make_family(n_languages: int = 4, seed: int = 0, relatedness: float = 0.5,
                word_orders: Sequence[str] | None = None, scripts: Sequence[str] = ("latin",),
                topics: Sequence[str] = TOPICS) -> LanguageFamily:
    """``n_languages`` languages ``syn0, syn1, ...`` descending from one proto-language.

    ``relatedness`` (0 to 1) is the share of words each language inherits (after
    its own sound changes) rather than invents. ``word_orders`` and ``scripts``
    are cycled over the languages; by default word orders are a seeded
    shuffle of :data:`WORD_ORDERS` and every language is written in Latin letters.

    >>> fam = make_family(n_languages=2, seed=1, word_orders=["SOV"], scripts=["latin", "greek"])
    >>> [(l.name, l.word_order, l.script) for l in fam.languages]
    [('syn0', 'SOV', 'latin'), ('syn1', 'SOV', 'greek')]
    """
    if n_languages < 1:
        raise CorpusError(f"synthetic: n_languages must be at least 1, got {n_languages}")
    if not 0.0 <= relatedness <= 1.0:
        raise CorpusError(f"synthetic: relatedness must be between 0 and 1, got {relatedness}")
    bad = [o for o in (word_orders or ()) if o not in WORD_ORDERS]
    if bad:
        raise CorpusError(f"synthetic: unknown word orders {bad}; choose from {WORD_ORDERS}")
    bad = [s for s in scripts if s not in SCRIPTS]
    if bad or not scripts:
        raise CorpusError(f"synthetic: unknown scripts {bad or scripts}; choose from {tuple(SCRIPTS)}")
    if not topics or len(set(topics)) != len(topics):
        raise CorpusError(f"synthetic: topics must be distinct and not empty, got {list(topics)}")
    rng = random.Random(f"{seed}:family")
    proto: dict[str, str] = {}
    for concept in _concepts(topics):
        while (stem := _stem(rng, _CONSONANTS, _VOWELS, coda=True)) in proto.values():
            pass
        proto[concept] = stem
    orders = list(word_orders) if word_orders else rng.sample(WORD_ORDERS, len(WORD_ORDERS))
    languages = tuple(
        _make_language(f"syn{i}", random.Random(f"{seed}:language:{i}"), proto, relatedness,
                       orders[i % len(orders)], scripts[i % len(scripts)])
        for i in range(n_languages)
    )
    return LanguageFamily(proto=proto, languages=languages)


def generate(n_languages: int = 4, n_per_topic: int = 50, seed: int = 0, relatedness: float = 0.5,
             word_orders: Sequence[str] | None = None, scripts: Sequence[str] = ("latin",),
             topics: Sequence[str] = TOPICS) -> datasets.Dataset:
    """Topic-labelled sentences in every language of :func:`make_family` (same arguments).

    Rows are grouped by language, then topic; columns ``text``, ``label`` (the
    topic) and ``language``.

    >>> ds = generate(n_languages=1, n_per_topic=1, seed=0, topics=["travel", "health"])
    >>> list(ds["label"])
    ['travel', 'health']
    """
    family = make_family(n_languages, seed, relatedness, word_orders, scripts, topics)
    return datasets.concatenate_datasets(
        [lang.sentences(n_per_topic, seed, topics) for lang in family.languages])
