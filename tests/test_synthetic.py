"""The synthetic language family: determinism, word orders, morphology, relatedness, scripts."""
from __future__ import annotations

import re
from collections import Counter

import pytest

from metabook import corpora
from metabook.errors import CorpusError
from metabook.synthetic import SCRIPTS, TOPICS, WORD_ORDERS, SyntheticLanguage, generate, make_family

TENSES = ("past", "present", "future")


def test_same_seed_same_text_other_seed_other_text():
    a = generate(n_languages=3, n_per_topic=5, seed=7)
    b = generate(n_languages=3, n_per_topic=5, seed=7)
    c = generate(n_languages=3, n_per_topic=5, seed=8)
    assert list(a["text"]) == list(b["text"])
    assert list(a["text"]) != list(c["text"])


def test_sizes_and_balanced_labels():
    ds = generate(n_languages=3, n_per_topic=4, seed=0)
    assert len(ds) == 3 * len(TOPICS) * 4
    assert Counter(ds["label"]) == {t: 12 for t in TOPICS}
    assert Counter(ds["language"]) == {"syn0": 28, "syn1": 28, "syn2": 28}


def test_registered_as_a_corpus():
    ds = corpora.load("synthetic", n_languages=2, n_per_topic=3, seed=1)
    assert len(ds) == 42 and ds.column_names == ["text", "label", "language"]
    assert "public domain" in corpora.info("synthetic").license


def _verb_position(lang: SyntheticLanguage, sentence: str) -> int:
    stems = [v for k, v in lang.lexicon.items() if k.startswith("verb:")]
    forms = {s + lang.suffixes[t] + agree for s in stems for t in TENSES
             for agree in ("", lang.suffixes["agree_plural"])}
    words = sentence.split()
    positions = [i for i, w in enumerate(words) if w in forms]
    assert len(positions) == 1, (sentence, lang.word_order)
    return positions[0] - len(words) if positions[0] == len(words) - 1 else positions[0]


@pytest.mark.parametrize("order", WORD_ORDERS)
def test_each_word_order_puts_the_verb_where_it_says(order):
    lang = make_family(n_languages=1, seed=2, word_orders=[order]).languages[0]
    where = {_verb_position(lang, s) for s in lang.sentences(10, seed=0)["text"]}
    if order.startswith("V"):
        assert where == {0}
    elif order.endswith("V"):
        assert where == {-1}
    else:  # SVO and OVS: the verb sits between its arguments
        assert -1 not in where and 0 not in where


def test_case_marking_languages_suffix_every_object():
    family = make_family(n_languages=6, seed=4)
    marking = [lang for lang in family.languages if lang.case_marking]
    assert marking, "seed 4 should give at least one case-marking language"
    for lang in marking:
        nouns = [v for k, v in lang.lexicon.items() if k.startswith("noun:")]
        objects = {n + plural + lang.suffixes["object"] for n in nouns
                   for plural in ("", lang.suffixes["plural"])}
        for sentence in lang.sentences(5, seed=1)["text"]:
            assert objects & set(sentence.split()), sentence


def test_every_concept_has_its_own_word():
    for lang in make_family(n_languages=4, seed=0, relatedness=1.0).languages:
        assert len(set(lang.lexicon.values())) == len(lang.lexicon)
        assert len(set(lang.suffixes.values())) == len(lang.suffixes)


def test_relatedness_is_the_share_of_inherited_words():
    def inherited_share(relatedness: float) -> float:
        family = make_family(n_languages=3, seed=5, relatedness=relatedness)
        same = [lang.lexicon[c] == lang.inherit(p) for lang in family.languages
                for c, p in family.proto.items()]
        return sum(same) / len(same)

    assert inherited_share(1.0) > 0.9  # only merged words are replaced
    assert 0.35 < inherited_share(0.5) < 0.65
    assert inherited_share(0.0) < 0.05


def test_scripts_write_the_same_phonemes_in_other_letters():
    family = make_family(n_languages=3, seed=0, scripts=list(SCRIPTS))
    ds = generate(n_languages=3, n_per_topic=3, seed=0, scripts=list(SCRIPTS))
    alphabets = {"latin": r"[a-z ]+", "greek": r"[\u0370-\u03ff ]+", "cyrillic": r"[\u0400-\u04ff ]+"}
    for lang in family.languages:
        texts = [r["text"] for r in ds if r["language"] == lang.name]
        assert all(re.fullmatch(alphabets[lang.script], t) for t in texts), lang.script


def test_bad_arguments_are_clear_errors():
    with pytest.raises(CorpusError, match="n_languages must be at least 1"):
        make_family(n_languages=0)
    with pytest.raises(CorpusError, match="relatedness must be between 0 and 1"):
        make_family(relatedness=1.5)
    with pytest.raises(CorpusError, match=r"unknown word orders \['XYZ'\]"):
        make_family(word_orders=["SVO", "XYZ"])
    with pytest.raises(CorpusError, match=r"unknown scripts \['klingon'\]"):
        make_family(scripts=["klingon"])
    with pytest.raises(CorpusError, match="n_per_topic must be at least 1"):
        generate(n_per_topic=0)
    with pytest.raises(CorpusError, match="topics must be distinct"):
        generate(topics=["travel", "travel"])
    lang = make_family(n_languages=1, topics=["travel"]).languages[0]
    with pytest.raises(CorpusError, match="has no topic 'cooking'"):
        lang.sentences(1, topics=["cooking"])
